// Summarises a V8 .cpuprofile (node --cpu-prof): self time by function, by package or area, and total
// (inclusive) time of the functions that matter, as markdown. Usable on its own:
//   node bench/cpu-profile-summary.mjs <file.cpuprofile> [--top 25]
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Where a function lives: an npm package, Node's own code, this project's dist/ folders, or V8's pseudo-nodes. */
export function areaOf(url, functionName) {
  if (!url) return functionName.startsWith('(') ? functionName : '(native)';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1];
  if (url.startsWith('node:')) return url.startsWith('node:internal/') ? `node:${url.slice('node:internal/'.length).split('/')[0]}` : url;
  const own = /\/dist\/(src|otel|services)\/(.*)$/.exec(url);
  if (own) return `${own[1]}/${own[2].replace(/\.js$/, '')}`;
  return path.basename(url);
}

/**
 * Self, area and inclusive time of the samples taken between `fromUs` and `toUs` (the monotonic clock of
 * `process.hrtime`, which V8's profile timestamps share), so start-up and shutdown can be left out.
 */
/** Areas grouped by the part of the request path they serve; the first pattern that matches wins. */
const BUCKETS = [
  // Before telemetry: otel/logger.ts writes the access-log line (logLine), with or without tracing.
  ['access log (otel/logger, winston, logform)', /^otel\/logger$/],
  ['telemetry (OpenTelemetry SDK, exporter, otel/)', /^(@opentelemetry\/|otel\/|protobufjs|@protobufjs)/],
  // undici parses responses with llhttp compiled to WebAssembly: its frames show as `wasm://wasm/<hash>`.
  ['HTTP client to the services (undici, its llhttp WebAssembly)', /^(undici|[0-9a-f]{8})$/],
  ['proxy libraries (koa-proxies, http-proxy, path-match, url.parse)', /^(koa-proxies|http-proxy|path-match|path-to-regexp@?|node:url|requires-port|eventemitter3|follow-redirects)$/],
  ['access log (otel/logger, winston, logform)', /^(winston|winston-transport|logform|safe-stable-stringify|readable-stream|triple-beam|fecha|@colors\/colors|colors|one-time|fn\.name|kuler|stack-trace|@dabh\/diagnostics|async|is-stream|string_decoder|util-deprecate|inherits)$/],
  ['rate limit (koa-ratelimit)', /^(koa-ratelimit|ms|async-ratelimiter)$/],
  ['JWT (jose, src/tokens)', /^(jose|src\/tokens)$/],
  ['gateway code (src/)', /^src\//],
  ['Koa, router, their helpers', /^(koa|koa-compose|@koa\/router|delegates|on-finished|statuses|content-type|type-is|mime-types|mime-db|accepts|negotiator|vary|encodeurl|escape-html|http-errors|depd|cookies|keygrip|fresh|content-disposition|destroy|ee-first|only|http-assert|koa-convert|media-typer|deep-equal|@hapi\/bourne|debug|setprototypeof|toidentifier|uuid)$/],
  ['GC and V8 (garbage collector, program)', /^\((garbage collector|program)\)$/],
  ['Node core (HTTP, sockets, streams, events, timers, native writes)', /^(node:|\(native\)|\(root\))/],
];

export function bucketOf(area) {
  return BUCKETS.find(([, pattern]) => pattern.test(area))?.[0] ?? `other packages (${area})`;
}

export function summarise(profile, { fromUs = -Infinity, toUs = Infinity } = {}) {
  const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const keyOf = (node) => {
    const { functionName, url, lineNumber } = node.callFrame;
    return `${functionName || '(anonymous)'}  ${url ? `${areaOf(url, functionName)}:${lineNumber + 1}` : ''}`.trim();
  };

  const self = new Map();
  const total = new Map();
  const areas = new Map();
  let all = 0;
  let idle = 0;
  let at = profile.startTime;
  profile.samples.forEach((id, i) => {
    const delta = profile.timeDeltas[i] ?? 0;
    at += delta;
    if (at < fromUs || at > toUs) return;
    const node = nodes.get(id);
    all += delta;
    if (node.callFrame.functionName === '(idle)') {
      idle += delta;
      return;
    }
    self.set(keyOf(node), (self.get(keyOf(node)) ?? 0) + delta);
    const area = areaOf(node.callFrame.url, node.callFrame.functionName);
    areas.set(area, (areas.get(area) ?? 0) + delta);
    const seen = new Set();
    for (let up = id; up !== undefined; up = parent.get(up)) {
      const key = keyOf(nodes.get(up));
      if (seen.has(key)) continue;
      seen.add(key);
      total.set(key, (total.get(key) ?? 0) + delta);
    }
  });
  const busy = all - idle;
  const buckets = new Map();
  for (const [area, us] of areas) buckets.set(bucketOf(area), (buckets.get(bucketOf(area)) ?? 0) + us);
  const sorted = (map) => [...map.entries()].sort((a, b) => b[1] - a[1]).map(([key, us]) => ({ key, ms: Math.round(us / 100) / 10, percentOfBusy: Math.round((us / busy) * 1000) / 10 }));
  return { wallMs: Math.round(all / 1000), busyMs: Math.round(busy / 1000), buckets: sorted(buckets), self: sorted(self), areas: sorted(areas), total: sorted(total) };
}

export function summaryMarkdown(summary, { top = 25 } = {}) {
  const lines = [`Main thread: ${summary.busyMs} ms busy of ${summary.wallMs} ms sampled.`, ''];
  lines.push('| self % | where the main thread spent its time |', '|---:|---|');
  for (const row of summary.buckets) lines.push(`| ${row.percentOfBusy} | ${row.key} |`);
  lines.push('');
  lines.push('| self % | self ms | function (area:line) |', '|---:|---:|---|');
  for (const row of summary.self.slice(0, top)) lines.push(`| ${row.percentOfBusy} | ${row.ms} | \`${row.key}\` |`);
  lines.push('', '| self % | area (package, node internals, project file) |', '|---:|---|');
  for (const row of summary.areas.slice(0, top)) lines.push(`| ${row.percentOfBusy} | ${row.key} |`);
  lines.push('', '| total % | function, inclusive of callees (project code and proxy/telemetry entry points) |', '|---:|---|');
  const interesting = summary.total.filter((row) => /(src|otel)\/|koa-proxies|http-proxy|jose|winston|koa-ratelimit|koa-compose|@opentelemetry|@koa\/router/.test(row.key));
  for (const row of interesting.slice(0, top)) lines.push(`| ${row.percentOfBusy} | \`${row.key}\` |`);
  return `${lines.join('\n')}\n`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: node bench/cpu-profile-summary.mjs <file.cpuprofile> [--top N]\n');
    process.exit(2);
  }
  const topAt = process.argv.indexOf('--top');
  const top = topAt > 0 ? Number(process.argv[topAt + 1]) : 25;
  process.stdout.write(summaryMarkdown(summarise(JSON.parse(fs.readFileSync(file, 'utf8'))), { top }));
}
