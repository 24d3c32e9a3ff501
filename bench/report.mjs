// Turns the benchmark's runs into medians, per-round ratios and the budget verdicts (issue 12, plus issue
// 11's metrics line), and renders them as markdown. Ratios are computed within each round (runs minutes
// apart, never across rounds), then the median of the rounds is taken; with the order reversed every other
// round, linear drift of the machine cancels out.

/** What every case is compared with, when that case ran. */
const BASELINES = ['upstream', 'nginx', 'express', 'fastify', 'node-floor'];

/**
 * Issue 12's budget for the full pipeline with tracing at 100% (OTLP export) and metrics on, re-based on the
 * bare Node proxy floor and a fastify gateway with the same features; plus issue 11's metrics-cost line.
 */
export const BUDGET = {
  cpuPerRequestVsFloorMax: 3,
  tracingCpuCostMax: 0.2,
  throughputVsFastifyMin: 1.2,
  throughputVsExpressMin: 2,
  addedP50VsFloorMsMax: 0.15,
  peakRssOverFloorMiBMax: 48,
  spansLostMax: 0,
  logRecordsLostMax: 0,
  metricsCpuCostMax: 0.05,
  cacheHitCpuVsFloorMax: 1.5,
  twoWorkersCpuVsOneMax: 1.1,
};

/** The median of the values that are numbers, or null when there are none. */
export const median = (values) => {
  const sorted = values.filter((v) => v !== null && v !== undefined && !Number.isNaN(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return null;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};
const mean = (values) => (values.length === 0 || values.some((v) => v === null) ? null : values.reduce((a, b) => a + b, 0) / values.length);
const round = (value, digits) => (value === null || value === undefined ? null : Math.round(value * 10 ** digits) / 10 ** digits);

export function evaluate(results) {
  const { runs, cases } = results;
  const rounds = [...new Set(runs.map((r) => r.round))];
  const find = (id, shape, r) => runs.find((run) => run.case === id && run.shape === shape && run.round === r);

  const summary = {};
  for (const id of Object.keys(cases)) {
    summary[id] = {};
    for (const shape of ['throughput', 'latency']) {
      const list = runs.filter((run) => run.case === id && run.shape === shape);
      const processes = Object.keys(list[0]?.cpuUsPerRequest ?? {});
      summary[id][shape] = {
        rps: round(median(list.map((r) => r.rps)), 0),
        p50Ms: round(median(list.map((r) => r.latencyMs.p50)), 3),
        p99Ms: round(median(list.map((r) => r.latencyMs.p99)), 3),
        errors: list.reduce((sum, r) => sum + r.errors, 0),
        requests: list.reduce((sum, r) => sum + r.requests, 0),
        otherCpuPercent: round(median(list.map((r) => r.otherCpuPercent)), 0),
        cpuUsPerRequest: Object.fromEntries(processes.map((p) => [p, round(median(list.map((r) => r.cpuUsPerRequest[p])), 1)])),
      };
    }
  }

  // ratios[case][baseline] = { throughput, cpuPerRequest, addedP50Ms } each { mean, median, rounds: [...] }
  const ratios = {};
  for (const id of Object.keys(cases)) {
    ratios[id] = {};
    for (const base of [...BASELINES, 'gateway', 'gateway-untraced', 'gateway-metrics-off']) {
      if (!cases[base] || base === id) continue;
      const perRound = (fn) => rounds.map((r) => fn(r));
      const throughput = perRound((r) => find(id, 'throughput', r).rps / find(base, 'throughput', r).rps);
      const cpuPerRequest = perRound((r) => {
        const x = find(id, 'throughput', r);
        const b = find(base, 'throughput', r);
        const own = x.cpuUsPerRequest[cases[id].server];
        const theirs = b.cpuUsPerRequest[cases[base].server];
        return own === null || !theirs ? null : own / theirs;
      });
      const addedP50Ms = perRound((r) => find(id, 'latency', r).latencyMs.p50 - find(base, 'latency', r).latencyMs.p50);
      // Shown rounded, judged exact: a tracing cost of 20.4% rounded to 1.20x read "+20%" and passed a 20% limit.
      const pack = (values, digits) => ({ mean: round(mean(values), digits), median: round(median(values), digits), rounds: values.map((v) => round(v, digits)), exact: { median: median(values), rounds: values } });
      ratios[id][base] = { throughput: pack(throughput, 3), cpuPerRequest: pack(cpuPerRequest, 2), addedP50Ms: pack(addedP50Ms, 3) };
    }
  }

  // Every line is judged on the median of its per-round values; each round's value is kept beside it.
  const budget = [];
  // Requests that failed (wrk's connect, read, write, timeout and non-2xx/3xx counts) in a case's runs: they count as
  // throughput there, so a case answering quick errors looked fast and cheap.
  const failedIn = (id) => runs.filter((r) => r.case === id).reduce((sum, r) => sum + (r.errors ?? 0), 0);
  const line = (id, text, limit, values, unit, passes, skipped, pair = []) => {
    if (skipped) {
      budget.push({ id, line: text, limit, measured: null, rounds: [], unit, result: 'SKIP', note: skipped });
      return;
    }
    const failing = pair.filter((each) => failedIn(each) > 0);
    if (failing.length > 0) {
      budget.push({ id, line: text, limit, measured: values.median ?? null, rounds: values.rounds ?? [], unit, result: 'FAIL', note: `requests failed in ${failing.map((each) => `${each} (${failedIn(each)})`).join(', ')}` });
      return;
    }
    const measured = values.median;
    // The verdict on the unrounded values where there are any; the rounded ones are what the table shows.
    const judged = values.exact ?? values;
    const verdict = judged.median === null || judged.median === undefined ? 'FAIL' : passes(judged.median) ? 'PASS' : 'FAIL';
    const split = judged.rounds.length > 1 && judged.rounds.some((v) => v !== null && v !== undefined && passes(v) !== (verdict === 'PASS'));
    budget.push({ id, line: text, limit, measured, rounds: values.rounds, unit, result: verdict, ...(split ? { note: 'rounds disagree' } : {}) });
  };
  const gw = ratios.gateway;
  if (gw) {
    const notRun = (base) => (cases[base] ? undefined : `${base} case not run`);
    const percentOver = (v) => (v === null || v === undefined ? null : (v - 1) * 100);
    const asPercentOver = (r) =>
      r && { median: round(percentOver(r.exact.median), 1), rounds: r.exact.rounds.map((v) => round(percentOver(v), 1)), exact: { median: percentOver(r.exact.median), rounds: r.exact.rounds.map(percentOver) } };
    line('cpu-vs-floor', 'traced CPU per request <= 3x the bare Node floor', `<= ${BUDGET.cpuPerRequestVsFloorMax}x`, gw['node-floor']?.cpuPerRequest ?? {}, 'x', (v) => v <= BUDGET.cpuPerRequestVsFloorMax, notRun('node-floor'), ['gateway', 'node-floor']);
    line('tracing-cost', 'tracing (and metrics) cost <= 20% CPU per request vs telemetry off', `<= ${BUDGET.tracingCpuCostMax * 100}%`, asPercentOver(gw['gateway-untraced']?.cpuPerRequest) ?? {}, '%', (v) => v <= BUDGET.tracingCpuCostMax * 100, notRun('gateway-untraced'), ['gateway', 'gateway-untraced']);
    line('throughput-vs-fastify', 'traced throughput >= 1.2x the fastify gateway', `>= ${BUDGET.throughputVsFastifyMin}x`, gw.fastify?.throughput ?? {}, 'x', (v) => v >= BUDGET.throughputVsFastifyMin, notRun('fastify'), ['gateway', 'fastify']);
    line('throughput-vs-express', 'traced throughput >= 2x the Express tutorial gateway', `>= ${BUDGET.throughputVsExpressMin}x`, gw.express?.throughput ?? {}, 'x', (v) => v >= BUDGET.throughputVsExpressMin, notRun('express'), ['gateway', 'express']);
    line('added-p50', "added p50 at 1 connection <= the floor's + 0.15 ms", `<= +${BUDGET.addedP50VsFloorMsMax} ms`, gw['node-floor']?.addedP50Ms ?? {}, 'ms', (v) => v <= BUDGET.addedP50VsFloorMsMax, notRun('node-floor'), ['gateway', 'node-floor']);
    // Each round's servers are fresh processes: their peaks are compared round by round when both have them.
    const rss = results.memoryMiB;
    const rssRounds = rss.gateway?.rounds && rss['node-floor']?.rounds ? rss.gateway.rounds.map((peak, i) => round(peak - rss['node-floor'].rounds[i], 1)) : [];
    const rssOver = rssRounds.length > 0 ? round(median(rssRounds), 1) : rss.gateway && rss['node-floor'] ? round(rss.gateway.peak - rss['node-floor'].peak, 1) : null;
    line('peak-rss', "peak RSS under the bench load <= the floor's + 48 MiB", `<= +${BUDGET.peakRssOverFloorMiBMax} MiB`, { median: rssOver, rounds: rssRounds }, 'MiB', (v) => v <= BUDGET.peakRssOverFloorMiBMax, notRun('node-floor'));
    const loss = results.loss;
    // Only at the rate it names: a load that failed, or answered below 98% of its rate (sends skipped at its in-flight bound
    // and not made up), checked less than it says and passed all the same. A few skips within the rate are said.
    const shortLoad = loss && (loss.load.errors > 0 || loss.load.non2xx > 0 || loss.load.achievedRate < 0.98 * loss.targetRate);
    const lossLine = (id, text, limit, measured, unit) => {
      if (shortLoad) {
        budget.push({ id, line: text, limit: `${limit}`, measured, rounds: [], unit, result: 'FAIL', note: `the load was not the rate it names: ${loss.load.achievedRate} of ${loss.targetRate} req/s, ${loss.load.skipped} skipped, ${loss.load.errors + loss.load.non2xx} failed${loss.load.errors > 0 && loss.load.errorCodes ? ` (${Object.entries(loss.load.errorCodes).map(([code, count]) => `${code} ${count}`).join(', ')})` : ''}` });
        return;
      }
      line(id, text, `${limit}`, { median: loss ? measured : null, rounds: [] }, unit, (v) => v <= limit, loss ? undefined : 'loss check not run');
      if (loss?.load.skipped > 0) budget.at(-1).note = `${loss.load.skipped} sends skipped at ${loss.load.maxInFlight ?? 32} in flight; ${loss.load.achievedRate} of ${loss.targetRate} req/s answered`;
      if (loss?.load.retried > 0) budget.at(-1).note = `${budget.at(-1).note ?? ''}${budget.at(-1).note ? '; ' : ''}${loss.load.retried} sent again after the server closed their kept-alive connection as they were written`;
    };
    lossLine('spans-lost', 'spans lost at 50% of peak', BUDGET.spansLostMax, loss?.spansLost, 'spans');
    lossLine('logs-lost', 'log records lost at 50% of peak (OTLP log export)', BUDGET.logRecordsLostMax, loss?.logRecordsLost ?? null, 'records');
    // Issue 14: a response-cache hit (never reaching the upstream) costs at most 1.5x the floor's CPU per request.
    const hit = ratios['gateway-cache-hit']?.['node-floor']?.cpuPerRequest;
    line('cache-hit-vs-floor', "cache-hit CPU per request <= 1.5x the floor's (issue 14)", `<= ${BUDGET.cacheHitCpuVsFloorMax}x`, hit ?? {}, 'x', (v) => v <= BUDGET.cacheHitCpuVsFloorMax, hit ? undefined : notRun(cases['gateway-cache-hit'] ? 'node-floor' : 'gateway-cache-hit'), ['gateway-cache-hit', 'node-floor']);
    // Issue 13: 2 workers cost at most 10% more CPU per request than 1, and no request fails.
    const twoWorkers = ratios['gateway-2-workers']?.gateway?.cpuPerRequest;
    line('two-workers-cpu', 'CPU per request with 2 workers <= 1.1x 1 worker (issue 13)', `<= ${BUDGET.twoWorkersCpuVsOneMax}x`, twoWorkers ?? {}, 'x', (v) => v <= BUDGET.twoWorkersCpuVsOneMax, twoWorkers ? undefined : notRun('gateway-2-workers'));
    const twoWorkerErrors = cases['gateway-2-workers'] ? runs.filter((r) => r.case === 'gateway-2-workers').reduce((sum, r) => sum + r.errors, 0) : null;
    line('two-workers-errors', 'requests failed with 2 workers (issue 13)', '0', { median: twoWorkerErrors, rounds: [] }, 'requests', (v) => v === 0, notRun('gateway-2-workers'));
    // Issue 11: recording every request's RED metrics costs at most 5% CPU per request over metrics off.
    line('metrics-cost', 'metrics cost <= 5% CPU per request vs metrics off (issue 11)', `<= ${BUDGET.metricsCpuCostMax * 100}%`, asPercentOver(gw['gateway-metrics-off']?.cpuPerRequest) ?? {}, '%', (v) => v <= BUDGET.metricsCpuCostMax * 100, notRun('gateway-metrics-off'), ['gateway', 'gateway-metrics-off']);
  }
  return { summary, ratios, budget, tracingFloor: tracingFloor(cases, rounds, find) };
}

/**
 * What tracing costs the bare floor (node-floor-traced over node-floor) against what it costs the gateway (traced
 * with metrics over telemetry off), per round in CPU µs per request, and the floor's cost as a share of the
 * untraced gateway's CPU: the least the tracing-cost line could read with this tracing stack, whatever the
 * gateway did around it. Null when one of the four cases did not run.
 */
function tracingFloor(cases, rounds, find) {
  const ids = ['node-floor', 'node-floor-traced', 'gateway-untraced', 'gateway'];
  if (!ids.every((id) => cases[id])) return null;
  const perRound = rounds.map((r) => {
    const [floor, tracedFloor, untraced, traced] = ids.map((id) => find(id, 'throughput', r).cpuUsPerRequest[cases[id].server]);
    if ([floor, tracedFloor, untraced, traced].some((v) => v === null || v === undefined)) return null;
    return { floorCostUs: tracedFloor - floor, gatewayCostUs: traced - untraced, floorShareOfUntracedPercent: ((tracedFloor - floor) / untraced) * 100 };
  });
  const pack = (key, digits) => {
    const values = perRound.map((p) => (p ? p[key] : null));
    return { median: round(median(values), digits), rounds: values.map((v) => round(v, digits)) };
  };
  return { floorCostUs: pack('floorCostUs', 1), gatewayCostUs: pack('gatewayCostUs', 1), floorShareOfUntracedPercent: pack('floorShareOfUntracedPercent', 1) };
}

const fmt = (value, digits = 0) => (value === null || value === undefined ? '–' : Number(value).toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }));

export function toMarkdown(results) {
  const { machine: m, settings: s, cases, summary, ratios, budget, loss, memoryMiB } = results;
  const lines = [];
  lines.push(`# Koa Gateway benchmark (issue 12), ${results.date.slice(0, 16).replace('T', ' ')} UTC`, '');
  lines.push(
    `Machine: ${m.cpus} CPUs (${m.cpuModel}), ${m.memoryGiB} GiB, ${m.kernel}; Node ${m.node}; ${m.wrk}; nginx ${m.nginx ?? 'not installed'}; load average at start ${m.loadAverageAtStart.join(' / ')}, other work just before the start ${m.otherCpuPercentBeforeStart ?? '?'}% of a core.`,
  );
  lines.push(
    `Gateway: commit ${results.build.commit}${results.build.uncommitted.length ? ` plus uncommitted changes to ${results.build.uncommitted.join(', ')}` : ''}, built to dist/.`,
    `Runs: ${s.rounds} rounds (order reversed every other round), ${s.throughputSeconds} s at ${s.connections} connections per case per round${s.slices > 1 ? ` in ${s.slices} slices of ${s.throughputSeconds / s.slices} s taken in turn across the cases (the first after ${s.warmupSeconds} s of unmeasured warm-up in 1 s runs, the others after ${s.sliceWarmupSeconds} s)` : `, after ${s.warmupSeconds} s of unmeasured warm-up in 1 s runs`}, ${s.slices > 1 && s.latencySliceSeconds ? `each slice followed by ${s.latencySliceSeconds} s at 1 connection of the same case (a case's p50 the median of its slices')` : `then ${s.latencySeconds} s at 1 connection per case`}; whole run ${results.durationSeconds} s. ${s.cpus?.pinned ? `Each measured server on CPU ${s.cpus.servers} (the 2-worker gateway's processes all on it), load generator, upstream and sinks on CPU ${s.cpus.others}` : 'Load generator, upstream, sink and servers share the same cores'}: read ratios and CPU per request, not absolute req/s. "other CPU %" is what the rest of the machine used during the run (100 = one core). ${(s.tokens ?? 1) > 1 ? `Authenticated cases sent ${fmt(s.tokens)} distinct tokens round robin, each case's runs going on where its last stopped (the cache-hit case kept one)${s.tokens > 20_000 ? ": more than the gateway's verified-token cache holds in a process or in each of two workers (10,000 by default), so every request's signature was checked, as the peers check theirs." : ": no more than the gateway's verified-token caches can hold (10,000 by default, per worker), so some of its checks were cache hits."}` : "Authenticated cases sent one token: the gateway's verified-token cache checks its signature once, the peers check it on every request (\`--tokens 40000\` sends more than the caches hold)."}`,
    '',
  );
  const others = results.runs.map((r) => r.otherCpuPercent).sort((a, b) => a - b);
  const otherMedian = others[Math.floor(others.length / 2)] ?? 0;
  if (otherMedian > 20 || (m.otherCpuPercentBeforeStart ?? 0) > 20) {
    lines.push(
      `> **Warning:** other work used ${otherMedian}% of a core during the median run (${m.otherCpuPercentBeforeStart ?? '?'}% just before the start): this box was shared, the numbers are distorted. Re-run on a quiet machine (\`--wait-quiet 300\`).`,
      '',
    );
  }

  const ids = Object.keys(cases);
  const rss = (id) => {
    const proc = cases[id].server;
    return memoryMiB[proc] ? fmt(memoryMiB[proc].peak, 1) : '–';
  };
  lines.push(`## Throughput: ${s.connections} connections (medians of ${s.rounds} runs)`, '');
  lines.push('| case | req/s | p50 ms | p99 ms | errors | CPU µs/req: server | upstream | OTLP sink | wrk | peak RSS MiB (server) | other CPU % |');
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const id of ids) {
    const t = summary[id].throughput;
    const cpu = t.cpuUsPerRequest;
    const upstreamCpu = id === 'upstream' ? '(is the server)' : fmt(cpu.upstream, 1);
    lines.push(`| ${cases[id].label} | ${fmt(t.rps)} | ${fmt(t.p50Ms, 2)} | ${fmt(t.p99Ms, 2)} | ${t.errors} | ${fmt(cpu[cases[id].server], 1)} | ${upstreamCpu} | ${id === 'gateway' ? fmt(cpu.sink, 1) : ['gateway-metrics-off', 'gateway-cache-hit', 'node-floor-traced'].includes(id) ? fmt(cpu['sink-metrics-off'], 1) : '–'} | ${fmt(cpu.wrk, 1)} | ${rss(id)} | ${fmt(Math.max(0, t.otherCpuPercent))} |`);
  }
  lines.push('', '## Latency: 1 connection (medians)', '');
  lines.push('| case | req/s | p50 ms | p99 ms | errors | CPU µs/req: server | upstream |');
  lines.push('|---|---:|---:|---:|---:|---:|---:|');
  for (const id of ids) {
    const l = summary[id].latency;
    const cpu = l.cpuUsPerRequest;
    lines.push(`| ${cases[id].label} | ${fmt(l.rps)} | ${fmt(l.p50Ms, 3)} | ${fmt(l.p99Ms, 3)} | ${l.errors} | ${fmt(cpu[cases[id].server], 1)} | ${id === 'upstream' ? '(is the server)' : fmt(cpu.upstream, 1)} |`);
  }

  lines.push('', '## Ratios, per pair of runs in the same round (median, then each round)', '');
  lines.push('Throughput and CPU per request from the 50-connection runs (CPU of the server process(es) only); added p50 from the 1-connection runs.', '');
  lines.push('| case | vs | throughput | CPU per request | added p50 ms |');
  lines.push('|---|---|---:|---:|---:|');
  const each = (v, digits, suffix = '') => `${fmt(v.median, digits)}${suffix} (${v.rounds.map((x) => fmt(x, digits)).join(', ')})`;
  // Each pair once, the more elaborate case against the simpler one.
  const rank = ['upstream', 'nginx', 'node-floor', 'node-floor-traced', 'express', 'fastify', 'gateway-cache-hit', 'gateway-untraced', 'gateway-metrics-off', 'gateway', 'gateway-2-workers'];
  for (const id of ids) {
    for (const [base, r] of Object.entries(ratios[id])) {
      if (rank.indexOf(base) >= rank.indexOf(id)) continue;
      lines.push(`| ${cases[id].label} | ${cases[base].label} | ${each(r.throughput, 3, 'x')} | ${each(r.cpuPerRequest, 2, 'x')} | ${each(r.addedP50Ms, 3)} |`);
    }
  }

  const tf = results.tracingFloor;
  if (tf) {
    lines.push('', "## Tracing's floor: what the same two spans per request cost the bare proxy (median, then each round)", '');
    lines.push('CPU µs per request at 50 connections. The traced floor records and exports the gateway\'s two spans with the gateway\'s tracer and nothing else (bench/node-floor.mjs); its cost over the floor, as a share of the untraced gateway\'s CPU, is the least the tracing-cost line can read with this tracing stack.', '');
    lines.push('| tracing costs the floor, µs | tracing (and metrics) cost the gateway, µs | the floor\'s cost, % of the untraced gateway |');
    lines.push('|---:|---:|---:|');
    lines.push(`| ${each(tf.floorCostUs, 1)} | ${each(tf.gatewayCostUs, 1)} | ${each(tf.floorShareOfUntracedPercent, 1, '%')} |`);
  }

  if (loss) {
    lines.push('', `## Telemetry loss at 50% of peak (${fmt(loss.targetRate)} req/s = half of ${fmt(loss.peakRate)}, ${loss.seconds} s)`, '');
    if (loss.gateway) lines.push(`Paced load to ${loss.gateway}.`, '');
    lines.push('| requests sent | answered 2xx | served (access log) | SERVER spans received | CLIENT spans received | spans lost | load errors / skipped | achieved req/s | p50 / p99 ms | gateway CPU µs/req |');
    lines.push('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    lines.push(
      `| ${fmt(loss.load.sent)} | ${fmt(loss.load.ok)} | ${fmt(loss.requestsServed)} | ${fmt(loss.serverSpansReceived)} | ${fmt(loss.clientSpansReceived)} | ${fmt(loss.spansLost)} | ${loss.load.errors + loss.load.non2xx} / ${loss.load.skipped} | ${fmt(loss.load.achievedRate)} | ${fmt(loss.load.latencyMs.p50, 2)} / ${fmt(loss.load.latencyMs.p99, 2)} | ${fmt(loss.gatewayCpuUsPerRequest, 1)} |`,
    );
    if (loss.logRecordsReceived !== undefined) lines.push('', `OTLP log records: ${fmt(loss.logRecordsReceived)} received for ${fmt(loss.requestsServed)} requests served, ${fmt(loss.logRecordsLost)} lost.`);
    const f = loss.underFullLoad;
    lines.push('', `Under the full-load runs before it (not a budget line): ${fmt(f.serverSpansReceived)} SERVER spans arrived for ${fmt(f.requestsServed)} requests served (${fmt(f.missing)} missing, ${f.requestsServed ? fmt((f.missing / f.requestsServed) * 100, 1) : '0'}%).`);
  }

  lines.push('', '## Peak RSS (VmHWM, MiB: the servers\' median of their rounds, each round a fresh process; the upstream and sinks over the whole run)', '');
  lines.push(`| ${Object.keys(memoryMiB).join(' | ')} |`);
  lines.push(`|${Object.keys(memoryMiB).map(() => '---:').join('|')}|`);
  lines.push(`| ${Object.values(memoryMiB).map((v) => fmt(v.peak, 1)).join(' | ')} |`);

  if (budget.length > 0) {
    lines.push('', '## Budget (issue 12): Koa Gateway, full pipeline, tracing at 100% and metrics on', '');
    lines.push('| budget line | limit | measured (median; rounds) | result |');
    lines.push('|---|---|---|---|');
    for (const b of budget) {
      const digits = b.unit === 'x' ? 2 : b.unit === 'ms' ? 3 : ['spans', 'records', 'requests'].includes(b.unit) ? 0 : 1;
      const unit = b.unit === 'x' ? 'x' : b.unit === '%' ? '%' : ` ${b.unit}`;
      const measured = b.measured === null ? '–' : `${fmt(b.measured, digits)}${unit}${b.rounds.length > 1 ? ` (${b.rounds.map((v) => fmt(v, digits)).join(', ')})` : ''}`;
      lines.push(`| ${b.line} | ${b.limit} | ${measured} | **${b.result}**${b.note ? ` (${b.note})` : ''} |`);
    }
  }
  return `${lines.join('\n')}\n`;
}
