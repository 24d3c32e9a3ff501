// The garbage collector's share under the bench's load, for several caps of V8's young generation
// (`--max-semi-space-size`), one gateway per cap, measured in turn: scavenges and full collections per request
// (V8's `--trace-gc` lines), their main-thread pauses, CPU per request and peak RSS. Interleaved rounds, so the
// machine's drift falls on every cap alike. Counts and pauses move far less with a busy machine than CPU time does.
//   node bench/young-generation.mjs [--sizes 8,16,32] [--seconds 10] [--rounds 3] [--untraced] [--connections 50]
// Needs `npm run build` and Debian's wrk.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { collectionsIn } from './callgrind-functions.mjs';
import { cpuTicks, freePort, memoryMiB, stopAll, waitUntilServing } from './processes.mjs';
import { BENCH_DIR, benchCredentials, freshDir, startGateway, startUpstreamAndSink } from './servers.mjs';
import { runWrk, warmUp, WARMUP_SECONDS } from './wrk.mjs';

const { values: flags } = parseArgs({
  options: {
    sizes: { type: 'string', default: '8,16,32' },
    seconds: { type: 'string', default: '10' },
    rounds: { type: 'string', default: '3' },
    connections: { type: 'string', default: '50' },
    untraced: { type: 'boolean', default: false },
    out: { type: 'string', default: path.join(BENCH_DIR, 'out') },
  },
});
const sizes = flags.sizes.split(',').map(Number);
if (!sizes.every((size) => Number.isInteger(size) && size > 0)) throw new Error('--sizes is a list of whole MiB, e.g. 8,16,32');
const seconds = Number(flags.seconds);
const connections = Number(flags.connections);
const logs = freshDir(flags.out, 'young-generation');
const { secret, headers } = await benchCredentials();
const { upstreamPort, sinkPort } = await startUpstreamAndSink(logs);
const gateways = [];
for (const size of sizes) {
  const name = `semi-${size}`;
  const port = await freePort();
  // --trace-gc writes to stdout, beside the access log (<name>-access.log): its lines are told apart by their shape.
  const child = startGateway({ name, port, upstreamPort, secret, tracing: flags.untraced ? false : { sinkPort }, logs, nodeArgs: [`--max-semi-space-size=${size}`, '--trace-gc'] });
  const url = `http://127.0.0.1:${port}/api/users/42`;
  await waitUntilServing(url, { headers, child });
  gateways.push({ size, name, url, child, stdout: path.join(logs, `${name}-access.log`), runs: [] });
}

/** Collections so far in a --trace-gc log: young (scavenges, minor mark-sweeps), full, and their pauses in ms. */
function collections(file) {
  const { major, minor, majorPauseMs, minorPauseMs } = collectionsIn(fs.readFileSync(file, 'utf8'));
  return { young: minor, full: major, pauseMs: majorPauseMs + minorPauseMs };
}

for (const gateway of gateways) await warmUp({ url: gateway.url, connections, seconds: WARMUP_SECONDS, headers });
for (let round = 0; round < Number(flags.rounds); round++) {
  for (const gateway of round % 2 === 0 ? gateways : [...gateways].reverse()) {
    const cpuBefore = cpuTicks(gateway.child.pid).own;
    const before = collections(gateway.stdout);
    const load = await runWrk({ url: gateway.url, connections, seconds, headers });
    const cpuAfter = cpuTicks(gateway.child.pid).own;
    const after = collections(gateway.stdout);
    const requests = load.requests;
    const run = {
      rps: Math.round(load.rps),
      cpuUsPerRequest: Math.round(((cpuAfter - cpuBefore) * 1e6) / 100 / requests * 10) / 10,
      scavengesPer1000: Math.round(((after.young - before.young) * 1e6) / requests) / 1000,
      fullCollections: after.full - before.full,
      pauseUsPerRequest: Math.round(((after.pauseMs - before.pauseMs) * 1e4) / requests) / 10,
      peakRssMiB: memoryMiB(gateway.child.pid).peak,
    };
    gateway.runs.push(run);
    console.log(`round ${round + 1} ${gateway.name} ${JSON.stringify(run)}`);
  }
}
await stopAll();

console.log(`\n| --max-semi-space-size | scavenges per 1,000 requests | full collections per ${seconds} s | GC pause µs per request | CPU µs per request | peak RSS MiB |`);
console.log('|---|---|---|---|---|---|');
const list = (runs, key) => runs.map((run) => run[key]).join(', ');
for (const { size, runs } of gateways) {
  console.log(`| ${size} | ${list(runs, 'scavengesPer1000')} | ${list(runs, 'fullCollections')} | ${list(runs, 'pauseUsPerRequest')} | ${list(runs, 'cpuUsPerRequest')} | ${list(runs, 'peakRssMiB')} |`);
}
