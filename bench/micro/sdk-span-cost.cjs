// Where the SDK's cost for the gateway's two spans per request goes, in a tight loop (yielding every 20
// "requests" so the batch processor can export), CPU µs per request:
//   none    the API without an SDK            create  spans made, dropped (NoopSpanProcessor)
//   batch   + BatchSpanProcessor, no export   encode  + our encoder (otel/otlp-protobuf-encoding.ts), no I/O
//   http    + OTLP/HTTP to a sink on 127.0.0.1:47100 (node bench/otlp-sink.mjs 47100)
//   lean-<mode>  the same processors under the gateway's lean tracer (otel/gateway-tracer.ts) instead of the
//                SDK's Tracer: lean-create, lean-batch, lean-encode, lean-http
//   npm run build && node --max-semi-space-size=8 bench/micro/sdk-span-cost.cjs <mode> [requests]
const api = require('@opentelemetry/api');
const { context, trace, propagation, SpanKind, ROOT_CONTEXT } = api;
const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks');
const { TracerProvider, BatchSpanProcessor, NoopSpanProcessor, AlwaysOnSampler, RandomIdGenerator } = require('@opentelemetry/sdk-trace');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { encodeTraceExportRequest } = require('../../dist/otel/otlp-protobuf-encoding.js');
const { createTextMapPropagator } = require('../../dist/otel/trace-context-propagator.js');
const { createGatewayTracer } = require('../../dist/otel/gateway-tracer.js');
const lean = process.argv[2].startsWith('lean-'); const mode = process.argv[2].replace(/^lean-/, ''); const N = Number(process.argv[3] || 100000);
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
propagation.setGlobalPropagator(createTextMapPropagator());
let processor;
if (mode === 'create') processor = new NoopSpanProcessor();
else if (mode === 'batch') processor = new BatchSpanProcessor({ exporter: { export(spans, cb) { cb({ code: 0 }); }, shutdown: async () => {} } });
else if (mode === 'encode') processor = new BatchSpanProcessor({ exporter: { export(spans, cb) { encodeTraceExportRequest(spans); cb({ code: 0 }); }, shutdown: async () => {} } });
else if (mode === 'http') {
  const http = require('node:http'); const agent = new http.Agent({ keepAlive: true });
  processor = new BatchSpanProcessor({ exporter: { export(spans, cb) { const body = encodeTraceExportRequest(spans); const r = http.request('http://127.0.0.1:47100/v1/traces', { method: 'POST', agent, headers: { 'content-type': 'application/x-protobuf', 'content-length': body.length } }, (res) => { res.resume(); res.on('end', () => cb({ code: 0 })); }); r.on('error', () => cb({ code: 1 })); r.end(body); }, shutdown: async () => {} } });
}
const tracerOptions = { sampler: new AlwaysOnSampler(), resource: resourceFromAttributes({ 'service.name': 'koa-gateway' }), idGenerator: new RandomIdGenerator(), spanProcessors: processor ? [processor] : [] };
const provider = new TracerProvider(tracerOptions);
const tracer = mode === 'none' ? trace.getTracer('x') : lean ? createGatewayTracer(tracerOptions) : provider.getTracer('koa-gateway');
function one() {
  const span = tracer.startSpan('GET', { kind: SpanKind.SERVER, attributes: { 'http.request.method': 'GET', 'url.path': '/api/users/42', 'url.scheme': 'http', 'server.address': '127.0.0.1', 'client.address': '127.0.0.1', 'network.protocol.version': '1.1', 'user_agent.original': 'wrk' } }, ROOT_CONTEXT);
  const active = trace.setSpan(ROOT_CONTEXT, span);
  const c = tracer.startSpan('GET', { kind: SpanKind.CLIENT, attributes: { 'http.request.method': 'GET', 'url.full': 'http://127.0.0.1:4001/users/42', 'server.address': '127.0.0.1', 'server.port': 4001, 'gateway.upstream.service': 'users' } }, active);
  const headers = {}; propagation.inject(trace.setSpan(active, c), headers);
  c.setAttribute('gateway.upstream.outcome', 'ok'); c.setAttribute('http.response.status_code', 200); c.end();
  span.updateName('GET /api/users'); span.setAttribute('http.route', '/api/users'); span.setAttribute('gateway.route.name', 'users');
  span.setAttributes({ 'enduser.id': '42', 'enduser.role': 'user' }); span.setAttribute('http.response.status_code', 200); span.end();
}
(async () => {
  for (let i = 0; i < 20000; i++) { one(); if (i % 20 === 0) await new Promise((r) => setImmediate(r)); }
  const t0 = process.cpuUsage();
  for (let i = 0; i < N; i++) { one(); if (i % 20 === 0) await new Promise((r) => setImmediate(r)); }
  await processor?.forceFlush?.();
  const d = process.cpuUsage(t0);
  console.log(process.argv[2].padEnd(12), ((d.user + d.system) / N).toFixed(2), 'us/req');
  process.exit(0);
})();
