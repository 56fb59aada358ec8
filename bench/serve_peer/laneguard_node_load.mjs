// `laneguard serve` from Node, the loop of redis_semaphore_load.mjs, so both peers are measured by
// the same kind of client: N clients, each with a keep-alive node:http Agent of one socket,
// POST /v1/leases then DELETE /v1/leases/<id>.
//   node laneguard_node_load.mjs --url http://127.0.0.1:PORT --lane bench --clients 8
import http from 'node:http';
import { options, run } from './load_common.mjs';

const o = options({ url: { type: 'string', default: 'http://127.0.0.1:7878' } });
const url = new URL(o.url);

function request(agent, method, path, body) {
  return new Promise((resolve, reject) => {
    const headers = body ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } : {};
    const req = http.request({ host: url.hostname, port: url.port, method, path, agent, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

const agents = Array.from({ length: o.clients }, () => new http.Agent({ keepAlive: true, maxSockets: 1 }));
const bodies = agents.map((_, i) => JSON.stringify({ lane: o.lane, taskId: `b-${i}`, waitMs: o['wait-ms'] }));

const result = await run({
  clients: o.clients,
  seconds: o.seconds,
  warmupSeconds: o['warmup-seconds'],
  pair: async (i) => {
    const a = await request(agents[i], 'POST', '/v1/leases', bodies[i]);
    if (a.status === 429 || a.status === 503) return false;
    if (a.status !== 201) throw new Error(`POST /v1/leases: ${a.status} ${a.body}`);
    const id = JSON.parse(a.body).leaseId;
    const d = await request(agents[i], 'DELETE', `/v1/leases/${encodeURIComponent(id)}`);
    if (d.status !== 200) throw new Error(`DELETE /v1/leases/${id}: ${d.status} ${d.body}`);
    return true;
  },
});
for (const a of agents) a.destroy();
console.log(JSON.stringify({ peer: 'laneguard', client: 'node', ...result }));
