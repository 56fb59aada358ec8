// The TypeScript client of `laneguard serve` (docs/serve.md): lane-aware concurrency slots held as
// leases over HTTP/1.1. No runtime dependencies: node:http with a keep-alive Agent, because it is
// the one Node transport that speaks over a Unix socket (`socketPath`) as well as TCP, and a
// reused connection keeps an acquire/release pair to two round trips without a handshake.

import http from "node:http";

export type Priority = "low" | "normal" | "high";
export type Outcome = "success" | "failure";

export interface LaneguardClientOptions {
  /** Base URL; default http://127.0.0.1:7878. With socketPath only its path counts. */
  url?: string;
  /** A Unix socket the daemon listens on (`--listen unix:PATH`). */
  socketPath?: string;
  /** Bearer token (the daemon's `--token-file`). */
  token?: string;
  /** Bound of one request; an acquire that waits gets its waitMs on top. Default 30000. */
  requestTimeoutMs?: number;
  /** Told about failures of background work (renewals, releases) that cannot be thrown. */
  onBackgroundError?: (error: unknown) => void;
}

export interface AcquireOptions {
  timeoutMs?: number;
  waitMs?: number;
  priority?: Priority;
  ttlMs?: number;
  metadata?: Record<string, string>;
  traceparent?: string;
  /** Aborting it while the acquire waits aborts the request; the daemon removes the waiter. */
  signal?: AbortSignal;
}

export interface ReleaseOptions {
  outcome?: Outcome;
  errorType?: string;
  rssMb?: number;
}

export interface RenewResult {
  leaseId: string;
  ttlMs: number;
  expiresAt: string;
  phase: "running" | "warning" | "hard";
  stopRequested: boolean;
}

export interface ReleaseResult {
  leaseId: string;
  released: boolean;
  durationMs?: number;
  timeoutReached?: boolean;
  escalated?: boolean;
  reason?: string;
}

export type WorkerCallOptions = Omit<AcquireOptions, "signal">;

/** A worker call: its signal fires at the warning phase or when the lease is lost. */
export type WorkerCallFn<T> = (signal: AbortSignal, lease: Lease) => Promise<T> | T;

// ---------------------------------------------------------------------------------------------
// Errors

/** The daemon refused a slot: 429 (lane_limit, global_limit, queue_full, wait_timeout,
 * task_quota) or 503 (memory_limit, shutting_down). */
export class LaneguardRefusedError extends Error {
  override name = "LaneguardRefusedError";
  constructor(
    readonly reason: string,
    readonly retryAfterMs: number,
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Any other non-2xx answer; `field` names the offending field of a 400 invalid_request. */
export class LaneguardRequestError extends Error {
  override name = "LaneguardRequestError";
  readonly code: string | undefined;
  readonly field: string | undefined;
  constructor(
    readonly status: number,
    readonly body: unknown,
    message: string,
  ) {
    super(message);
    const record = asRecord(body);
    this.code = typeof record?.error === "string" ? record.error : undefined;
    this.field = typeof record?.field === "string" ? record.field : undefined;
  }
}

/** The lease is gone (released, expired, reclaimed): a renew answered 404. */
export class LaneguardLeaseLostError extends Error {
  override name = "LaneguardLeaseLostError";
  constructor(
    readonly leaseId: string,
    readonly reason: string | undefined,
  ) {
    super(`lease ${leaseId} is gone${reason ? ` (${reason})` : ""}`);
  }
}

/** The abort reason of a lease's signal at the warning phase: the daemon asks the work to stop. */
export class LaneguardTimeoutWarning extends Error {
  override name = "LaneguardTimeoutWarning";
  constructor(readonly leaseId: string) {
    super(`lease ${leaseId} reached its timeout (warning phase): stop requested`);
  }
}

/** The daemon could not be reached or did not answer in time; Node's error is the `cause`. */
export class LaneguardConnectionError extends Error {
  override name = "LaneguardConnectionError";
}

// ---------------------------------------------------------------------------------------------
// Lease

const kMaxTimerMs = 2 ** 31 - 1;

interface LeaseBody {
  leaseId: string;
  fencingToken: number;
  lane: string;
  taskId: string;
  ttlMs: number;
  timeoutMs: number;
  warnAt: string;
  hardAt: string;
  warnInMs?: number;
  traceparent?: string;
}

/**
 * A granted slot. `signal` fires at the warning phase (a renew answering stopRequested, or the
 * local warnAt passing, whichever comes first) and when the lease is lost (a renew answering 404).
 * Not safe to share across worker threads; within one event loop any number of callers may use it.
 */
export class Lease {
  readonly leaseId: string;
  readonly fencingToken: number;
  readonly lane: string;
  readonly taskId: string;
  readonly ttlMs: number;
  readonly timeoutMs: number;
  readonly warnAt: Date;
  readonly hardAt: Date;
  readonly traceparent: string | undefined;
  readonly signal: AbortSignal;

  readonly #client: LaneguardClient;
  readonly #controller = new AbortController();
  #warnTimer: NodeJS.Timeout | undefined;
  #renewTimer: NodeJS.Timeout | undefined;
  #renewing: Promise<unknown> | undefined;
  #released: Promise<ReleaseResult> | undefined;

  /** @internal */
  constructor(client: LaneguardClient, body: LeaseBody, receivedAt: number) {
    this.#client = client;
    this.leaseId = body.leaseId;
    this.fencingToken = body.fencingToken;
    this.lane = body.lane;
    this.taskId = body.taskId;
    this.ttlMs = body.ttlMs;
    this.timeoutMs = body.timeoutMs;
    this.warnAt = new Date(body.warnAt);
    this.hardAt = new Date(body.hardAt);
    this.traceparent = body.traceparent;
    this.signal = this.#controller.signal;
    // warnInMs is relative, so the local timer does not depend on the two clocks agreeing.
    const warnInMs =
      typeof body.warnInMs === "number" ? body.warnInMs : this.warnAt.getTime() - Date.now();
    const delay = Math.max(0, warnInMs - (Date.now() - receivedAt));
    // setTimeout fires at once past 2^31-1 ms; so far off, the renewals' stopRequested suffices.
    if (delay <= kMaxTimerMs) {
      this.#warnTimer = setTimeout(
        () => this.#abort(new LaneguardTimeoutWarning(this.leaseId)),
        delay,
      );
      this.#warnTimer.unref();
    }
  }

  /** True once the signal fired because of the warning phase (not a lost lease). */
  get warned(): boolean {
    return this.signal.aborted && this.signal.reason instanceof LaneguardTimeoutWarning;
  }

  /** Restarts the TTL. Once the lease is gone: fires the signal, throws LaneguardLeaseLostError. */
  async renew(): Promise<RenewResult> {
    try {
      const result = (await this.#client.request(
        "POST",
        `/v1/leases/${encodeURIComponent(this.leaseId)}/renew`,
        {},
      )) as RenewResult;
      if (result.stopRequested) this.#abort(new LaneguardTimeoutWarning(this.leaseId));
      return result;
    } catch (error) {
      if (error instanceof LaneguardRequestError && error.status === 404) {
        const reason = asRecord(error.body)?.reason;
        const lost = new LaneguardLeaseLostError(
          this.leaseId,
          typeof reason === "string" ? reason : undefined,
        );
        this.#abort(lost);
        throw lost;
      }
      throw error;
    }
  }

  /** Releases the slot. Idempotent: a second call returns the first call's answer. */
  release(options: ReleaseOptions = {}): Promise<ReleaseResult> {
    if (this.#released === undefined) {
      this.stopAutoRenew();
      clearTimeout(this.#warnTimer);
      this.#released = this.#client.request(
        "DELETE",
        `/v1/leases/${encodeURIComponent(this.leaseId)}`,
        {
          outcome: options.outcome ?? "success",
          errorType: options.errorType,
          rssMb: options.rssMb,
        },
      ) as Promise<ReleaseResult>;
    }
    return this.#released;
  }

  /** Renews every ttlMs/3 in the background (timer unref'd) until release() or loss. */
  startAutoRenew(intervalMs = Math.max(1, Math.floor(this.ttlMs / 3))): void {
    if (this.#renewTimer !== undefined || this.#released !== undefined) return;
    const tick = (): void => {
      // One renew in flight at a time: a slow daemon does not get a pile of them.
      if (this.#renewing !== undefined) return;
      this.#renewing = this.renew()
        .catch((error: unknown) => {
          if (error instanceof LaneguardLeaseLostError) this.stopAutoRenew();
          else this.#client.reportBackgroundError(error);
        })
        .finally(() => {
          this.#renewing = undefined;
        });
    };
    this.#renewTimer = setInterval(tick, intervalMs);
    this.#renewTimer.unref();
  }

  stopAutoRenew(): void {
    clearInterval(this.#renewTimer);
    this.#renewTimer = undefined;
  }

  #abort(reason: Error): void {
    if (this.signal.aborted) return;
    clearTimeout(this.#warnTimer);
    this.#controller.abort(reason);
  }
}

// ---------------------------------------------------------------------------------------------
// Batch

/**
 * The spec's batch wrapper: one lease held across many items. init() acquires, execute() runs one
 * item under the lease's signal, release(success, error) gives the slot back (idempotent).
 */
export class BatchWorkerCall {
  #lease: Lease | undefined;
  #released = false;
  #items = 0;
  #errors = 0;

  /** @internal */
  constructor(
    private readonly client: LaneguardClient,
    readonly taskId: string,
    readonly lane: string,
    private readonly options: WorkerCallOptions,
  ) {}

  get items(): number {
    return this.#items;
  }
  get errors(): number {
    return this.#errors;
  }
  get lease(): Lease | undefined {
    return this.#lease;
  }

  async init(): Promise<void> {
    if (this.#lease !== undefined || this.#released) throw new Error("init() called twice");
    this.#lease = await this.client.acquire(this.taskId, this.lane, this.options);
    this.#lease.startAutoRenew();
  }

  async execute<T>(fn: WorkerCallFn<T>): Promise<T> {
    const lease = this.#lease;
    if (lease === undefined || this.#released) {
      throw new Error("execute() needs init() first and no release()");
    }
    this.#items++;
    try {
      return await fn(lease.signal, lease);
    } catch (error) {
      this.#errors++;
      throw error;
    }
  }

  async release(success = true, error?: unknown): Promise<ReleaseResult | undefined> {
    if (this.#released) return undefined;
    this.#released = true;
    const lease = this.#lease;
    if (lease === undefined) return undefined;
    return lease.release(success ? { outcome: "success" } : failureOf(lease, error));
  }
}

// ---------------------------------------------------------------------------------------------
// Client

const kDefaultUrl = "http://127.0.0.1:7878";
const kDefaultRequestTimeoutMs = 30_000;

/**
 * One client per daemon. Thread-safety: one event loop; concurrent calls from it share the
 * keep-alive connection pool.
 */
export class LaneguardClient {
  readonly #url: URL;
  readonly #socketPath: string | undefined;
  readonly #token: string | undefined;
  readonly #requestTimeoutMs: number;
  readonly #agent: http.Agent;
  readonly #onBackgroundError: ((error: unknown) => void) | undefined;

  constructor(options: LaneguardClientOptions = {}) {
    this.#url = new URL(options.url ?? kDefaultUrl);
    if (this.#url.protocol !== "http:") {
      throw new TypeError(`url: only http: is supported, got ${JSON.stringify(options.url)}`);
    }
    this.#socketPath = options.socketPath;
    this.#token = options.token;
    this.#requestTimeoutMs = options.requestTimeoutMs ?? kDefaultRequestTimeoutMs;
    if (!Number.isFinite(this.#requestTimeoutMs) || this.#requestTimeoutMs <= 0) {
      throw new RangeError(
        `requestTimeoutMs: must be a positive number, got ${String(options.requestTimeoutMs)}`,
      );
    }
    this.#agent = new http.Agent({ keepAlive: true, scheduling: "lifo" });
    this.#onBackgroundError = options.onBackgroundError;
  }

  /** Asks for a slot on `lane`. Throws LaneguardRefusedError when the daemon refuses. */
  async acquire(taskId: string, lane: string, options: AcquireOptions = {}): Promise<Lease> {
    const body = {
      lane,
      taskId,
      timeoutMs: options.timeoutMs,
      waitMs: options.waitMs,
      priority: options.priority,
      ttlMs: options.ttlMs,
      metadata: options.metadata,
      traceparent: options.traceparent,
    };
    const timeoutMs = this.#requestTimeoutMs + Math.max(0, options.waitMs ?? 0);
    const answer = (await this.request("POST", "/v1/leases", body, {
      signal: options.signal,
      timeoutMs,
    })) as LeaseBody;
    const lease = new Lease(this, answer, Date.now());
    if (options.signal?.aborted) {
      // Granted in the same instant the caller gave up: give the slot straight back.
      lease.release({ outcome: "failure", errorType: "aborted" }).catch((e: unknown) => {
        this.reportBackgroundError(e);
      });
      throw options.signal.reason;
    }
    return lease;
  }

  /**
   * Acquires, renews in the background, runs fn with a signal that fires at the warning phase or
   * when the lease is lost, releases (success, or failure with the error's name, "timeout" once the
   * warning fired) and returns fn's value or rethrows fn's error unchanged.
   */
  async withWorkerCall<T>(
    taskId: string,
    lane: string,
    fn: WorkerCallFn<T>,
    options: WorkerCallOptions = {},
  ): Promise<T> {
    const lease = await this.acquire(taskId, lane, options);
    lease.startAutoRenew();
    let value: T;
    try {
      value = await fn(lease.signal, lease);
    } catch (error) {
      await this.#releaseQuietly(lease, failureOf(lease, error));
      throw error;
    }
    await this.#releaseQuietly(
      lease,
      lease.warned ? { outcome: "failure", errorType: "timeout" } : { outcome: "success" },
    );
    return value;
  }

  /** The spec's createBatchWorkerCallWrapper(taskId, lane, options): one lease for many items. */
  createBatchWorkerCallWrapper(
    taskId: string,
    lane: string,
    options: WorkerCallOptions = {},
  ): BatchWorkerCall {
    return new BatchWorkerCall(this, taskId, lane, options);
  }

  /** withWorkerCall bound to one lane and default options: (taskId, fn, options) => Promise. */
  bindLane(
    lane: string,
    defaults: WorkerCallOptions = {},
  ): <T>(taskId: string, fn: WorkerCallFn<T>, options?: WorkerCallOptions) => Promise<T> {
    return (taskId, fn, options = {}) =>
      this.withWorkerCall(taskId, lane, fn, {
        ...defaults,
        ...options,
        metadata: { ...defaults.metadata, ...options.metadata },
      });
  }

  /** GET /v1/status: the spec's concurrency status plus `leases`, `parked` and `draining`. */
  status(): Promise<ConcurrencyStatus> {
    return this.request("GET", "/v1/status") as Promise<ConcurrencyStatus>;
  }

  /** GET /v1/statistics: the spec's statistics. */
  statistics(): Promise<Record<string, unknown>> {
    return this.request("GET", "/v1/statistics") as Promise<Record<string, unknown>>;
  }

  /** GET /v1/leases: the holders, oldest first. */
  async leases(): Promise<LeaseInfo[]> {
    const answer = (await this.request("GET", "/v1/leases")) as { leases: LeaseInfo[] };
    return answer.leases;
  }

  /** Closes the idle keep-alive connections (so a script can exit at once). */
  close(): void {
    this.#agent.destroy();
  }

  /** @internal */
  reportBackgroundError(error: unknown): void {
    this.#onBackgroundError?.(error);
  }

  /** @internal One JSON request; non-2xx answers become the typed errors above. */
  async request(
    method: string,
    path: string,
    body?: unknown,
    options: { signal?: AbortSignal | undefined; timeoutMs?: number } = {},
  ): Promise<unknown> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: http.OutgoingHttpHeaders = { accept: "application/json" };
    if (payload !== undefined) {
      headers["content-type"] = "application/json";
      headers["content-length"] = payload.length;
    }
    if (this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    const call: Call = {
      method,
      path,
      payload,
      headers,
      signal: options.signal,
      deadline: Date.now() + (options.timeoutMs ?? this.#requestTimeoutMs),
    };
    try {
      return await this.#attempt(call);
    } catch (error) {
      // The daemon closes a keep-alive connection after its idle deadline; a request written into
      // one that was closing never reached it, so sending it once more on a new one is safe.
      if (!(error instanceof StaleConnection)) throw error;
      return this.#attempt(call);
    }
  }

  #attempt(call: Call): Promise<unknown> {
    const { method, path, signal } = call;
    if (signal?.aborted) return Promise.reject(signal.reason);
    const target = new URL(path, this.#url);
    return new Promise((resolve, reject) => {
      let settled = false;
      const finish = (fn: () => void): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        fn();
      };
      const req = http.request({
        agent: this.#agent,
        method,
        headers: call.headers,
        path: target.pathname + target.search,
        ...(this.#socketPath !== undefined
          ? { socketPath: this.#socketPath }
          : { host: target.hostname, port: target.port || 80 }),
      });
      const onAbort = (): void => {
        // Destroying the request closes its connection: the daemon sees the disconnect and takes
        // the parked waiter out of the queue.
        finish(() => reject(signal?.reason));
        req.destroy();
      };
      const bound = Math.max(0, call.deadline - Date.now());
      const timer = setTimeout(() => {
        finish(() =>
          reject(new LaneguardConnectionError(`${method} ${path}: no answer within the bound`)),
        );
        req.destroy();
      }, bound);
      signal?.addEventListener("abort", onAbort, { once: true });
      let answered = false;
      const fail = (error: Error): void => {
        const code = (error as NodeJS.ErrnoException).code;
        const stale = req.reusedSocket && !answered && (code === "ECONNRESET" || code === "EPIPE");
        const message = `${method} ${path}: ${error.message}`;
        finish(() =>
          reject(
            stale
              ? new StaleConnection(message, { cause: error })
              : new LaneguardConnectionError(message, { cause: error }),
          ),
        );
      };
      req.on("error", fail);
      req.on("response", (res) => {
        answered = true;
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("error", fail);
        res.on("end", () => {
          finish(() => {
            try {
              resolve(interpret(method, path, res, Buffer.concat(chunks).toString("utf8")));
            } catch (error) {
              reject(error);
            }
          });
        });
      });
      req.end(call.payload);
    });
  }

  async #releaseQuietly(lease: Lease, options: ReleaseOptions): Promise<void> {
    // The caller's own result or error matters more than a failed release: the daemon reclaims
    // an unreleased lease when its TTL runs out, so a release that fails loses nothing.
    try {
      await lease.release(options);
    } catch (error) {
      this.reportBackgroundError(error);
    }
  }
}

export interface LaneStatus {
  active: number;
  limit: number;
  overrunning: number;
  queued: number;
  queueLimit: number;
  borrowed: number;
}

/** GET /v1/status: the spec's concurrency status plus the daemon's lease figures. */
export interface ConcurrencyStatus {
  global: { active: number; limit: number; overrunning: number };
  lanes: Record<string, LaneStatus>;
  /** Leases held. */
  leases: number;
  /** Acquire requests waiting in a queue. */
  parked: number;
  draining: boolean;
}

export interface LeaseInfo {
  leaseId: string;
  fencingToken: number;
  lane: string;
  taskId: string;
  client: { address?: string; unix?: boolean; pid?: number; uid?: number };
  grantedAt: string;
  ageMs: number;
  phase: string;
  expiresInMs: number;
  timeoutMs: number;
  boundToConnection: boolean;
}

// ---------------------------------------------------------------------------------------------
// Helpers

interface Call {
  method: string;
  path: string;
  payload: Buffer | undefined;
  headers: http.OutgoingHttpHeaders;
  signal: AbortSignal | undefined;
  deadline: number;
}

// A reused keep-alive connection that the daemon had closed: retried once, never surfaced.
class StaleConnection extends LaneguardConnectionError {
  override name = "LaneguardConnectionError";
}

function asRecord(value: unknown): Record<string, unknown> | undefined {
  return typeof value === "object" && value !== null
    ? (value as Record<string, unknown>)
    : undefined;
}

function failureOf(lease: Lease, error: unknown): ReleaseOptions {
  if (lease.warned) return { outcome: "failure", errorType: "timeout" };
  const name = error instanceof Error ? error.name : typeof error;
  return { outcome: "failure", errorType: name };
}

function interpret(
  method: string,
  path: string,
  res: http.IncomingMessage,
  text: string,
): unknown {
  const status = res.statusCode ?? 0;
  let body: unknown = undefined;
  if (text.length > 0) {
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
  }
  if (status >= 200 && status < 300) return body;
  const record = asRecord(body);
  const code = typeof record?.error === "string" ? record.error : `http_${status}`;
  const detail = typeof record?.message === "string" ? record.message : text.slice(0, 200);
  const message = `${method} ${path}: ${status} ${code}${detail ? `: ${detail}` : ""}`;
  if (status === 429 || status === 503) {
    return throwRefused(code, status, message, record, res);
  }
  throw new LaneguardRequestError(status, body, message);
}

function throwRefused(
  code: string,
  status: number,
  message: string,
  record: Record<string, unknown> | undefined,
  res: http.IncomingMessage,
): never {
  let retryAfterMs = typeof record?.retryAfterMs === "number" ? record.retryAfterMs : NaN;
  if (Number.isNaN(retryAfterMs)) {
    const header = Number(res.headers["retry-after"]);
    retryAfterMs = Number.isFinite(header) ? header * 1000 : 1000;
  }
  throw new LaneguardRefusedError(code, retryAfterMs, status, message);
}
