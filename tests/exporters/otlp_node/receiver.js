// Receives what laneguard's OTLP/HTTP exporters send and checks it with the official
// OpenTelemetry protobuf definitions (the protobufjs module that
// @opentelemetry/otlp-transformer 0.210.0 generates from opentelemetry-proto).
//
//   node receiver.js DRIVER   (DRIVER: otlp_roundtrip_driver; it gets the base URL as argv[1])
//
// For each request body: OTLP/JSON's hex ids become bytes (the one place where OTLP/JSON departs
// from the proto3 JSON mapping), then fromObject() builds the message, verify() checks it,
// encode()/decode() round-trip it through the binary protobuf form, and toObject() reads it back.
// Every key we sent must be a field of the official message (a misspelt key would otherwise be
// dropped silently), and the decoded values must equal what the driver says it sent.
'use strict';
const http = require('http');
const { execFile } = require('child_process');
const assert = require('assert');
const root = require('@opentelemetry/otlp-transformer/build/src/generated/root.js');

const proto = root.opentelemetry.proto;
const TraceRequest = proto.collector.trace.v1.ExportTraceServiceRequest;
const LogsRequest = proto.collector.logs.v1.ExportLogsServiceRequest;
const ID_KEYS = new Set(['traceId', 'spanId', 'parentSpanId']);

let passed = 0;
let failed = 0;
function check(name, fn) {
  try {
    fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}

// Hex ids -> Buffer, refusing anything but lower-case hex of the right length.
function idsToBytes(value, key) {
  if (Array.isArray(value)) return value.map((v) => idsToBytes(v));
  if (value && typeof value === 'object') {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = idsToBytes(v, k);
    return out;
  }
  if (ID_KEYS.has(key)) {
    assert.ok(typeof value === 'string' && /^([0-9a-f]{2})*$/.test(value), `${key} not lower-case hex: ${value}`);
    const want = key === 'traceId' ? 32 : 16;
    assert.ok(value.length === 0 || value.length === want, `${key} has ${value.length} hex digits`);
    return Buffer.from(value, 'hex');
  }
  return value;
}

function bytesToHex(value) {
  if (value instanceof Uint8Array) return Buffer.from(value).toString('hex');
  if (Array.isArray(value)) return value.map(bytesToHex);
  if (value && typeof value === 'object') {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = bytesToHex(v);
    return out;
  }
  return value;
}

// Every key of `sent` must be present in `decoded` (toObject with defaults), recursively.
function assertKnownKeys(sent, decoded, path) {
  if (Array.isArray(sent)) {
    assert.ok(Array.isArray(decoded) && decoded.length === sent.length, `${path}: array length`);
    sent.forEach((v, i) => assertKnownKeys(v, decoded[i], `${path}[${i}]`));
  } else if (sent && typeof sent === 'object') {
    for (const k of Object.keys(sent)) {
      assert.ok(decoded && Object.prototype.hasOwnProperty.call(decoded, k), `${path}.${k} is not a field of the message`);
      assertKnownKeys(sent[k], decoded[k], `${path}.${k}`);
    }
  }
}

// JSON text -> checked, round-tripped plain object with hex ids and int64s as strings.
function decode(Type, text) {
  const sent = JSON.parse(text);
  const message = Type.fromObject(idsToBytes(sent));
  const error = Type.verify(message);
  assert.strictEqual(error, null, `verify: ${error}`);
  const wire = Type.encode(message).finish();
  const back = Type.decode(wire);
  const obj = Type.toObject(back, { longs: String, enums: Number, defaults: true, arrays: true, oneofs: true });
  assertKnownKeys(sent, obj, 'request');
  return bytesToHex(obj);
}

// AnyValue -> [type, value]; `value` names the oneof member that is set (toObject's oneofs).
function anyValue(v) {
  const types = { stringValue: 'string', intValue: 'int', doubleValue: 'double', boolValue: 'bool' };
  if (!(v.value in types)) throw new Error(`unexpected AnyValue ${JSON.stringify(v)}`);
  return [types[v.value], v.value === 'intValue' ? String(v.intValue) : v[v.value]];
}

function attributes(list) {
  const out = {};
  for (const kv of list) out[kv.key] = anyValue(kv.value);
  return out;
}

const requests = { '/v1/traces': [], '/v1/logs': [] };
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const known = Object.prototype.hasOwnProperty.call(requests, req.url);
    if (known) requests[req.url].push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
    res.writeHead(known ? 200 : 404, { 'Content-Type': 'application/json' });
    res.end(known ? '{"partialSuccess":{}}' : '{}');
  });
});

const deadline = setTimeout(() => {
  console.log('FAIL: timed out');
  process.exit(1);
}, 60000);

server.listen(0, '127.0.0.1', () => {
  const base = `http://127.0.0.1:${server.address().port}`;
  execFile(process.argv[2], [base], { timeout: 30000 }, (err, stdout, stderr) => {
    server.close();
    clearTimeout(deadline);
    if (stderr) process.stderr.write(stderr);
    check('driver exported everything', () => assert.ifError(err));
    let expected = null;
    check('driver printed what it sent', () => {
      expected = JSON.parse(stdout);
    });
    if (expected) verifyAll(expected);
    console.log(`${passed} passed, ${failed} failed`);
    process.exit(failed === 0 ? 0 : 1);
  });
});

function verifyAll(expected) {
  check('one traces request, one logs request', () => {
    assert.strictEqual(requests['/v1/traces'].length, 1);
    assert.strictEqual(requests['/v1/logs'].length, 1);
  });
  for (const path of ['/v1/traces', '/v1/logs']) {
    const r = requests[path][0];
    if (!r) continue;
    check(`${path}: Content-Type and configured header`, () => {
      assert.strictEqual(r.headers['content-type'], 'application/json');
      assert.strictEqual(r.headers['x-roundtrip'], 'yes');
    });
  }

  let traces = null;
  check('traces: official ExportTraceServiceRequest decodes, verifies, round-trips', () => {
    traces = decode(TraceRequest, requests['/v1/traces'][0].body);
  });
  if (traces) {
    const rs = traces.resourceSpans;
    check('traces: one resource, one scope', () => {
      assert.strictEqual(rs.length, 1);
      assert.strictEqual(rs[0].scopeSpans.length, 1);
    });
    check('traces: resource attributes', () => {
      const attrs = attributes(rs[0].resource.attributes);
      for (const [k, v] of Object.entries(expected.resource)) assert.deepStrictEqual(attrs[k], ['string', v], k);
    });
    check('traces: scope name and version', () => {
      assert.strictEqual(rs[0].scopeSpans[0].scope.name, expected.scope.name);
      assert.strictEqual(rs[0].scopeSpans[0].scope.version, expected.scope.version);
    });
    const spans = rs[0].scopeSpans[0].spans;
    check('traces: span count', () => assert.strictEqual(spans.length, expected.spans.length));
    expected.spans.forEach((e, i) => {
      const s = spans[i];
      if (!s) return;
      check(`span ${i}: ids, name, kind, times`, () => {
        for (const k of ['traceId', 'spanId', 'parentSpanId', 'name', 'kind', 'startTimeUnixNano', 'endTimeUnixNano'])
          assert.strictEqual(s[k], e[k], k);
      });
      check(`span ${i}: kind is a SpanKind of the proto`, () => {
        assert.ok(Object.values(proto.trace.v1.Span.SpanKind).includes(s.kind));
      });
      check(`span ${i}: attributes`, () => assert.deepStrictEqual(attributes(s.attributes), e.attributes));
      check(`span ${i}: events`, () => {
        assert.strictEqual(s.events.length, e.events.length);
        e.events.forEach((ev, j) => {
          assert.strictEqual(s.events[j].name, ev.name);
          assert.strictEqual(s.events[j].timeUnixNano, ev.timeUnixNano);
          assert.strictEqual(s.events[j].droppedAttributesCount, ev.droppedAttributesCount);
          assert.deepStrictEqual(attributes(s.events[j].attributes), ev.attributes);
        });
      });
      check(`span ${i}: status and dropped counts`, () => {
        assert.strictEqual(s.status.code, e.status.code);
        assert.strictEqual(s.status.message, e.status.message);
        assert.strictEqual(s.droppedAttributesCount, e.droppedAttributesCount);
      });
    });
  }

  let logs = null;
  check('logs: official ExportLogsServiceRequest decodes, verifies, round-trips', () => {
    logs = decode(LogsRequest, requests['/v1/logs'][0].body);
  });
  if (logs) {
    const rl = logs.resourceLogs;
    check('logs: resource service.name and scope', () => {
      assert.deepStrictEqual(attributes(rl[0].resource.attributes)['service.name'], ['string', expected.resource['service.name']]);
      assert.strictEqual(rl[0].scopeLogs[0].scope.name, expected.scope.name);
    });
    const records = rl[0].scopeLogs[0].logRecords;
    check('logs: record count', () => assert.strictEqual(records.length, expected.logs.length));
    expected.logs.forEach((e, i) => {
      const r = records[i];
      if (!r) return;
      check(`log ${i}: time, severity, body, ids`, () => {
        assert.strictEqual(r.timeUnixNano, e.timeUnixNano);
        assert.strictEqual(r.severityNumber, e.severityNumber);
        assert.strictEqual(r.severityText, e.severityText);
        assert.strictEqual(r.body.stringValue, e.body);
        assert.strictEqual(r.traceId, e.traceId);
        assert.strictEqual(r.spanId, e.spanId);
      });
      check(`log ${i}: severityNumber is the proto's SEVERITY_NUMBER_${e.severityText}`, () => {
        assert.strictEqual(r.severityNumber, proto.logs.v1.SeverityNumber[`SEVERITY_NUMBER_${e.severityText}`]);
      });
      check(`log ${i}: attributes`, () => assert.deepStrictEqual(attributes(r.attributes), e.attributes));
    });
  }
}
