// The loop both Node peers share (redis_semaphore_load.mjs, laneguard_node_load.mjs): N async
// clients, each repeating one acquire + release pair for a warm-up and then the measured window,
// and the same JSON line bench/serve_load.cc prints.
import { parseArgs } from 'node:util';

export function options(extra = {}) {
  const { values } = parseArgs({
    options: {
      clients: { type: 'string', default: '8' },
      seconds: { type: 'string', default: '10' },
      'warmup-seconds': { type: 'string', default: '1' },
      lane: { type: 'string', default: 'bench' },
      'wait-ms': { type: 'string', default: '10000' },
      ...extra,
    },
  });
  for (const key of ['clients', 'seconds', 'warmup-seconds', 'wait-ms']) {
    const v = Number(values[key]);
    if (!Number.isFinite(v) || v < 0) throw new Error(`--${key}: not a number >= 0: ${values[key]}`);
    values[key] = v;
  }
  if (values.clients < 1 || values.seconds <= 0) throw new Error('--clients >= 1, --seconds > 0');
  return values;
}

const nowNs = () => process.hrtime.bigint();

function percentileMs(sorted, q) {
  if (sorted.length === 0) return 0;
  return Number(sorted[Math.floor(q * (sorted.length - 1))]) / 1e6;
}

// `pair(client)` does one acquire + release and resolves to true, or false for a refusal.
export async function run({ clients, seconds, warmupSeconds, pair }) {
  const begin = nowNs();
  const from = begin + BigInt(Math.round(warmupSeconds * 1e9));
  const to = from + BigInt(Math.round(seconds * 1e9));
  const latencies = [];
  let refusals = 0;
  let errors = 0;
  const firstErrors = [];
  async function client(i) {
    while (nowNs() < to) {
      const t0 = nowNs();
      try {
        if (!(await pair(i))) {
          ++refusals;
          continue;
        }
      } catch (err) {
        ++errors;
        if (firstErrors.length < 3) firstErrors.push(String(err));
        if (errors > 100) return;
        continue;
      }
      const t1 = nowNs();
      if (t0 >= from && t1 <= to) latencies.push(t1 - t0);
    }
  }
  await Promise.all(Array.from({ length: clients }, (_, i) => client(i)));
  latencies.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (firstErrors.length) process.stderr.write(`errors: ${firstErrors.join('; ')}\n`);
  return {
    clients,
    seconds,
    pairs: latencies.length,
    pairs_per_s: latencies.length / seconds,
    p50_ms: percentileMs(latencies, 0.5),
    p99_ms: percentileMs(latencies, 0.99),
    refusals,
    errors,
  };
}
