// CPU profile of Koa Gateway under the benchmark's load, to see where the time per request goes:
// starts the upstream, the OTLP sink and the gateway with `node --cpu-prof`, warms it up, drives it with
// wrk, stops it (SIGTERM: a clean exit writes the profile) and summarises only the samples taken under load.
//   node bench/profile.mjs [--tracing on|off|both] [--metrics on|off] [--config gateway.bench.json] [--seconds 15] [--connections 50] [--tokens 1] [--out bench/out]
// --tokens N sends N distinct tokens round robin (as `npm run bench -- --tokens N`): over 20,000, every request's token
// is one the gateway has not verified yet (its verified-token cache holds 10,000), so the profile shows a first-seen token's cost.
// --config names the gateway's config in bench/ (gateway.cache.bench.json: every answer after the first a cache hit).
// Writes <out>/profile/gateway-tracing-<on|off>.{cpuprofile,md} (open the .cpuprofile in Chrome DevTools).
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { summarise, summaryMarkdown } from './cpu-profile-summary.mjs';
import { cpuTicks, freePort, stop, stopAll, waitUntilServing } from './processes.mjs';
import { BENCH_DIR, benchCredentials, freshDir, ROOT, startGateway, startUpstreamAndSink, tokensFile } from './servers.mjs';
import { runWrk, warmUp, WARMUP_SECONDS, wrkVersion } from './wrk.mjs';

const { values: flags } = parseArgs({
  options: {
    tracing: { type: 'string', default: 'both' },
    // With tracing on: record RED metrics, serve them on a scrape port and export them over OTLP (as `npm run bench`'s full case).
    metrics: { type: 'string', default: 'off' },
    seconds: { type: 'string', default: '15' },
    connections: { type: 'string', default: '50' },
    'warmup-seconds': { type: 'string', default: String(WARMUP_SECONDS) },
    config: { type: 'string', default: 'gateway.bench.json' },
    tokens: { type: 'string', default: '1' },
    out: { type: 'string', default: path.join(BENCH_DIR, 'out') },
  },
});
const variants = flags.tracing === 'both' ? ['on', 'off'] : [flags.tracing];
if (!variants.every((v) => v === 'on' || v === 'off')) throw new Error('--tracing is on, off or both');
const seconds = Number(flags.seconds);
const connections = Number(flags.connections);
const tokenCount = Number(flags.tokens);
if (!Number.isInteger(tokenCount) || tokenCount < 1) throw new Error('--tokens is a positive integer');
if (!fs.existsSync(path.join(ROOT, 'dist/src/main.js'))) throw new Error('dist/ is missing: run `npm run build` first');
if (!wrkVersion()) throw new Error('wrk is not installed: `apt-get install -y wrk`');

const dir = freshDir(flags.out, 'profile');
const { secret, headers } = await benchCredentials();
const distinctTokens = await tokensFile(dir, secret, tokenCount);

try {
  const { upstreamPort, sinkPort } = await startUpstreamAndSink(dir);

  for (const variant of variants) {
    const name = `gateway-tracing-${variant}`;
    const port = await freePort();
    const gateway = startGateway({
      name,
      port,
      upstreamPort,
      secret,
      logs: dir,
      config: flags.config,
      tracing: variant === 'on' ? { sinkPort, exportLogs: false } : false,
      metrics: variant === 'on' && flags.metrics === 'on' ? { port: await freePort() } : undefined,
      nodeArgs: ['--cpu-prof', '--cpu-prof-dir', dir, '--cpu-prof-name', `${name}.cpuprofile`],
    });
    const url = `http://127.0.0.1:${port}/api/users/42`;
    await waitUntilServing(url, { headers, child: gateway });
    // One cursor per variant: warm-up and measured run go on through the file, so the measured run's tokens are not the warm-up's.
    const tokens = distinctTokens?.cursor();
    await warmUp({ url, connections, seconds: Number(flags['warmup-seconds']), headers, tokens });
    const fromUs = Number(process.hrtime.bigint() / 1000n);
    const before = cpuTicks(gateway.pid).own;
    const result = await runWrk({ url, connections, seconds, headers, tokens });
    const cpuUsPerRequest = Math.round((((cpuTicks(gateway.pid).own - before) * 10_000) / result.requests) * 10) / 10;
    const toUs = Number(process.hrtime.bigint() / 1000n);
    await stop(gateway, 15_000);
    const file = path.join(dir, `${name}.cpuprofile`);
    if (!fs.existsSync(file)) throw new Error(`${name} wrote no profile (see ${dir}/${name}.err.log)`);
    const summary = summarise(JSON.parse(fs.readFileSync(file, 'utf8')), { fromUs, toUs });
    const tokensSaid = distinctTokens ? `, ${tokenCount} distinct tokens round robin` : '';
    const heading = `## Koa Gateway, tracing ${variant}: ${Math.round(result.rps)} req/s at ${connections} connections for ${seconds} s${tokensSaid}, ${cpuUsPerRequest} µs CPU per request (all threads; clock ticks assume USER_HZ 100)\n\n`;
    const markdown = heading + summaryMarkdown(summary);
    fs.writeFileSync(path.join(dir, `${name}.md`), markdown);
    process.stdout.write(`${markdown}\n`);
  }
} finally {
  await stopAll();
}
