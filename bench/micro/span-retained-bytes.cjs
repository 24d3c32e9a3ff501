// Bytes a span of the gateway holds while it waits for its export batch: what the young generation copies (and
// then promotes) for every span kept across a scavenge. Makes the gateway's two spans per request through its lean
// tracer (otel/gateway-tracer.ts) with the attributes the gateway's carry, keeps every ended span (as the batch
// processor does until it exports), and prints the heap growth after full collections per span kept. With a path,
// also writes a heap snapshot, to see which objects the bytes are (Chrome DevTools: Memory, Summary).
//   npm run build && node --expose-gc bench/micro/span-retained-bytes.cjs [--per-request] [snapshot path]
const { trace, SpanKind, ROOT_CONTEXT } = require('@opentelemetry/api');
const { AlwaysOnSampler } = require('@opentelemetry/sdk-trace');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { writeHeapSnapshot } = require('node:v8');
const { createGatewayTracer, startSpanOwning } = require('../../dist/otel/gateway-tracer.js');
const { RequestedTraceIdGenerator } = require('../../dist/otel/trace-ids.js');

if (typeof global.gc !== 'function') {
  process.stderr.write('usage: node --expose-gc bench/micro/span-retained-bytes.cjs [--per-request] [snapshot path]\n');
  process.exit(2);
}
const kept = [];
const keeper = { onStart() {}, onEnd: (span) => kept.push(span), forceFlush: async () => {}, shutdown: async () => {} };
const tracer = createGatewayTracer({ sampler: new AlwaysOnSampler(), idGenerator: new RequestedTraceIdGenerator(), spanProcessors: [keeper], resource: resourceFromAttributes({ 'service.name': 'koa-gateway' }) });

/**
 * One proxied request's SERVER and CLIENT span, attributes as src/middleware/tracing.ts, src/middleware/request-id.ts,
 * src/middleware/proxy.ts and src/upstream-span.ts set them, in their order (as a traced bench gateway's spans have
 * them). The SERVER span's name and `user.roles` are shared per route and role, as tracing.ts makes them;
 * `--per-request` makes both anew for every request, as before it did.
 */
const perRequest = process.argv.includes('--per-request');
const SERVER_NAME = 'GET /api/users/*';
const ROLES = Object.freeze(['user']);
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
  attributes['gateway.config.version'] = '189344c2dd94';
  const server = startSpanOwning(tracer, 'GET', { kind: SpanKind.SERVER, attributes }, ROOT_CONTEXT);
  const requestId = server.spanContext().traceId;
  server.setAttribute('request.id', requestId);
  const call = {};
  call['http.request.method'] = 'GET';
  call['url.full'] = `http://127.0.0.1:4001/users/${id}`;
  call['server.address'] = '127.0.0.1';
  call['server.port'] = 4001;
  call['gateway.upstream.service'] = 'users';
  call['gateway.upstream.attempts'] = 1;
  const client = startSpanOwning(tracer, 'GET', { kind: SpanKind.CLIENT, attributes: call }, trace.setSpan(ROOT_CONTEXT, server));
  client.setAttribute('request.id', requestId).setAttribute('gateway.upstream.outcome', 'ok').setAttribute('http.response.status_code', 200).end();
  server.setAttribute('gateway.upstream.service', 'users').setAttribute('gateway.upstream.url', 'http://127.0.0.1:4001');
  server.setAttribute('gateway.upstream.outcome', 'ok').setAttribute('gateway.upstream.attempts', 1);
  const route = '/api/users/*';
  server.updateName(perRequest ? `GET ${route}` : SERVER_NAME);
  server.setAttribute('http.route', route).setAttribute('gateway.route.name', 'users').setAttribute('user.id', String(id));
  server.setAttribute('user.roles', perRequest ? ['user'] : ROLES).setAttribute('http.response.status_code', 200).end();
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
const snapshotPath = process.argv.slice(2).find((arg) => !arg.startsWith('--'));
if (snapshotPath) console.log(`heap snapshot: ${writeHeapSnapshot(snapshotPath)}`);
