// npm redis-semaphore on a local redis-server, the loop of bench/serve_load.cc: N clients, each
// with its own ioredis connection, acquire + release of a Semaphore of the lane's limit.
//   node redis_semaphore_load.mjs --redis 127.0.0.1:6379 --limit 4 --clients 8 --seconds 10
// redis-semaphore's own defaults otherwise (retryInterval 10 ms: its waiters poll), with
// acquireTimeout = --wait-ms like laneguard's waitMs; a timed-out acquire counts as a refusal.
import Redis from 'ioredis';
import { Semaphore } from 'redis-semaphore';
import { options, run } from './load_common.mjs';

const o = options({ redis: { type: 'string', default: '127.0.0.1:6379' }, limit: { type: 'string', default: '4' } });
const limit = Number(o.limit);
if (!Number.isInteger(limit) || limit < 1) throw new Error(`--limit: not an integer >= 1: ${o.limit}`);
const [host, port] = o.redis.split(':');
const key = `laneguard-bench-${o.lane}-${process.pid}`;
const conns = Array.from({ length: o.clients }, () =>
  new Redis({ host, port: Number(port), lazyConnect: true, enableOfflineQueue: false }));
await Promise.all(conns.map((c) => c.connect()));

const result = await run({
  clients: o.clients,
  seconds: o.seconds,
  warmupSeconds: o['warmup-seconds'],
  pair: async (i) => {
    const s = new Semaphore(conns[i], key, limit, { acquireTimeout: o['wait-ms'] });
    try {
      await s.acquire();
    } catch (err) {
      if (err && err.name === 'TimeoutError') return false;
      throw err;
    }
    await s.release();
    return true;
  },
});
await Promise.all(conns.map((c) => c.quit()));
console.log(JSON.stringify({ peer: 'redis-semaphore', limit, ...result }));
