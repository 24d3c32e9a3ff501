// CPU per request of gateway variants side by side at full speed: every variant started once, then loaded in
// turn, slice by slice (wrk, 50 connections; the order reversed every other slice), so the machine's drift falls
// on every variant alike. Per slice: CPU µs per request of the whole process, split into its main thread and
// its other threads (V8's helpers: parallel scavenges, concurrent marking, concurrent compilation; libuv's
// pool); each variant's line gives the medians and each slice, and every variant after the first its per-slice
// ratio to the first and its p50 latency against the first's, slice by slice (--connections 1: the p50 line).
// With --gc, V8's --trace-gc lines count scavenges and full collections per 1,000 requests and their main-thread
// pauses per request. On a shared 2-core VM single slices of one build move by ±30%: take the median ratio of many
// slices, and more than one run for a question of a few percent.
//   node bench/paired.mjs [--variants off,traced-metrics] [--slices 8] [--seconds 4] [--warmup-seconds 8] [--gc]
//                         [--node-args 'variant=--flag --flag'] [--env 'variant=KEY=value,KEY=value'] [--root 'variant=DIR']
//                         [--no-pin] [--tokens N]
// --tokens N sends N distinct tokens round robin, each variant going on through the file where its last run stopped
// (as `npm run bench -- --tokens N`): over 20,000, no verification is a hit of the gateway's verified-token cache.
// The gateways run on the last CPU, wrk, the upstream and the sink on the others, as in bench/run.mjs (--no-pin: anywhere).
// --node-args and --env (repeatable) add to one variant; a variant named `base+anything` is `base` with them,
// e.g. --variants traced,traced+batch --env 'traced+batch=OTEL_BSP_MAX_EXPORT_BATCH_SIZE=128'. --root runs a
// variant from another checkout, built and with its node_modules (a git worktree of an earlier commit): one build
// against another, e.g. --variants off,off+before --root 'off+before=/tmp/before'.
// --idle S then leaves every variant idle for S seconds after its slices and loads each again, in turn, for
// --after-slices runs of 1 s: what a gateway pays when traffic comes back after a quiet spell (V8's memory reducer
// collects an idle heap and deoptimises the hot path with it: bench/RESULTS.md, thirty-second session), with each
// process's RSS before and after the gap (and with --gc the full collections in it).
// `floor` and `floor-traced` are the bare Node proxy and tracing's floor (bench/node-floor.mjs), started as
// `npm run bench` starts them (plus --node-args): the floor's tracing cost measured in the gateways' slices. A
// floor is compared with the first floor variant, a gateway with the first gateway variant.
// Needs `npm run build` and Debian's wrk.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { collectionsIn } from './callgrind-functions.mjs';
import { cpuPlacement, freePort, memoryMiB, pinTo, stopAll, threadCpuTicks, waitUntilServing } from './processes.mjs';
import { median } from './report.mjs';
import { BENCH_DIR, benchCredentials, freshDir, GATEWAY_VARIANTS as VARIANTS, startGateway, startNodeFloor, startUpstreamAndSink, tokensFile } from './servers.mjs';
import { runWrk, warmUp, WARMUP_SECONDS } from './wrk.mjs';

const { values: flags } = parseArgs({
  allowNegative: true,
  options: {
    variants: { type: 'string', default: 'off,traced-metrics' },
    slices: { type: 'string', default: '8' },
    seconds: { type: 'string', default: '4' },
    'warmup-seconds': { type: 'string', default: String(WARMUP_SECONDS) },
    connections: { type: 'string', default: '50' },
    gc: { type: 'boolean', default: false },
    pin: { type: 'boolean', default: true },
    'node-args': { type: 'string', multiple: true, default: [] },
    env: { type: 'string', multiple: true, default: [] },
    root: { type: 'string', multiple: true, default: [] },
    idle: { type: 'string', default: '0' },
    'after-slices': { type: 'string', default: '6' },
    tokens: { type: 'string', default: '1' },
    out: { type: 'string', default: path.join(BENCH_DIR, 'out') },
  },
});

/** `name=rest` options by variant name. */
function byVariant(values) {
  const options = new Map();
  for (const value of values) {
    const equals = value.indexOf('=');
    if (equals < 1) throw new Error(`expected variant=..., got ${value}`);
    options.set(value.slice(0, equals), [...(options.get(value.slice(0, equals)) ?? []), value.slice(equals + 1)]);
  }
  return options;
}
const extraNodeArgs = byVariant(flags['node-args']);
const extraEnv = byVariant(flags.env);
const roots = byVariant(flags.root);

/**
 * The bare Node proxy and its traced twin (bench/node-floor.mjs), loaded in the same slices as the gateways: what
 * the floor and tracing's floor cost at the same minutes of the machine (--env and --root are the gateway's).
 */
const FLOORS = { floor: { traced: false }, 'floor-traced': { traced: true } };

const variants = flags.variants.split(',').map((name) => {
  const baseName = name.split('+')[0];
  const base = VARIANTS[baseName] ?? FLOORS[baseName];
  if (base === undefined) throw new Error(`unknown variant ${name}; known: ${[...Object.keys(VARIANTS), ...Object.keys(FLOORS)].join(', ')} (and base+anything)`);
  const floor = baseName in FLOORS ? base : undefined;
  if (floor !== undefined && (extraEnv.has(name) || roots.has(name))) throw new Error(`${name}: --env and --root are for gateway variants`);
  const env = { ...base.env };
  for (const list of extraEnv.get(name) ?? []) {
    for (const pair of list.split(',')) {
      const equals = pair.indexOf('=');
      if (equals < 1) throw new Error(`--env ${name}=${list}: expected KEY=value pairs`);
      env[pair.slice(0, equals)] = pair.slice(equals + 1);
    }
  }
  const nodeArgs = (extraNodeArgs.get(name) ?? []).flatMap((args) => args.split(' ').filter(Boolean));
  const root = roots.get(name)?.at(-1);
  if (root !== undefined && !fs.existsSync(path.join(root, 'dist/src/main.js'))) throw new Error(`--root ${name}=${root}: no dist/src/main.js there (build it first)`);
  return { name, floor, tracing: base.tracing, metrics: base.metrics ?? false, env, root, nodeArgs: flags.gc ? ['--trace-gc', ...nodeArgs] : nodeArgs };
});
if (new Set(variants.map((variant) => variant.name)).size !== variants.length) throw new Error('a variant is named twice');
if (!fs.existsSync(path.join(BENCH_DIR, '..', 'dist/src/main.js'))) throw new Error('dist/ is missing: run `npm run build` first');
const slices = Number(flags.slices);
const seconds = Number(flags.seconds);
const warmupSeconds = Number(flags['warmup-seconds']);
const connections = Number(flags.connections);
const idleSeconds = Number(flags.idle);
const afterSlices = Number(flags['after-slices']);
if (!(idleSeconds >= 0) || !(Number.isInteger(afterSlices) && afterSlices > 0)) throw new Error('--idle is a number of seconds (0: none), --after-slices a count above 0');
const logs = freshDir(flags.out, 'paired');

/** The collections so far in a gateway's --trace-gc lines, which share its stdout with the access log (a floor's: its own). */
const collectionsOf = (gateway) => collectionsIn(fs.readFileSync(path.join(logs, gateway.floor ? `${gateway.name}.out.log` : `${gateway.name}-access.log`), 'utf8'));

// As bench/run.mjs places them: the gateways on a CPU of their own, this runner (so wrk, the upstream and the sink) on the others.
const placement = cpuPlacement(flags.pin);
if (placement.pinned) pinTo(process.pid, placement.others);

const { secret, headers } = await benchCredentials();
const tokenCount = Number(flags.tokens);
if (!Number.isInteger(tokenCount) || tokenCount < 1) throw new Error('--tokens is a positive integer');
const distinctTokens = await tokensFile(logs, secret, tokenCount);
try {
  const { upstreamPort, sinkPort } = await startUpstreamAndSink(logs);
  const gateways = [];
  for (const variant of variants) {
    const port = await freePort();
    let child;
    if (variant.floor !== undefined) {
      const tracing = variant.floor.traced ? { sinkPort } : undefined;
      child = startNodeFloor({ name: variant.name, port, upstreamPort, logs, tracing, nodeArgs: variant.nodeArgs });
    } else {
      const metrics = variant.metrics ? { port: await freePort() } : undefined;
      const tracing = variant.tracing ? { sinkPort, exportLogs: false } : false;
      child = startGateway({ name: variant.name, port, upstreamPort, secret, tracing, metrics, logs, nodeArgs: variant.nodeArgs, extraEnv: variant.env, root: variant.root });
    }
    // Each variant's own cursor through the tokens: none is sent a token another variant's run made it verify.
    const tokens = distinctTokens?.cursor();
    gateways.push({ ...variant, url: `http://127.0.0.1:${port}/api/users/42`, child, slices: [], requests: 0, tokens });
  }
  for (const gateway of gateways) await waitUntilServing(gateway.url, { headers, child: gateway.child, timeoutMs: 30_000 });
  if (placement.pinned) for (const gateway of gateways) pinTo(gateway.child.pid, placement.servers);
  // Warm-up, unmeasured: V8 compiles the hot paths in the first seconds of load, and again after the first
  // connections closed (bench/wrk.mjs warmUp).
  for (const gateway of gateways) await warmUp({ url: gateway.url, connections, seconds: warmupSeconds, headers, tokens: gateway.tokens });
  // What the warm-up collected, left out of the counts.
  const warmedUp = new Map(flags.gc ? gateways.map((gateway) => [gateway, collectionsOf(gateway)]) : []);
  for (let slice = 0; slice < slices; slice++) {
    for (const gateway of slice % 2 ? [...gateways].reverse() : gateways) {
      const measured = await loadSlice(gateway, seconds);
      gateway.requests += measured.requests;
      gateway.loadEndedAt = performance.now();
      gateway.slices.push(measured);
    }
  }
  // Gateways are compared with the first gateway variant, floors with the first floor (floor-traced / floor: tracing's floor).
  const firstOfKind = (gateway) => gateways.find((other) => (other.floor === undefined) === (gateway.floor === undefined));
  for (const gateway of gateways) {
    const first = firstOfKind(gateway);
    const of = (key, digits = 1) => median(gateway.slices.map((slice) => slice[key])).toFixed(digits);
    const errors = gateway.slices.reduce((sum, slice) => sum + slice.errors, 0);
    let line = `${gateway.name}: CPU µs/request ${of('total')} (main thread ${of('main')}, other threads ${of('other')}), ${median(gateway.slices.map((slice) => slice.rps)).toFixed(0)} req/s, p50 ${of('p50', 3)} ms, ${errors} errors; slices ${gateway.slices.map((slice) => slice.total.toFixed(0)).join(' ')}`;
    if (gateway !== first) {
      const ratios = gateway.slices.map((slice, index) => slice.total / first.slices[index].total);
      line += `\n  / ${first.name} per slice ${ratios.map((ratio) => ratio.toFixed(2)).join(' ')}: median ${median(ratios).toFixed(3)}`;
      // Latency at few connections (--connections 1) is the p50 line's question: compared slice by slice too.
      const p50Deltas = gateway.slices.map((slice, index) => slice.p50 - first.slices[index].p50);
      line += `\n  p50 - ${first.name}'s per slice ${p50Deltas.map((delta) => delta.toFixed(3)).join(' ')}: median ${median(p50Deltas).toFixed(3)} ms`;
    }
    if (flags.gc) {
      // Over the measured slices (the warm-up left out), per request they served.
      const now = collectionsOf(gateway);
      const before = warmedUp.get(gateway);
      const perThousand = (count) => ((count * 1000) / gateway.requests).toFixed(3);
      const pauseUs = (ms) => ((ms * 1000) / gateway.requests).toFixed(2);
      line += `\n  GC: ${perThousand(now.minor - before.minor)} scavenges and ${perThousand(now.major - before.major)} full collections per 1,000 requests; main-thread pause µs/request: scavenges ${pauseUs(now.minorPauseMs - before.minorPauseMs)}, full ${pauseUs(now.majorPauseMs - before.majorPauseMs)}`;
    }
    console.log(line);
  }
  if (idleSeconds > 0) await afterIdle(gateways);
  console.log(`logs in ${logs}`);
} finally {
  await stopAll();
}

/** One wrk run of `seconds` against a gateway: its CPU µs per request (whole process, main thread, other threads). */
async function loadSlice(gateway, seconds) {
  const before = threadCpuTicks(gateway.child.pid);
  const result = await runWrk({ url: gateway.url, connections, seconds, headers, tokens: gateway.tokens });
  const after = threadCpuTicks(gateway.child.pid);
  // Clock ticks are 1/100 s.
  const perRequest = (ticks) => (ticks * 10_000) / result.requests;
  return {
    total: perRequest(after.main - before.main + after.other - before.other),
    main: perRequest(after.main - before.main),
    other: perRequest(after.other - before.other),
    rps: result.rps,
    p50: result.latencyMs.p50,
    errors: result.errors,
    requests: result.requests,
  };
}

/**
 * Every variant idle for --idle seconds, then loaded again in turn: its 1 s slices (CPU µs per request), against
 * the median of its slices before. The variants loaded later wait longer; each line says how long.
 */
async function afterIdle(gateways) {
  for (const gateway of gateways) {
    gateway.loadedRss = memoryMiB(gateway.child.pid).current;
    if (flags.gc) gateway.collectionsBeforeIdle = collectionsOf(gateway);
  }
  await new Promise((resolve) => setTimeout(resolve, idleSeconds * 1000));
  for (const gateway of gateways) {
    const idleForS = (performance.now() - gateway.loadEndedAt) / 1000;
    const idleRss = memoryMiB(gateway.child.pid).current;
    const fullWhileIdle = flags.gc ? collectionsOf(gateway).major - gateway.collectionsBeforeIdle.major : undefined;
    const after = [];
    for (let slice = 0; slice < afterSlices; slice++) after.push((await loadSlice(gateway, 1)).total);
    const steady = median(gateway.slices.map((slice) => slice.total));
    let line = `${gateway.name} after ${idleForS.toFixed(0)} s idle: CPU µs/request ${after.map((us) => us.toFixed(0)).join(' ')} (${(after[0] / steady).toFixed(2)}x its slices' median in the first second); RSS ${gateway.loadedRss} MiB loaded, ${idleRss} idle`;
    if (fullWhileIdle !== undefined) line += `; ${fullWhileIdle} full collections while idle`;
    console.log(line);
  }
}
