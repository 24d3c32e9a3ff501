// Bytes a span of the gateway holds while it waits for its export batch: what the young generation copies (and
// then promotes) for every span kept across a scavenge. Makes the gateway's two spans per request through its lean
// tracer (otel/gateway-tracer.ts) with the attributes the gateway's carry, keeps every ended span (as the batch
// processor does until it exports), and prints the heap growth after full collections per span kept. With a path,
// also writes a heap snapshot, to see which objects the bytes are (Chrome DevTools: Memory, Summary).
//   npm run build && node --expose-gc bench/micro/span-retained-bytes.cjs [snapshot path]
const { trace, SpanKind, ROOT_CONTEXT } = require('@opentelemetry/api');
const { AlwaysOnSampler } = require('@opentelemetry/sdk-trace');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { writeHeapSnapshot } = require('node:v8');
const { createGatewayTracer, startSpanOwning } = require('../../dist/otel/gateway-tracer.js');
const { RequestedTraceIdGenerator } = require('../../dist/otel/trace-ids.js');

if (typeof global.gc !== 'function') {
  process.stderr.write('usage: node --expose-gc bench/micro/span-retained-bytes.cjs [snapshot path]\n');
  process.exit(2);
}
const kept = [];
const keeper = { onStart() {}, onEnd: (span) => kept.push(span), forceFlush: async () => {}, shutdown: async () => {} };
const tracer = createGatewayTracer({ sampler: new AlwaysOnSampler(), idGenerator: new RequestedTraceIdGenerator(), spanProcessors: [keeper], resource: resourceFromAttributes({ 'service.name': 'koa-gateway' }) });

/** One proxied request's SERVER and CLIENT span, attributes as src/middleware/tracing.ts and src/upstream-span.ts set them. */
function request(index) {
  const id = index % 1000;
  const attributes = {};
  attributes['http.request.method'] = 'GET';
  attributes['url.path'] = `/api/users/${id}`;
  attributes['url.scheme'] = 'http';
  attributes['server.address'] = '127.0.0.1';
  attributes['server.port'] = 3000;
  attributes['client.address'] = '127.0.0.1';
  attributes['network.protocol.version'] = '1.1';
  attributes['user_agent.original'] = 'wrk';
  const server = startSpanOwning(tracer, 'GET', { kind: SpanKind.SERVER, attributes }, ROOT_CONTEXT);
  const requestId = server.spanContext().traceId;
  const call = {};
  call['http.request.method'] = 'GET';
  call['url.full'] = `http://127.0.0.1:4001/users/${id}`;
  call['server.address'] = '127.0.0.1';
  call['server.port'] = 4001;
  call['gateway.upstream.service'] = 'users';
  call['request.id'] = requestId;
  const client = startSpanOwning(tracer, 'GET', { kind: SpanKind.CLIENT, attributes: call }, trace.setSpan(ROOT_CONTEXT, server));
  client.setAttribute('gateway.upstream.outcome', 'ok').setAttribute('http.response.status_code', 200).end();
  server.updateName('GET /api/users/*');
  server.setAttribute('http.route', '/api/users/*').setAttribute('gateway.route.name', 'users').setAttribute('enduser.id', '42');
  server.setAttribute('user.roles', ['user']).setAttribute('http.response.status_code', 200).setAttribute('request.id', requestId).end();
}

// Warm-up (compiled code, the attribute objects' maps), then a clean start.
for (let index = 0; index < 5000; index++) request(index);
kept.length = 0;
global.gc();
global.gc();
const before = process.memoryUsage().heapUsed;
const REQUESTS = 50_000;
for (let index = 0; index < REQUESTS; index++) request(index);
global.gc();
global.gc();
const after = process.memoryUsage().heapUsed;
console.log(`${((after - before) / kept.length).toFixed(0)} bytes retained per span (${kept.length} spans kept, the array that keeps them included)`);
if (process.argv[2]) console.log(`heap snapshot: ${writeHeapSnapshot(process.argv[2])}`);
