// Micro-benchmark of the one-pass OTLP span encoder (otel/otlp-protobuf-encoding.ts): 512 SDK spans shaped like
// the gateway's (a SERVER and a CLIENT span per request) encoded 2,000 times; prints CPU µs per span.
//   npm run build && node bench/micro/otlp-encode.cjs
const { context, trace, SpanKind, ROOT_CONTEXT } = require('@opentelemetry/api');
const { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } = require('@opentelemetry/sdk-trace');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { encodeTraceExportRequest } = require('../../dist/otel/otlp-protobuf-encoding.js');
const exporter = new InMemorySpanExporter();
const provider = new TracerProvider({ resource: resourceFromAttributes({ 'service.name': 'koa-gateway', 'service.instance.id': 'f7a3f1c2-1111-2222-3333-444455556666', 'deployment.environment.name': 'production' }), spanProcessors: [new SimpleSpanProcessor({ exporter })] });
const tracer = provider.getTracer('koa-gateway');
for (let i = 0; i < 256; i++) {
  const span = tracer.startSpan('GET', { kind: SpanKind.SERVER, attributes: { 'http.request.method': 'GET', 'url.path': '/api/users/42', 'url.scheme': 'http', 'server.address': '127.0.0.1', 'client.address': '127.0.0.1', 'network.protocol.version': '1.1', 'user_agent.original': 'wrk', 'request.id': '0af7651916cd43dd8448eb211c80319c' } }, ROOT_CONTEXT);
  const c = tracer.startSpan('GET', { kind: SpanKind.CLIENT, attributes: { 'http.request.method': 'GET', 'url.full': 'http://127.0.0.1:4001/users/42', 'server.address': '127.0.0.1', 'server.port': 4001, 'gateway.upstream.service': 'users', 'request.id': '0af7651916cd43dd8448eb211c80319c' } }, trace.setSpan(ROOT_CONTEXT, span));
  c.setAttribute('gateway.upstream.outcome', 'ok'); c.setAttribute('http.response.status_code', 200); c.end();
  span.updateName('GET /api/users'); span.setAttributes({ 'http.route': '/api/users', 'gateway.route.name': 'users', 'enduser.id': '42', 'enduser.role': 'user', 'http.response.status_code': 200 }); span.end();
}
const spans = exporter.getFinishedSpans();
let bytes = 0;
for (let i = 0; i < 300; i++) bytes += encodeTraceExportRequest(spans).length;
const t0 = process.cpuUsage();
const R = 2000;
for (let i = 0; i < R; i++) bytes += encodeTraceExportRequest(spans).length;
const d = process.cpuUsage(t0);
console.log('encode', ((d.user + d.system) / (R * spans.length)).toFixed(3), 'us/span', (encodeTraceExportRequest(spans).length / spans.length).toFixed(0), 'bytes/span');
