// Instructions per request of gateway variants, counted by valgrind's callgrind: the whole gateway process (every
// thread: JIT code, GC, Node's C++), over a fixed number of requests. CPU time on a shared 2-core VM moves by
// ±30% between rounds; instruction counts moved by 1-5% between runs of the same build (V8 is still compiling
// after the warm-up: take the median of several runs for a question of a few percent). They do not count cache
// misses or waiting, so they complement `npm run bench`, they do not replace it.
//   apt-get install -y valgrind && npm run build
//   node bench/instructions.mjs [--variants off,traced,traced-metrics,two-workers] [--warmup 1000] [--requests 1500] [--connections 10] [--functions]
// --functions also says where the instructions go: node runs with --perf-basic-prof (V8 names its compiled code in
// /tmp/perf-<pid>.map, copied beside the dumps), and <out>/<variant>.functions.md gets the areas (compiler, GC,
// megamorphic ICs, Koa, the gateway...), the top functions by self instructions per request, and who calls the
// megamorphic ICs and the runtime (bench/callgrind-functions.mjs). V8 writing its map adds a little to the counts.
// Each variant is one gateway under `valgrind --tool=callgrind` (about 50x slower), two at a time (one per core;
// more at once shifts the counts: requests then batch differently per event-loop turn). Counters are zeroed after
// the warm-up and dumped after the measured requests (callgrind_control), so start-up is not counted.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { collectionsIn, formatFunctionsReport, mergeProfiles, nameFunctions, parseCallgrind, parsePerfMap } from './callgrind-functions.mjs';
import { childPids, freePort, readRange, start, stop, stopAll, waitUntilServing } from './processes.mjs';
import { BENCH_DIR, BENCH_SIGNING_KEY, benchCredentials, cleanEnv, freshDir, ROOT, startUpstreamAndSink, tracedFloorLaunch } from './servers.mjs';

/** What each variant sets on top of the bench's gateway environment (bench/servers.mjs `startGateway`). */
const VARIANTS = {
  off: { OTEL_SDK_DISABLED: 'true' },
  traced: { OTEL_TRACES_SAMPLER: 'always_on', OTEL_LOGS_EXPORTER: 'none', OTEL_METRICS_EXPORTER: 'none' },
  'traced-metrics': { OTEL_TRACES_SAMPLER: 'always_on', OTEL_LOGS_EXPORTER: 'none', OTEL_METRICS_EXPORTER: 'otlp', OTEL_METRIC_EXPORT_INTERVAL: '10000', METRICS_PORT: 'free' },
  'sampled-out': { OTEL_TRACES_SAMPLER: 'always_off', OTEL_LOGS_EXPORTER: 'none', OTEL_METRICS_EXPORTER: 'none' },
  'no-tracer': { OTEL_TRACES_EXPORTER: 'none', OTEL_LOGS_EXPORTER: 'none', OTEL_METRICS_EXPORTER: 'none' },
  // Issue 13's case: traced-metrics as a cluster, a primary and 2 workers, all three counted.
  'two-workers': { OTEL_TRACES_SAMPLER: 'always_on', OTEL_LOGS_EXPORTER: 'none', OTEL_METRICS_EXPORTER: 'otlp', OTEL_METRIC_EXPORT_INTERVAL: '10000', METRICS_PORT: 'free', GATEWAY_WORKERS: '2' },
  // The same cluster with no telemetry: what the cluster itself costs, without each worker's periodic exports.
  'two-workers-off': { OTEL_SDK_DISABLED: 'true', GATEWAY_WORKERS: '2' },
  // Issue 14's line: the traced gateway whose one route caches (bench/gateway.cache.bench.json); after the warm-up
  // every counted answer is a hit, the upstream is never reached.
  'cache-hit': { OTEL_TRACES_SAMPLER: 'always_on', OTEL_LOGS_EXPORTER: 'none', OTEL_METRICS_EXPORTER: 'none', config: 'gateway.cache.bench.json' },
  // The same without telemetry: how much of a hit's cost is tracing it.
  'cache-hit-off': { OTEL_SDK_DISABLED: 'true', config: 'gateway.cache.bench.json' },
};

/**
 * The references issue 12's ratios are taken against, counted the same way: the bare Node proxy (the floor) and
 * the two peer gateways (`npm ci --prefix bench/peers` first), started as `npm run bench` starts them.
 */
const REFERENCES = {
  floor: ({ port, upstreamPort }) => ({ script: path.join(BENCH_DIR, 'node-floor.mjs'), args: [String(port), String(upstreamPort)], cwd: ROOT, env: {} }),
  // Tracing's floor (bench/node-floor.mjs --traced): the gateway's node flags and bootstrap, its two spans per request.
  'floor-traced': ({ port, upstreamPort, sinkPort }) => {
    const { nodeFlags, env } = tracedFloorLaunch({ sinkPort });
    return { nodeArgs: nodeFlags, script: path.join(BENCH_DIR, 'node-floor.mjs'), args: [String(port), String(upstreamPort), '--traced'], cwd: ROOT, env };
  },
  fastify: (ports) => peer('fastify', ports),
  express: (ports) => peer('express', ports),
};

function peer(name, { port, upstreamPort }) {
  return {
    script: path.join(BENCH_DIR, `peers/${name}-gateway/server.mjs`),
    args: [],
    cwd: path.join(BENCH_DIR, 'peers'),
    env: { NODE_ENV: 'production', PORT: String(port), USER_SERVICE_URL: `http://127.0.0.1:${upstreamPort}`, JWT_SECRET: secret, RATE_LIMIT_MAX: '1000000000', ACCESS_LOG: path.join(dir, `${name}-access.log`) },
  };
}

const { values: flags } = parseArgs({
  options: {
    variants: { type: 'string', default: 'off,traced,traced-metrics' },
    warmup: { type: 'string', default: '1000' },
    requests: { type: 'string', default: '1500' },
    connections: { type: 'string', default: '10' },
    out: { type: 'string', default: path.join(BENCH_DIR, 'out', 'instructions') },
    functions: { type: 'boolean', default: false },
  },
});
const names = flags.variants.split(',');
for (const name of names) if (!(name in VARIANTS) && !(name in REFERENCES)) throw new Error(`unknown variant ${name}; known: ${[...Object.keys(VARIANTS), ...Object.keys(REFERENCES)].join(', ')}`);
for (const name of ['fastify', 'express']) {
  if (names.includes(name) && !fs.existsSync(path.join(BENCH_DIR, 'peers/node_modules'))) throw new Error('bench/peers/node_modules is missing: run `npm ci --prefix bench/peers` first');
}
if (!fs.existsSync(path.join(ROOT, 'dist/src/main.js'))) throw new Error('dist/ is missing: run `npm run build` first');
const requests = Number(flags.requests);
const connections = Number(flags.connections);
const dir = freshDir(flags.out);

// vgdb (behind callgrind_control) finds a valgrind process by a file named after the user and host, which both
// sides read from their environment: the same values on both sides, HOST being also the gateway's listen host.
const VGDB_ENV = { USER: 'root', LOGNAME: 'root', HOST: '127.0.0.1' };
const gatewayArgs = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).scripts['start:gateway'].split(' ').slice(1);
const { secret, token } = await benchCredentials();

/** `count` authenticated GETs over `connections` keep-alive connections; resolves with how many were not 200. */
async function load(port, count) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  let next = 0;
  let failed = 0;
  const one = () =>
    new Promise((resolve, reject) => {
      const request = http.request({ host: '127.0.0.1', port, path: '/api/users/42', agent, headers: { authorization: `Bearer ${token}` } }, (response) => {
        if (response.statusCode !== 200) failed++;
        response.resume();
        response.on('end', resolve);
      });
      // Under callgrind on a busy machine a kept-alive connection can reach the server's keep-alive timeout
      // between two requests; a GET sent on it as it closes is sent again on a new one, as clients do.
      request.on('error', (error) => (request.reusedSocket && error.code === 'ECONNRESET' ? one().then(resolve, reject) : reject(error)));
      request.end();
    });
  await Promise.all(Array.from({ length: connections }, async () => {
    while (next++ < count) await one();
  }));
  agent.destroy();
  return failed;
}

/** Instructions in the files callgrind dumped for `name` (`<name>.callgrind.out.<pid>.<dump>`), every process's. */
function countedInstructions(name) {
  const dumped = new RegExp(`^${name}\\.callgrind\\.out\\.\\d+\\.\\d+$`);
  const files = fs.readdirSync(dir).filter((file) => dumped.test(file));
  return files.reduce((sum, file) => sum + Number(/^(?:summary|totals):\s*(\d+)/m.exec(fs.readFileSync(path.join(dir, file), 'utf8'))?.[1] ?? 0), 0);
}

/**
 * `<name>.functions.md`: where the counted instructions went, by area and by function, from the dumps and the
 * perf maps copied beside them (bench/callgrind-functions.mjs). Run after all measuring: parsing takes seconds,
 * which would stall the load of a variant measured at the same time.
 */
function writeFunctionsReport(name) {
  const dumped = new RegExp(`^${name}\\.callgrind\\.out\\.(\\d+)\\.\\d+$`);
  const profiles = fs.readdirSync(dir).flatMap((file) => {
    const pid = dumped.exec(file)?.[1];
    if (pid === undefined) return [];
    const perfMap = path.join(dir, `${name}.perf-${pid}.map`);
    const perfEntries = fs.existsSync(perfMap) ? parsePerfMap(fs.readFileSync(perfMap, 'utf8')) : [];
    return [nameFunctions(parseCallgrind(fs.readFileSync(path.join(dir, file), 'utf8')), perfEntries)];
  });
  const report = path.join(dir, `${name}.functions.md`);
  fs.writeFileSync(report, formatFunctionsReport({ name, profile: mergeProfiles(profiles), requests, root: ROOT }));
  return report;
}

/** The command line and environment of `name` under test: a gateway variant, or a reference process. */
async function commandOf(name, port, upstreamPort, sinkPort) {
  if (name in REFERENCES) {
    const reference = REFERENCES[name]({ port, upstreamPort, sinkPort });
    return { args: [...(reference.nodeArgs ?? []), reference.script, ...reference.args], cwd: reference.cwd, env: cleanEnv({ ...VGDB_ENV, ...reference.env }) };
  }
  const { config = 'gateway.bench.json', ...variant } = VARIANTS[name];
  if (variant.METRICS_PORT === 'free') variant.METRICS_PORT = String(await freePort());
  const env = cleanEnv({
    ...VGDB_ENV,
    GATEWAY_CONFIG: path.join(BENCH_DIR, config),
    NODE_ENV: 'production',
    PORT: String(port),
    JWT_SECRET: secret,
    GATEWAY_SIGNING_KEY: BENCH_SIGNING_KEY,
    USER_SERVICE_URL: `http://127.0.0.1:${upstreamPort}`,
    RATE_LIMIT_MAX: '1000000000',
    LOG_LEVEL: 'info',
    OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${sinkPort}`,
    ...variant,
  });
  return { args: gatewayArgs, cwd: ROOT, env };
}

async function measure(name, upstreamPort, sinkPort) {
  const port = await freePort();
  const { args, cwd, env } = await commandOf(name, port, upstreamPort, sinkPort);
  // %p: one file per process; with workers, valgrind follows the forks (--trace-children) and counts them too.
  const out = path.join(dir, `${name}.callgrind.out.%p`);
  // --perf-basic-prof: V8 names its compiled code in /tmp/perf-<pid>.map, where callgrind sees bare addresses.
  // --trace-gc: V8 prints a line per collection to stdout (the process's .out.log), so the collections inside the
  // counted window are known (below).
  const nodeArgs = flags.functions ? ['--perf-basic-prof', '--trace-gc', ...args] : ['--trace-gc', ...args];
  const gateway = start(name, 'valgrind', ['--tool=callgrind', '--trace-children=yes', '--smc-check=all-non-file', `--callgrind-out-file=${out}`, process.execPath, ...nodeArgs], {
    cwd,
    env,
    stdoutFile: path.join(dir, `${name}.out.log`),
    stderrFile: path.join(dir, `${name}.err.log`),
  });
  try {
    await waitUntilServing(`http://127.0.0.1:${port}/api/users/42`, { headers: { authorization: `Bearer ${token}` }, child: gateway, timeoutMs: 300_000, attemptTimeoutMs: 30_000 });
    await load(port, Number(flags.warmup));
    // Whatever the warm-up left running (a batch export, a timer) ends before counting starts.
    await sleep(1500);
    const pids = [gateway.pid, ...childPids(gateway.pid)];
    const control = (command) => {
      for (const pid of pids) execFileSync('callgrind_control', [command, String(pid)], { env: { PATH: process.env.PATH, ...VGDB_ENV }, stdio: 'ignore' });
    };
    const stdoutFile = path.join(dir, `${name}.out.log`);
    const windowStart = fs.statSync(stdoutFile).size;
    control('--zero');
    const failed = await load(port, requests);
    control('--dump');
    // The collections V8 reported inside the counted window (bench/callgrind-functions.mjs `collectionsIn`).
    const gc = collectionsIn(readRange(stdoutFile, windowStart, fs.statSync(stdoutFile).size));
    await sleep(500);
    // Copied as it was at the dump: code compiled later may reuse an address the counted code ran at, and a
    // map's last entry for an address names it.
    if (flags.functions) {
      for (const pid of pids) {
        const perfMap = `/tmp/perf-${pid}.map`;
        if (!fs.existsSync(perfMap)) continue;
        fs.copyFileSync(perfMap, path.join(dir, `${name}.perf-${pid}.map`));
        fs.rmSync(perfMap);
      }
    }
    return { name, instructionsPerRequest: Math.round(countedInstructions(name) / requests), failed, gc };
  } finally {
    await stop(gateway, 60_000);
  }
}

try {
  const { upstreamPort, sinkPort } = await startUpstreamAndSink(dir);
  const results = [];
  // Single-process variants two at a time; a cluster (3 processes) alone.
  const groups = [];
  for (const name of names) {
    const last = groups.at(-1);
    const cluster = (variant) => Boolean(VARIANTS[variant]?.GATEWAY_WORKERS);
    if (!cluster(name) && last && last.length === 1 && !cluster(last[0])) last.push(name);
    else groups.push([name]);
  }
  for (const group of groups) results.push(...(await Promise.all(group.map((name) => measure(name, upstreamPort, sinkPort)))));
  const base = results.find((result) => result.name === 'off');
  const lines = ['| variant | instructions per request | vs off | failed | GCs in the window (major / minor) |', '|---|---:|---:|---:|---:|'];
  for (const result of results) {
    const ratio = base ? `${((result.instructionsPerRequest / base.instructionsPerRequest - 1) * 100).toFixed(1)}%` : '';
    lines.push(`| ${result.name} | ${result.instructionsPerRequest.toLocaleString('en-US')} | ${ratio} | ${result.failed} | ${result.gc.major} / ${result.gc.minor} |`);
  }
  const traced = results.find((result) => result.name === 'traced');
  const withMetrics = results.find((result) => result.name === 'traced-metrics');
  if (traced && withMetrics) lines.push('', `Metrics cost (issue 11, <= 5%): ${((withMetrics.instructionsPerRequest / traced.instructionsPerRequest - 1) * 100).toFixed(1)}% instructions per request over traced without metrics.`);
  const twoWorkers = results.find((result) => result.name === 'two-workers');
  const twoOff = results.find((result) => result.name === 'two-workers-off');
  if (base && twoOff) lines.push('', `2 workers without telemetry: ${(twoOff.instructionsPerRequest / base.instructionsPerRequest).toFixed(3)}x the instructions per request of 1 process.`);
  if (withMetrics && twoWorkers) lines.push('', `2 workers (issue 13, <= 1.1x): ${(twoWorkers.instructionsPerRequest / withMetrics.instructionsPerRequest).toFixed(3)}x the instructions per request of 1 process (primary and workers counted).`);
  // Issue 12's CPU lines and issue 14's cache line, in instructions: the traced gateway against the references
  // (for the peers, their instructions over the gateway's: the throughput one core gives each, as a ratio).
  const full = withMetrics ?? traced;
  const byName = (name) => results.find((result) => result.name === name)?.instructionsPerRequest;
  const floor = byName('floor');
  if (full && floor) lines.push('', `${full.name} vs floor (issue 12, <= 3x): ${(full.instructionsPerRequest / floor).toFixed(2)}x`);
  for (const [peerName, limit] of [['fastify', '>= 1.2x'], ['express', '>= 2x']]) {
    if (full && byName(peerName)) lines.push('', `${full.name} vs ${peerName}, throughput per core (issue 12, ${limit}): ${(byName(peerName) / full.instructionsPerRequest).toFixed(2)}x`);
  }
  if (floor && byName('cache-hit')) lines.push('', `cache-hit vs floor (issue 14, <= 1.5x): ${(byName('cache-hit') / floor).toFixed(2)}x`);
  if (floor && byName('cache-hit-off')) lines.push('', `cache-hit-off (no telemetry) vs floor: ${(byName('cache-hit-off') / floor).toFixed(2)}x`);
  if (flags.functions) lines.push('', ...results.map((result) => `${result.name} by function: ${writeFunctionsReport(result.name)}`));
  process.stdout.write(`${lines.join('\n')}\n`);
  fs.writeFileSync(path.join(dir, 'results.json'), JSON.stringify(results, null, 2));
} finally {
  await stopAll();
}
