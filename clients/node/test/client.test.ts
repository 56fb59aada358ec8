// The client against a real `laneguard serve` started here (env LANEGUARD_BIN).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  LaneguardClient,
  LaneguardLeaseLostError,
  LaneguardRefusedError,
  LaneguardRequestError,
  LaneguardTimeoutWarning,
  type ConcurrencyStatus,
  type LaneStatus,
} from "../src/index.js";
import { laneguardBin, startDaemon, waitFor, type Daemon } from "./daemon.js";

const kConfig = {
  globalConcurrencyLimit: 8,
  laneConcurrencyLimits: {
    tool_call: 4,
    file_read: 4,
    file_write: 2,
    critic: 1,
    forecast_model: 1,
  },
  timeoutEscalationFactor: 2,
};

function laneOf(status: ConcurrencyStatus, lane: string): LaneStatus {
  const found = status.lanes[lane];
  assert.ok(found, `lane ${lane} in ${JSON.stringify(status)}`);
  return found;
}

function numberAt(stats: Record<string, unknown>, key: string): number {
  const value = stats[key];
  assert.equal(typeof value, "number", `${key} in ${JSON.stringify(stats)}`);
  return value as number;
}

const skip = laneguardBin === undefined ? "LANEGUARD_BIN unset" : false;

describe("LaneguardClient against laneguard serve", { skip }, () => {
  let daemon: Daemon;
  let client: LaneguardClient;

  before(async () => {
    daemon = await startDaemon(kConfig, { unixSocket: true });
    client = new LaneguardClient({ url: daemon.url, requestTimeoutMs: 10_000 });
  });

  after(async () => {
    client?.close();
    await daemon?.stop();
  });

  test("withWorkerCall returns fn's value and the lease is gone afterwards", async () => {
    let seen: string | undefined;
    const value = await client.withWorkerCall("t-value", "tool_call", async (signal, lease) => {
      assert.equal(signal.aborted, false);
      seen = lease.leaseId;
      const holders = await client.leases();
      assert.ok(holders.some((l) => l.leaseId === lease.leaseId && l.taskId === "t-value"));
      assert.ok(lease.fencingToken > 0);
      assert.ok(lease.warnAt.getTime() <= lease.hardAt.getTime());
      return 42;
    });
    assert.equal(value, 42);
    assert.ok(seen);
    assert.equal((await client.leases()).some((l) => l.leaseId === seen), false);
    assert.equal(laneOf(await client.status(), "tool_call").active, 0);
  });

  test("fn's error is rethrown as the same object and recorded as a failure", async () => {
    const before = await client.statistics();
    class ToolBroke extends Error {
      override name = "ToolBroke";
    }
    const thrown = new ToolBroke("the tool broke");
    await assert.rejects(
      client.withWorkerCall("t-throw", "tool_call", () => {
        throw thrown;
      }),
      (error: unknown) => error === thrown,
    );
    const stats = await client.statistics();
    assert.equal(numberAt(stats, "failureCount"), numberAt(before, "failureCount") + 1);
    assert.equal(numberAt(stats, "successCount"), numberAt(before, "successCount"));
    assert.equal((await client.leases()).length, 0);
  });

  test("limit 1: five concurrent withWorkerCall never overlap", async () => {
    const spans: Array<{ start: number; end: number }> = [];
    let inside = 0;
    let maxInside = 0;
    await Promise.all(
      Array.from({ length: 5 }, (_, i) =>
        client.withWorkerCall(
          `t-serial-${i}`,
          "forecast_model",
          async () => {
            inside++;
            maxInside = Math.max(maxInside, inside);
            const start = performance.now();
            await new Promise((resolve) => setTimeout(resolve, 30));
            spans.push({ start, end: performance.now() });
            inside--;
          },
          { waitMs: 20_000 },
        ),
      ),
    );
    assert.equal(maxInside, 1);
    assert.equal(spans.length, 5);
    spans.sort((a, b) => a.start - b.start);
    for (let i = 1; i < spans.length; i++) {
      assert.ok(spans[i - 1]!.end <= spans[i]!.start, `call ${i} overlaps call ${i - 1}`);
    }
  });

  test("the signal fires at the warning phase and the release says timeout", async () => {
    const before = await client.statistics();
    const started = Date.now();
    const reason = await client.withWorkerCall(
      "t-warn",
      "critic",
      (signal) =>
        new Promise<unknown>((resolve) =>
          signal.addEventListener("abort", () => resolve(signal.reason), { once: true }),
        ),
      { timeoutMs: 300 },
    );
    const elapsed = Date.now() - started;
    assert.ok(reason instanceof LaneguardTimeoutWarning, String(reason));
    assert.ok(elapsed >= 250, `fired after ${elapsed} ms`);
    assert.ok(elapsed < 5_000, `fired after ${elapsed} ms`);
    const stats = await client.statistics();
    assert.equal(numberAt(stats, "failureCount"), numberAt(before, "failureCount") + 1);
  });

  test("a full lane with waitMs 0 is refused with a typed error", async () => {
    const held = await client.acquire("t-hold", "critic");
    try {
      const error = await client.acquire("t-refused", "critic", { waitMs: 0 }).then(
        () => assert.fail("acquired a full lane"),
        (e: unknown) => e,
      );
      assert.ok(error instanceof LaneguardRefusedError, String(error));
      assert.equal(error.reason, "lane_limit");
      assert.equal(error.status, 429);
      assert.equal(typeof error.retryAfterMs, "number");
      assert.ok(Number.isFinite(error.retryAfterMs));
    } finally {
      await held.release();
    }
  });

  test("a bad request is a LaneguardRequestError naming the field", async () => {
    const unknownLane = await client.acquire("t-bad", "no_such_lane").then(
      () => assert.fail("acquired an unknown lane"),
      (e: unknown) => e,
    );
    assert.ok(unknownLane instanceof LaneguardRequestError, String(unknownLane));
    assert.equal(unknownLane.status, 400);
    assert.equal(unknownLane.field, "lane");
    assert.equal(unknownLane.code, "invalid_request");

    const badTtl = await client.acquire("t-bad", "tool_call", { ttlMs: 5 }).then(
      () => assert.fail("accepted ttlMs 5"),
      (e: unknown) => e,
    );
    assert.ok(badTtl instanceof LaneguardRequestError, String(badTtl));
    assert.equal(badTtl.field, "ttlMs");
  });

  test("aborting a waiting acquire grants nothing and leaves no queued waiter", async () => {
    const held = await client.acquire("t-hold", "forecast_model");
    try {
      const controller = new AbortController();
      const waiting = client.acquire("t-waiter", "forecast_model", {
        waitMs: 20_000,
        signal: controller.signal,
      });
      await waitFor("the waiter is queued", async () => {
        return laneOf(await client.status(), "forecast_model").queued === 1;
      });
      controller.abort(new Error("caller gave up"));
      await assert.rejects(waiting, /caller gave up/);
      await waitFor("the queue is empty again", async () => {
        return laneOf(await client.status(), "forecast_model").queued === 0;
      });
      const holders = await client.leases();
      assert.deepEqual(
        holders.map((l) => l.leaseId),
        [held.leaseId],
      );
    } finally {
      await held.release();
    }
    // The held lease can now be taken at once: the aborted waiter did not keep a place.
    const next = await client.acquire("t-after", "forecast_model", { waitMs: 0 });
    await next.release();
  });

  test("renew restarts the TTL and a released lease renews to 404", async () => {
    const lease = await client.acquire("t-renew", "file_read", { ttlMs: 1_000 });
    const renewed = await lease.renew();
    assert.equal(renewed.leaseId, lease.leaseId);
    assert.equal(renewed.stopRequested, false);
    const released = await lease.release();
    assert.equal(released.released, true);
    assert.deepEqual(await lease.release(), released);
    await assert.rejects(lease.renew(), { name: "LaneguardLeaseLostError" });
    assert.ok(lease.signal.aborted);
  });

  test("a lease nobody renews expires: renew reports it lost and the slot is free", async () => {
    const lease = await client.acquire("t-expire", "critic", { ttlMs: 150 });
    await waitFor("the daemon reclaims the lease", async () => {
      return !(await client.leases()).some((l) => l.leaseId === lease.leaseId);
    });
    const lost = await lease.renew().then(
      () => assert.fail("renewed an expired lease"),
      (e: unknown) => e,
    );
    assert.ok(lost instanceof LaneguardLeaseLostError, String(lost));
    assert.equal(lease.signal.reason, lost);
    const next = await client.acquire("t-after-expiry", "critic", { waitMs: 0 });
    await next.release();
  });

  test("a lease kept alive by withWorkerCall outlives its TTL", async () => {
    const value = await client.withWorkerCall(
      "t-keepalive",
      "file_write",
      async (signal) => {
        await new Promise((resolve) => setTimeout(resolve, 700));
        return signal.aborted;
      },
      { ttlMs: 300 },
    );
    assert.equal(value, false);
  });

  test("createBatchWorkerCallWrapper holds one lease across items", async () => {
    const batch = client.createBatchWorkerCallWrapper("t-batch", "file_write");
    await batch.init();
    try {
      const results = [];
      for (const item of [1, 2, 3]) results.push(await batch.execute(async () => item * 2));
      assert.deepEqual(results, [2, 4, 6]);
      assert.equal(batch.items, 3);
      assert.equal((await client.leases()).filter((l) => l.taskId === "t-batch").length, 1);
    } finally {
      await batch.release(true);
    }
    assert.equal((await client.leases()).length, 0);
    const call = client.bindLane("file_read", { timeoutMs: 10_000 });
    assert.equal(await call("t-bound", async (_signal, lease) => lease.lane), "file_read");
  });

  test("the Unix socket speaks the same API", async () => {
    assert.ok(daemon.socketPath);
    const unix = new LaneguardClient({ socketPath: daemon.socketPath });
    try {
      const lane = await unix.withWorkerCall("t-unix", "tool_call", async () => {
        const holders = await unix.leases();
        const mine = holders.find((l) => l.taskId === "t-unix");
        assert.ok(mine);
        assert.equal(mine.client.unix, true);
        return mine.lane;
      });
      assert.equal(lane, "tool_call");
    } finally {
      unix.close();
    }
  });
});

describe("a draining daemon", { skip }, () => {
  let daemon: Daemon;
  before(async () => {
    daemon = await startDaemon(kConfig, { extraArgs: ["--drain-timeout", "20s"] });
  });
  after(async () => {
    await daemon?.stop();
  });

  test("SIGTERM: a held lease's signal fires, new leases are refused, the release goes through",
    async () => {
      const client = new LaneguardClient({ url: daemon.url });
      try {
        let refused: unknown;
        const reason = await client.withWorkerCall(
          "t-drain",
          "tool_call",
          async (signal) => {
            daemon.kill("SIGTERM");
            const why = await new Promise<unknown>((resolve) =>
              signal.addEventListener("abort", () => resolve(signal.reason), { once: true }),
            );
            refused = await client.acquire("t-late", "tool_call").catch((e: unknown) => e);
            return why;
          },
          { ttlMs: 300 },
        );
        assert.ok(reason instanceof LaneguardTimeoutWarning, String(reason));
        assert.ok(refused instanceof LaneguardRefusedError, String(refused));
        assert.equal(refused.reason, "shutting_down");
        assert.equal(refused.status, 503);
      } finally {
        client.close();
      }
    },
  );
});
