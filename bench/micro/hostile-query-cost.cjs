// Main-thread time of what every request's query goes through before any route or limit: the method-override check
// (src/middleware/path-guard.ts) and the redaction of secrets for the access line and the SERVER span (otel/redact-url.ts,
// twice per request), for 16 KiB queries shaped to make a parameter-name decoder throw (`%=&`, `%FF=&`) against a
// plain one. Thrown URIErrors cost ~4 µs each: 16 KiB of `%=&` held the event loop ~0.28 s per request before
// otel/percent-decoding.ts.
//   npm run build && node bench/micro/hostile-query-cost.cjs
const { redactUrl } = require('../../dist/otel/redact-url.js');
const { methodOverrideParameter } = require('../../dist/src/middleware/path-guard.js');

const LENGTH = 16 * 1024;
const shapes = { 'x=1&': 'x=1&', '%=&': '%=&', '%FF=&': '%FF=&', '%zz%74=&': '%zz%74=&' };
const ROUNDS = 20;
for (const [label, piece] of Object.entries(shapes)) {
  const query = piece.repeat(Math.floor(LENGTH / piece.length));
  const target = `/api/users/1?${query}`;
  for (let i = 0; i < 3; i++) (methodOverrideParameter(query), redactUrl(target)); // warm-up
  const start = process.hrtime.bigint();
  for (let i = 0; i < ROUNDS; i++) {
    methodOverrideParameter(query);
    redactUrl(target);
    redactUrl(target);
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6 / ROUNDS;
  console.log(`${label.padEnd(10)} ${String(query.split('&').length).padStart(5)} parameters: ${ms.toFixed(2)} ms per request`);
}
