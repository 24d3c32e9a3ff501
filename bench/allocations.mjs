// Bytes the gateway allocates per request under the bench's load, by function and by area: V8's sampling heap
// profiler (bench/allocation-sampler.cjs, preloaded) counting every sampled allocation, also those the garbage
// collector has freed since. What a request allocates sets how often V8 scavenges; bench/paired.mjs --gc shows
// what scavenging costs. Each variant: started, warmed up, then sampled over one wrk run of --seconds.
//   node bench/allocations.mjs [--variants off,traced-metrics] [--seconds 10] [--interval 4096] [--top 30]
// Writes <out>/allocations/<variant>.{heapprofile,md} (open the .heapprofile in Chrome DevTools' Memory tab).
// Needs `npm run build` and Debian's wrk.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { areaOf } from './cpu-profile-summary.mjs';
import { freePort, stop, stopAll, waitUntilServing } from './processes.mjs';
import { BENCH_DIR, benchCredentials, freshDir, GATEWAY_VARIANTS, ROOT, startGateway, startUpstreamAndSink } from './servers.mjs';
import { runWrk, warmUp, WARMUP_SECONDS, wrkVersion } from './wrk.mjs';

/** Where a profile node's allocations are counted: its function, and the area (package, Node, dist/ folder) it lives in. */
function frameOf({ functionName, url, lineNumber }) {
  const area = areaOf(url, functionName || '(anonymous)');
  return { area, name: `${functionName || '(anonymous)'} ${url ? `${path.basename(url)}:${lineNumber + 1}` : ''}`.trim() };
}

/**
 * Bytes per request of a sampling heap profile: self by function and by area, and inclusive by function (each
 * function counted once per stack, however often it recurs in it).
 */
export function summariseAllocations(profile, requests) {
  const self = new Map();
  const areas = new Map();
  const inclusive = new Map();
  let total = 0;
  const add = (map, key, bytes) => map.set(key, (map.get(key) ?? 0) + bytes);
  const walk = (node, stack) => {
    const frame = frameOf(node.callFrame);
    const names = stack.includes(frame.name) ? stack : [...stack, frame.name];
    if (node.selfSize > 0) {
      total += node.selfSize;
      add(self, frame.name, node.selfSize);
      add(areas, frame.area, node.selfSize);
      for (const name of names) add(inclusive, name, node.selfSize);
    }
    for (const child of node.children) walk(child, names);
  };
  walk(profile.head, []);
  const perRequest = (map) => [...map].map(([key, bytes]) => [key, bytes / requests]).sort((a, b) => b[1] - a[1]);
  return { bytesPerRequest: total / requests, self: perRequest(self), areas: perRequest(areas), inclusive: perRequest(inclusive) };
}

function markdown(summary, top) {
  const table = (title, rows) => [`### ${title}`, '', '| bytes/request | where |', '|---:|---|', ...rows.slice(0, top).map(([key, bytes]) => `| ${bytes.toFixed(0)} | ${key.replaceAll('|', '\\|')} |`), ''].join('\n');
  // The root and the program's top frames include everything: leave out what holds more than 95% of the total.
  const inclusive = summary.inclusive.filter(([, bytes]) => bytes < summary.bytesPerRequest * 0.95);
  return [table('Self, by area', summary.areas), table('Self, by function', summary.self), table('Inclusive, by function', inclusive)].join('\n');
}

// Run as a script, not imported (test/unit/allocations-summary.test.ts imports the summary).
if (import.meta.main) {
  const { values: flags } = parseArgs({
    options: {
      variants: { type: 'string', default: 'off,traced-metrics' },
      seconds: { type: 'string', default: '10' },
      interval: { type: 'string', default: '4096' },
      top: { type: 'string', default: '30' },
      connections: { type: 'string', default: '50' },
      out: { type: 'string', default: path.join(BENCH_DIR, 'out') },
    },
  });
  const names = flags.variants.split(',');
  for (const name of names) if (!(name in GATEWAY_VARIANTS)) throw new Error(`unknown variant ${name}; known: ${Object.keys(GATEWAY_VARIANTS).join(', ')}`);
  if (!fs.existsSync(path.join(ROOT, 'dist/src/main.js'))) throw new Error('dist/ is missing: run `npm run build` first');
  if (!wrkVersion()) throw new Error('wrk is not installed: `apt-get install -y wrk`');
  const connections = Number(flags.connections);
  const dir = freshDir(flags.out, 'allocations');
  const { secret, headers } = await benchCredentials();
  try {
    const { upstreamPort, sinkPort } = await startUpstreamAndSink(dir);
    for (const name of names) {
      const variant = GATEWAY_VARIANTS[name];
      const port = await freePort();
      const file = path.join(dir, `${name}.heapprofile`);
      const gateway = startGateway({
        name,
        port,
        upstreamPort,
        secret,
        logs: dir,
        tracing: variant.tracing ? { sinkPort, exportLogs: false } : false,
        metrics: variant.metrics ? { port: await freePort() } : undefined,
        nodeArgs: ['--require', path.join(BENCH_DIR, 'allocation-sampler.cjs')],
        extraEnv: { ...variant.env, ALLOCATION_PROFILE: file, ALLOCATION_SAMPLING_INTERVAL: flags.interval },
      });
      const url = `http://127.0.0.1:${port}/api/users/42`;
      await waitUntilServing(url, { headers, child: gateway, timeoutMs: 30_000 });
      await warmUp({ url, connections, seconds: WARMUP_SECONDS, headers });
      process.kill(gateway.pid, 'SIGUSR2');
      const result = await runWrk({ url, connections, seconds: Number(flags.seconds), headers });
      process.kill(gateway.pid, 'SIGUSR2');
      for (let waited = 0; !fs.existsSync(file); waited += 100) {
        if (waited > 30_000) throw new Error(`${name} wrote no profile (see ${dir}/${name}.err.log)`);
        await sleep(100);
      }
      await stop(gateway, 15_000);
      const summary = summariseAllocations(JSON.parse(fs.readFileSync(file, 'utf8')), result.requests);
      const text = `## ${name}: ${summary.bytesPerRequest.toFixed(0)} bytes allocated per request (${result.requests} requests, ${Math.round(result.rps)} req/s, sampled every ${flags.interval} bytes)\n\n${markdown(summary, Number(flags.top))}`;
      fs.writeFileSync(path.join(dir, `${name}.md`), text);
      process.stdout.write(`${text}\n`);
    }
  } finally {
    await stopAll();
  }
}
