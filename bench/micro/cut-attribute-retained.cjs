// Heap a stalled export queue holds when clients send the longest URLs and User-Agents: does cutting an attribute
// to the length limit free the client's string? Makes 2,048 SERVER and 2,048 CLIENT spans through the gateway's
// tracer (otel/gateway-tracer.ts) with 16 KiB values, as src/middleware/tracing.ts and src/upstream-span.ts give
// them, keeps every ended span (as the batch processor does while its collector does not answer), and prints the
// heap growth after full collections and the characters the spans' attributes hold. `substring` made V8 sliced
// strings that kept each original whole (98 MiB cut at 4,096 against 66 MiB uncut); cutString copies the cut.
//   npm run build && node --expose-gc bench/micro/cut-attribute-retained.cjs [limit, default 4096; Infinity for none]
const { SpanKind, ROOT_CONTEXT } = require('@opentelemetry/api');
const { AlwaysOnSampler, RandomIdGenerator } = require('@opentelemetry/sdk-trace');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { createGatewayTracer, startSpanOwning } = require('../../dist/otel/gateway-tracer.js');

if (typeof global.gc !== 'function') {
  process.stderr.write('usage: node --expose-gc bench/micro/cut-attribute-retained.cjs [limit]\n');
  process.exit(2);
}
const limit = Number(process.argv[2] ?? 4096);
const SPANS = 2048;
const LENGTH = 16 * 1024;
const kept = [];
const keeper = { onStart() {}, onEnd: (span) => kept.push(span), forceFlush: async () => {}, shutdown: async () => {} };
const tracer = createGatewayTracer({ sampler: new AlwaysOnSampler(), idGenerator: new RandomIdGenerator(), spanProcessors: [keeper], resource: resourceFromAttributes({}), spanLimits: { attributeValueLengthLimit: limit } });

global.gc();
const before = process.memoryUsage().heapUsed;
for (let i = 0; i < SPANS; i++) {
  // A request's strings as Node's parser makes them: one flat string per request target and header value.
  const target = Buffer.from(`/pub/${String(i).padStart(6, '0')}?q=${'v'.repeat(LENGTH)}`).toString('latin1');
  const userAgent = Buffer.from(`agent-${i}-${'u'.repeat(LENGTH)}`).toString('latin1');
  const query = target.indexOf('?');
  startSpanOwning(tracer, 'GET', { kind: SpanKind.SERVER, attributes: { 'url.path': target.slice(0, query), 'url.query': target.slice(query + 1), 'user_agent.original': userAgent } }, ROOT_CONTEXT).end();
  startSpanOwning(tracer, 'GET', { kind: SpanKind.CLIENT, attributes: { 'url.full': `http://127.0.0.1:4001${target}` } }, ROOT_CONTEXT).end();
}
global.gc();
const retained = process.memoryUsage().heapUsed - before;
const characters = kept.reduce((sum, span) => sum + Object.values(span.attributes).reduce((n, value) => n + (typeof value === 'string' ? value.length : 0), 0), 0);
console.log(`limit ${limit}: ${kept.length} spans kept, ${(characters / 2 ** 20).toFixed(1)} Mi attribute characters, ${(retained / 2 ** 20).toFixed(1)} MiB of heap retained`);
