// What the client does without a daemon: bad options, network failures, aborts, and how it reads
// answers (from a scripted loopback server that plays the contract's error bodies).

import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";

import {
  LaneguardClient,
  LaneguardConnectionError,
  LaneguardRefusedError,
  LaneguardLeaseLostError,
  LaneguardRequestError,
  LaneguardTimeoutWarning,
} from "../src/index.js";
import { waitFor } from "./daemon.js";

const waitUntil = (probe: () => boolean) => waitFor(probe.toString(), probe, 2_000);

test("bad client options name the option and the value", () => {
  assert.throws(() => new LaneguardClient({ url: "https://127.0.0.1:1" }), /url: .*https/);
  assert.throws(() => new LaneguardClient({ requestTimeoutMs: -1 }), /requestTimeoutMs: .*-1/);
});

test("a refused connection keeps Node's error as the cause", async () => {
  // A port just freed by a server on port 0 is as close to "nobody listens" as loopback gets.
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  const client = new LaneguardClient({ url: `http://127.0.0.1:${port}` });
  const error = await client.status().then(
    () => assert.fail("answered"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof LaneguardConnectionError, String(error));
  assert.equal((error.cause as NodeJS.ErrnoException).code, "ECONNREFUSED");
  client.close();
});

test("an already aborted signal rejects before any request", async () => {
  const client = new LaneguardClient({ url: "http://127.0.0.1:9" });
  const reason = new Error("gave up early");
  await assert.rejects(
    client.acquire("t", "tool_call", { signal: AbortSignal.abort(reason) }),
    (e: unknown) => e === reason,
  );
  client.close();
});

describe("answers of a scripted server", () => {
  let server: http.Server;
  let client: LaneguardClient;
  let lastBody: unknown;
  let lastAuth: string | undefined;
  let closedWhileParked = 0;
  let parkedSeen = 0;

  before(async () => {
    server = http.createServer((req, res) => {
      let text = "";
      req.on("data", (chunk: Buffer) => (text += chunk.toString()));
      req.on("end", () => {
        lastBody = text ? JSON.parse(text) : undefined;
        lastAuth = req.headers.authorization;
        const reply = (status: number, body: unknown, headers: Record<string, string> = {}) => {
          res.writeHead(status, { "content-type": "application/json", ...headers });
          res.end(JSON.stringify(body));
        };
        const lane = (lastBody as { lane?: string } | undefined)?.lane;
        if (req.url === "/v1/leases" && lane === "full") {
          const body = { error: "lane_limit", message: "full", retryAfterMs: 250 };
          reply(429, body, { "retry-after": "1" });
        } else if (req.url === "/v1/leases" && lane === "draining") {
          reply(503, { error: "shutting_down", message: "draining" }, { "retry-after": "2" });
        } else if (req.url === "/v1/leases" && lane === "bad") {
          reply(400, { error: "invalid_request", field: "lane", message: "unknown lane \"bad\"" });
        } else if (req.url === "/v1/leases" && lane === "park") {
          parkedSeen++;
          res.on("close", () => closedWhileParked++);
        } else if (req.url === "/v1/status") {
          reply(200, { global: { active: 0, limit: 8, overrunning: 0 }, lanes: {} });
        } else {
          reply(404, { error: "not_found", message: req.url });
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address() as AddressInfo;
    client = new LaneguardClient({
      url: `http://127.0.0.1:${port}`,
      token: "s3cret",
      requestTimeoutMs: 2_000,
    });
  });

  after(async () => {
    client.close();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  test("429 and 503 are LaneguardRefusedError with reason and retryAfterMs", async () => {
    const full = await client.acquire("t", "full").catch((e: unknown) => e);
    assert.ok(full instanceof LaneguardRefusedError);
    assert.deepEqual([full.reason, full.status, full.retryAfterMs], ["lane_limit", 429, 250]);
    const draining = await client.acquire("t", "draining").catch((e: unknown) => e);
    assert.ok(draining instanceof LaneguardRefusedError);
    // No retryAfterMs in the body: the Retry-After header's seconds.
    assert.deepEqual(
      [draining.reason, draining.status, draining.retryAfterMs],
      ["shutting_down", 503, 2000],
    );
  });

  test("400 is LaneguardRequestError with the field and the body", async () => {
    const bad = await client.acquire("t", "bad").catch((e: unknown) => e);
    assert.ok(bad instanceof LaneguardRequestError);
    assert.equal(bad.status, 400);
    assert.equal(bad.field, "lane");
    assert.deepEqual(bad.body, {
      error: "invalid_request",
      field: "lane",
      message: 'unknown lane "bad"',
    });
    assert.match(bad.message, /unknown lane "bad"/);
  });

  test("the body carries the options and the token goes in Authorization", async () => {
    await client
      .acquire("t-7", "bad", { waitMs: 5, priority: "high", ttlMs: 1000, metadata: { a: "b" } })
      .catch(() => undefined);
    assert.deepEqual(lastBody, {
      lane: "bad",
      taskId: "t-7",
      waitMs: 5,
      priority: "high",
      ttlMs: 1000,
      metadata: { a: "b" },
    });
    assert.equal(lastAuth, "Bearer s3cret");
    assert.equal((await client.status()).global.limit, 8);
  });

  test("aborting a parked acquire closes its connection", async () => {
    const controller = new AbortController();
    const parked = client.acquire("t", "park", { waitMs: 60_000, signal: controller.signal });
    await waitUntil(() => parkedSeen === 1);
    controller.abort(new Error("stop waiting"));
    await assert.rejects(parked, /stop waiting/);
    await waitUntil(() => closedWhileParked === 1);
  });

  test("no answer within the bound is a LaneguardConnectionError", async () => {
    const quick = new LaneguardClient({
      url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      requestTimeoutMs: 100,
    });
    const error = await quick.acquire("t", "park").catch((e: unknown) => e);
    assert.ok(error instanceof LaneguardConnectionError, String(error));
    assert.match(error.message, /no answer within the bound/);
    quick.close();
  });
});

test("a keep-alive connection the server dropped is retried once on a new one", async () => {
  // The server answers the first request of each connection and drops the connection at the
  // second, as a daemon does that closed an idle connection while the client reused it.
  const perSocket = new WeakMap<object, number>();
  let dropped = 0;
  const server = http.createServer((req, res) => {
    const n = (perSocket.get(req.socket) ?? 0) + 1;
    perSocket.set(req.socket, n);
    if (n > 1) {
      dropped++;
      req.socket.destroy();
      return;
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ global: { active: n, limit: 8, overrunning: 0 }, lanes: {} }));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const client = new LaneguardClient({ url: `http://127.0.0.1:${port}` });
  try {
    assert.equal((await client.status()).global.active, 1);
    assert.equal((await client.status()).global.active, 1);
    assert.equal(dropped, 1);
  } finally {
    client.close();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});

// A scripted lease endpoint: grants with a far warnAt, answers renewals with `renewAnswer`, and
// records the release bodies.
async function leaseServer(renewAnswer: () => { status: number; body: unknown }) {
  const releases: unknown[] = [];
  let renewals = 0;
  const server = http.createServer((req, res) => {
    let text = "";
    req.on("data", (chunk: Buffer) => (text += chunk.toString()));
    req.on("end", () => {
      const reply = (status: number, body: unknown) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(body));
      };
      if (req.method === "POST" && req.url === "/v1/leases") {
        const now = Date.now();
        reply(201, {
          leaseId: "l-1",
          fencingToken: 1,
          lane: "tool_call",
          taskId: "t",
          ttlMs: 150,
          timeoutMs: 60_000,
          warnAt: new Date(now + 60_000).toISOString(),
          hardAt: new Date(now + 90_000).toISOString(),
          warnInMs: 60_000,
        });
      } else if (req.method === "POST" && req.url === "/v1/leases/l-1/renew") {
        renewals++;
        const { status, body } = renewAnswer();
        reply(status, body);
      } else if (req.method === "DELETE" && req.url === "/v1/leases/l-1") {
        releases.push(JSON.parse(text));
        reply(200, { leaseId: "l-1", released: true });
      } else {
        reply(404, { error: "not_found" });
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const client = new LaneguardClient({ url: `http://127.0.0.1:${port}` });
  return {
    client,
    releases,
    renewals: () => renewals,
    close: async () => {
      client.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

const awaitAbort = (signal: AbortSignal) =>
  new Promise<unknown>((resolve) =>
    signal.addEventListener("abort", () => resolve(signal.reason), { once: true }),
  );

test("withWorkerCall: stopRequested on renew fires the signal, release says timeout", async () => {
  const fake = await leaseServer(() => ({
    status: 200,
    body: { leaseId: "l-1", ttlMs: 150, phase: "warning", stopRequested: true },
  }));
  try {
    const reason = await fake.client.withWorkerCall("t", "tool_call", awaitAbort);
    assert.ok(reason instanceof LaneguardTimeoutWarning, String(reason));
    assert.ok(fake.renewals() >= 1);
    assert.deepEqual(fake.releases, [{ outcome: "failure", errorType: "timeout" }]);
  } finally {
    await fake.close();
  }
});

test("withWorkerCall: a renewal answering 404 fires the signal with the lost lease", async () => {
  const fake = await leaseServer(() => ({
    status: 404,
    body: { error: "lease_not_found", reason: "expired" },
  }));
  try {
    const thrown = await fake.client
      .withWorkerCall("t", "tool_call", async (signal) => {
        throw await awaitAbort(signal);
      })
      .catch((e: unknown) => e);
    assert.ok(thrown instanceof LaneguardLeaseLostError, String(thrown));
    assert.equal(thrown.reason, "expired");
    assert.deepEqual(fake.releases, [
      { outcome: "failure", errorType: "LaneguardLeaseLostError" },
    ]);
  } finally {
    await fake.close();
  }
});

test("withWorkerCall: success releases with outcome success and renews meanwhile", async () => {
  const fake = await leaseServer(() => ({
    status: 200,
    body: { leaseId: "l-1", ttlMs: 150, phase: "running", stopRequested: false },
  }));
  try {
    const value = await fake.client.withWorkerCall("t", "tool_call", async (signal) => {
      await waitFor("two renewals", () => fake.renewals() >= 2, 5_000);
      return signal.aborted ? "aborted" : "done";
    });
    assert.equal(value, "done");
    assert.deepEqual(fake.releases, [{ outcome: "success" }]);
  } finally {
    await fake.close();
  }
});
