import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type http from 'node:http';
import net from 'node:net';
import { METRIC } from '../../otel/wire-names';
import { presentedFingerprint, rotatingCertificates } from '../helpers/certificates';
import { namedUpstream, requestOnNewConnection, startGatewayProcess, type GatewayProcess } from '../helpers/gateway-process';
import { spawnGateway } from '../helpers/process-stack';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver';
import { OPENMETRICS_CONTENT_TYPE, parseOpenMetrics, PROMETHEUS_ACCEPT, samplesOf, scrape, scrapeWhen, type Exposition } from '../helpers/openmetrics';
import { refusedOrigin, streamSixChunks } from '../helpers/servers';
import { waitFor } from '../helpers/wait';

/**
 * Every core (src/workers.ts): with GATEWAY_WORKERS=2 the built gateway is a cluster primary and two workers
 * sharing the public port.
 */
// Each test starts real processes (a cluster: three), slow on a busy machine.
jest.setTimeout(120_000);

type Upstream = Awaited<ReturnType<typeof namedUpstream>>;

interface ConfigAnswer {
  version: string;
  servedBy: { worker: number; pid: number };
  workers: { id: number; pid: number; version: string }[];
}

const EXPORT_AT_ONCE = { OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_TRACES_SAMPLER: 'always_on', OTEL_METRICS_EXPORTER: 'none', OTEL_LOGS_EXPORTER: 'none' };

/** The certificates six new connections were shown (the primary hands connections to the workers in turn). */
async function presentedByWorkers(origin: string, ca: string[]): Promise<string[]> {
  const seen = new Set<string>();
  for (let i = 0; i < 6; i++) seen.add(await presentedFingerprint(origin, ca));
  return [...seen];
}

/** `/api/stream` answers in six chunks over ~1.2 s. */
/** Answers to `/held` requests, kept until the test releases them: a worker draining for as long as a test needs. */
const heldAnswers: http.ServerResponse[] = [];
const releaseHeld = () => heldAnswers.splice(0).forEach((res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('released\n'));

function slowStream(req: http.IncomingMessage, res: http.ServerResponse): boolean {
  if (req.url?.endsWith('/held')) {
    heldAnswers.push(res);
    return true;
  }
  if (!req.url?.endsWith('/stream')) return false;
  streamSixChunks(res);
  return true;
}

describe('workers (two processes behind one port)', () => {
  let upstream: Upstream;
  let gateway: GatewayProcess | undefined;
  let receiver: OtlpReceiver | undefined;

  beforeAll(async () => {
    upstream = await namedUpstream('api', slowStream);
  });
  afterEach(async () => {
    releaseHeld();
    // The primary takes its workers down with it (they exit when their IPC channel closes).
    if (gateway?.child.exitCode === null) gateway.child.kill('SIGKILL');
    gateway = undefined;
    await receiver?.close();
    receiver = undefined;
  });
  afterAll(() => upstream?.close());

  const route = (name: string, extra: Record<string, unknown> = {}) => ({ name, prefix: `/${name}`, service: 'api', upstreamPath: '', auth: 'public', ...extra });
  const config = (routes: unknown[] = [route('api'), route('limited', { rateLimit: { max: 5, windowMs: 60_000 } })]) => ({
    rateLimit: { max: 1_000_000, windowMs: 60_000 },
    services: { users: { url: upstream.url }, api: { url: upstream.url } },
    routes,
  });

  async function adminConfig(): Promise<ConfigAnswer> {
    return (await (await fetch(`${gateway!.adminUrl}/admin/config`)).json()) as ConfigAnswer;
  }

  function start(env: Record<string, string> = {}, telemetry = false) {
    return startGatewayProcess({ config: config(), env: { GATEWAY_WORKERS: '2', ...env }, telemetry });
  }

  it('runs two workers with distinct instance ids and holds a limit exactly across them', async () => {
    receiver = await startOtlpReceiver();
    gateway = await start({ ...EXPORT_AT_ONCE, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url }, true);
    const listening = gateway.lines.find((line) => line.message === 'gateway listening')!;
    expect(listening).toMatchObject({ workers: 2, rateLimitStore: 'primary' });
    const status = await adminConfig();
    expect(status.workers).toHaveLength(2);
    expect(new Set(status.workers.map((worker) => worker.pid)).size).toBe(2);
    expect(status.workers.map((worker) => worker.version)).toEqual([listening.version, listening.version]);

    // A burst of 20 on new connections, spread by the primary over both workers: 5 per minute means 5 in all.
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => requestOnNewConnection(`${gateway!.url}/limited/${i}`)));
    const statuses = answers.map((answer) => answer.status).sort();
    // Exact only because every check was counted by the primary's leases (none fell back to the store-down policy).
    expect(gateway.lines.filter((line) => line.message === 'rate limit store failed')).toEqual([]);
    expect(statuses).toEqual([...Array<number>(5).fill(200), ...Array<number>(15).fill(429)]);

    const burstSpans = (spans: readonly ReceivedSpan[]) => spans.filter((span) => span.kind === 'SERVER' && String(span.attributes['url.path']).startsWith('/limited/'));
    const received = await receiver.waitFor(({ spans }) => burstSpans(spans).length === 20);
    const instances = new Set(burstSpans(received.spans).map((span) => span.resource['service.instance.id']));
    // Both workers served part of the burst, each under its own service.instance.id; one trace per request.
    expect(instances.size).toBe(2);
    expect(new Set(burstSpans(received.spans).map((span) => span.traceId)).size).toBe(20);
  });

  /** Stops the gateway and reads how often each worker asked the primary for rate-limit tokens. */
  async function stopAndCountAsks(): Promise<Record<string, number>> {
    const from = gateway!.lines.length;
    gateway!.child.kill('SIGTERM');
    const stopping = await gateway!.waitForLine((line) => line.message === 'gateway stopping', { from });
    expect(await gateway!.exited()).toBe(0);
    return stopping.rateLimitAsks as Record<string, number>;
  }

  // Leases (src/rate-limit-leases.ts): with 2 workers a limit of 10 is leased 2 at a time, with 3 workers 40 is
  // leased 6 at a time, so a burst often ends with a worker holding tokens another one needs (a recall). Three
  // routes, three limits, three bursts one after another: three chances to catch a token left unused.
  it.each([
    { workers: 2, max: 10, burst: 30 },
    { workers: 3, max: 40, burst: 80 },
  ])('holds a limit of $max per minute exactly over bursts of $burst spread across $workers workers', async ({ workers, max, burst }) => {
    const limited = ['a', 'b', 'c'].map((name) => route(`burst-${name}`, { rateLimit: { max, windowMs: 60_000 } }));
    gateway = await startGatewayProcess({ config: config([route('api'), ...limited]), env: { GATEWAY_WORKERS: String(workers) } });
    for (const { prefix } of limited) {
      const answers = await Promise.all(Array.from({ length: burst }, (_, i) => requestOnNewConnection(`${gateway!.url}${prefix}/${i}`)));
      expect(answers.map((answer) => answer.status).sort()).toEqual([...Array<number>(max).fill(200), ...Array<number>(burst - max).fill(429)]);
    }
    expect(gateway.lines.filter((line) => line.message === 'rate limit store failed')).toEqual([]);
    // Every worker served part of the bursts: each asked the primary at least once (it starts with no lease).
    expect(Object.keys(await stopAndCountAsks())).toHaveLength(workers);
  });

  it('decides most requests under a large limit in the worker: 200 requests ask the primary a few times, not 200', async () => {
    const max = 1_000_000;
    gateway = await start();
    const remaining: number[][] = [];
    // 20 rounds of 10 at once, each on a new connection so both workers serve them.
    for (let round = 0; round < 20; round++) {
      const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => requestOnNewConnection(`${gateway!.url}/api/${round}-${i}`)));
      expect(answers.map((answer) => answer.status)).toEqual(Array<number>(10).fill(200));
      remaining.push(answers.map((answer) => Number(answer.headers['x-ratelimit-remaining'])));
    }
    // Remaining is conservative: never more than what is really left after the requests answered before.
    remaining.forEach((round, index) => round.forEach((value) => expect(value).toBeLessThanOrEqual(max - 1 - 10 * index)));
    expect(remaining.flat().every((value) => Number.isInteger(value) && value >= 0)).toBe(true);
    const asks = Object.values(await stopAndCountAsks()).reduce((sum, each) => sum + each, 0);
    // Only requests that found their worker without a lease asked: at most the first round's 10 (a lease then
    // holds up to 1000 tokens). Asking per request, as before leases, made it 200.
    expect(asks).toBeGreaterThanOrEqual(1);
    expect(asks).toBeLessThanOrEqual(10);
  });

  // Each worker serving the port itself would answer its own counters, another worker's at the next scrape:
  // Prometheus reads every switch as a counter reset.
  it('answers every scrape with the sum of both workers, served by the primary', async () => {
    gateway = await start({ METRICS_PORT: '0', OTEL_METRICS_EXPORTER: 'none' });
    const scrapeUrl = `${String(gateway.lines.find((line) => line.message === 'metrics listener started')!.url)}/metrics`;
    // New connections, so the primary spreads them over both workers.
    for (let i = 0; i < 20; i++) await requestOnNewConnection(`${gateway.url}/api/counted-${i}`);
    const counted = async () => {
      const text = await (await fetch(scrapeUrl)).text();
      return [...text.matchAll(/^http_server_request_duration_seconds_count\{[^}]*\} (\d+)/gm)].reduce((sum, [, value]) => sum + Number(value), 0);
    };
    const scrapes = [];
    for (let i = 0; i < 6; i++) scrapes.push(await counted());
    expect(scrapes).toEqual(Array<number>(6).fill(20));
    expect(gateway.lines.filter((line) => line.message === 'ignored a malformed message from a worker')).toEqual([]);
    // The sum is OpenMetrics, as one process's scrape is: prom-client's own sum, in the older text format, lost
    // the counters' `_total`, and every dashboard query on `gateway_*_total` found nothing with more than one worker.
    const response = await fetch(scrapeUrl, { headers: { accept: PROMETHEUS_ACCEPT } });
    expect(response.headers.get('content-type')).toBe(OPENMETRICS_CONTENT_TYPE);
    const exposition = parseOpenMetrics(await response.text());
    const counters = [...exposition.types].filter(([, type]) => type === 'counter').map(([name]) => name);
    expect(counters).toEqual(expect.arrayContaining([METRIC.rateLimitDecisions.replace(/_total$/, '')]));
    // No counter sample under its bare family name; the rate limiter's decisions under `_total`, as PromQL asks.
    expect(exposition.samples.filter((sample) => counters.includes(sample.name))).toEqual([]);
    expect(samplesOf(exposition, METRIC.rateLimitDecisions).length).toBeGreaterThan(0);
  });

  describe('when a worker is replaced or stuck, the summed scrape', () => {
    /** Every counter and histogram sample (buckets, sum, count) by name and labels: what Prometheus treats as never falling. */
    const cumulativeSamples = (exposition: Exposition) => {
      const families = [...exposition.types].filter(([, type]) => type === 'counter' || type === 'histogram').map(([name]) => name);
      const names = new Set(families.flatMap((family) => [`${family}_total`, `${family}_bucket`, `${family}_sum`, `${family}_count`]));
      return new Map(exposition.samples.filter((sample) => names.has(sample.name)).map((sample) => [`${sample.name}${JSON.stringify(Object.entries(sample.labels).sort())}`, sample.value]));
    };
    /** The series of `before` that are lower (or missing) in `after`: each a counter reset to Prometheus. */
    const fallen = (before: Exposition, after: Exposition) => {
      const now = cumulativeSamples(after);
      return [...cumulativeSamples(before)].filter(([key, value]) => !((now.get(key) ?? -1) >= value)).map(([key, value]) => `${key}: ${value} -> ${now.get(key)}`);
    };
    const requestsCounted = (exposition: Exposition) => samplesOf(exposition, `${METRIC.requestDuration}_count`).reduce((sum, sample) => sum + sample.value, 0);

    async function startCounted(): Promise<{ metricsUrl: string; before: Exposition }> {
      gateway = await start({ METRICS_PORT: '0', OTEL_METRICS_EXPORTER: 'none' });
      const metricsUrl = String(gateway.lines.find((line) => line.message === 'metrics listener started')!.url);
      // New connections, so the primary spreads them over both workers.
      for (let i = 0; i < 20; i++) await requestOnNewConnection(`${gateway.url}/api/counted-${i}`);
      return { metricsUrl, before: await scrapeWhen(metricsUrl, (exposition) => requestsCounted(exposition) === 20) };
    }

    // A dead worker's counts vanished from the sum: every counter went down, which Prometheus reads as a reset,
    // so rate() and increase() counted the surviving worker's whole totals again. The scrape sent as it died
    // waited 5 s for it and answered 500.
    it('never goes below what it served when a worker is killed and replaced, and adds the replacement on top', async () => {
      const { metricsUrl, before } = await startCounted();
      const victim = (await adminConfig()).workers[0]!;
      const from = gateway!.lines.length;
      process.kill(victim.pid, 'SIGKILL');
      const during = await scrape(metricsUrl);
      expect(fallen(before, during)).toEqual([]);
      await gateway!.waitForLine((line) => line.message === 'worker replaced and serving', { from });
      expect(fallen(before, await scrape(metricsUrl))).toEqual([]);
      for (let i = 0; i < 10; i++) await requestOnNewConnection(`${gateway!.url}/api/after-${i}`);
      // The dead worker's share of the first 20 (kept from its last answer), the survivor's and the replacement's.
      const after = await scrapeWhen(metricsUrl, (exposition) => requestsCounted(exposition) === 30);
      expect(fallen(before, after)).toEqual([]);
    });

    // Only the log said a worker had died and been replaced: a worker crashing again and again left the scrape as it was.
    it('counts the worker it replaced in gateway_worker_restarts_total, beside the workers serving and configured', async () => {
      gateway = await start({ METRICS_PORT: '0', OTEL_METRICS_EXPORTER: 'none' });
      const metricsUrl = String(gateway.lines.find((line) => line.message === 'metrics listener started')!.url);
      const own = (exposition: Exposition) => [METRIC.workerRestarts, METRIC.workersServing, METRIC.workersConfigured].map((name) => samplesOf(exposition, name).map((sample) => sample.value));
      expect(own(await scrape(metricsUrl))).toEqual([[0], [2], [2]]);
      const victim = (await adminConfig()).workers[0]!;
      const from = gateway.lines.length;
      process.kill(victim.pid, 'SIGKILL');
      await gateway.waitForLine((line) => line.message === 'worker replaced and serving', { from });
      expect(own(await scrape(metricsUrl))).toEqual([[1], [2], [2]]);
    });

    // The primary's series were made for the scrape listener only: a cluster that exported its metrics over OTLP
    // alone (no METRICS_PORT) reported no worker restart and no reload, and no alert could hear of a crash loop.
    it('exports the replaced worker over OTLP too when there is no scrape listener, as gateway.worker.restarts', async () => {
      receiver = await startOtlpReceiver();
      gateway = await start({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_METRIC_EXPORT_INTERVAL: '200', OTEL_TRACES_EXPORTER: 'none', OTEL_LOGS_EXPORTER: 'none' }, true);
      const restarts = (value: number) => receiver!.metrics().some((point) => point.name === 'gateway.worker.restarts' && point.type === 'sum' && point.monotonic === true && point.value === value);
      const serving = (value: number) => receiver!.metrics().some((point) => point.name === 'gateway.workers.serving' && point.value === value);
      await waitFor(() => restarts(0) && serving(2), 'the primary exporting its series', 15_000);
      const victim = (await adminConfig()).workers[0]!;
      const from = gateway.lines.length;
      process.kill(victim.pid, 'SIGKILL');
      await gateway.waitForLine((line) => line.message === 'worker replaced and serving', { from });
      await waitFor(() => restarts(1), 'the restart exported', 15_000);
    });

    // A draining worker counted as serving until it exited: a rolling stop looked like a cluster at full strength.
    describe('gateway_workers_serving leaves out workers that drain', () => {
      const serving = (exposition: Exposition) => samplesOf(exposition, METRIC.workersServing).map((sample) => sample.value);

      /** A cluster with the metrics listener, and a request held by one of its workers (which then drains until it is released). */
      async function startWithHeldRequest(): Promise<{ metricsUrl: string; held: Promise<number> }> {
        gateway = await start({ METRICS_PORT: '0', OTEL_METRICS_EXPORTER: 'none' });
        const metricsUrl = String(gateway.lines.find((line) => line.message === 'metrics listener started')!.url);
        expect(serving(await scrape(metricsUrl))).toEqual([2]);
        const held = fetch(`${gateway.url}/api/held`).then(async (response) => (await response.text(), response.status));
        await waitFor(() => heldAnswers.length === 1, 'the held request to reach the upstream');
        return { metricsUrl, held };
      }

      it('counts none once the primary stops them, though one still finishes a request', async () => {
        const { metricsUrl, held } = await startWithHeldRequest();
        const from = gateway!.lines.length;
        gateway!.child.kill('SIGTERM');
        await gateway!.waitForLine((line) => line.message === 'gateway stopping', { from });
        expect(serving(await scrape(metricsUrl))).toEqual([0]);
        releaseHeld();
        expect(await held).toBe(200);
        expect(await gateway!.exited()).toBe(0);
      });

      it('leaves out a worker stopped on its own (SIGTERM to the worker) while it drains, and counts its replacement', async () => {
        const { metricsUrl, held } = await startWithHeldRequest();
        const from = gateway!.lines.length;
        // Both: one drains with the held request, the other has none and is replaced at once.
        for (const worker of (await adminConfig()).workers) process.kill(worker.pid, 'SIGTERM');
        await gateway!.waitForLine((line) => line.message === 'worker replaced and serving', { from, timeoutMs: 15_000 });
        expect(serving(await scrape(metricsUrl))).toEqual([1]);
        releaseHeld();
        expect(await held).toBe(200);
        await scrapeWhen(metricsUrl, (exposition) => serving(exposition)[0] === 2, 15_000);
      });
    });

    // A worker whose event loop is stuck never answers until the watchdog replaces it (10 s).
    it('answers within its bound when a worker does not answer, with that worker\'s last counts (it answered 500 after 5 s)', async () => {
      const { metricsUrl, before } = await startCounted();
      const stuck = (await adminConfig()).workers[0]!;
      process.kill(stuck.pid, 'SIGSTOP');
      try {
        const startedAt = Date.now();
        const during = await scrape(metricsUrl);
        expect(Date.now() - startedAt).toBeLessThan(4000);
        expect(requestsCounted(during)).toBe(20);
        expect(fallen(before, during)).toEqual([]);
        // Within the timeout Prometheus says it keeps (a fixed 2 s wait outlived a 1 s scrape_timeout).
        const askedAt = Date.now();
        const response = await fetch(`${metricsUrl}/metrics`, { headers: { accept: PROMETHEUS_ACCEPT, 'x-prometheus-scrape-timeout-seconds': '1' } });
        const text = await response.text();
        expect([response.status, Date.now() - askedAt < 1000]).toEqual([200, true]);
        expect(requestsCounted(parseOpenMetrics(text))).toBe(20);
      } finally {
        process.kill(stuck.pid, 'SIGKILL');
      }
    });
  });

  it('drops every worker\'s cached copy after a successful PUT through one of them (each kept its own, stale for the TTL)', async () => {
    let version = 1;
    let reads = 0;
    const items = await namedUpstream('items', (req, res) => {
      if (req.method === 'PUT') {
        version++;
        res.writeHead(204).end();
        return true;
      }
      reads++;
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'public, max-age=300' });
      res.end(JSON.stringify({ version }));
      return true;
    });
    try {
      // No REDIS_URL: each worker keeps its responses in its own memory.
      gateway = await startGatewayProcess({
        config: { ...config([route('items', { service: 'items', cache: { ttlSeconds: 300, scope: 'public' } })]), services: { users: { url: upstream.url }, items: { url: items.url } } },
        env: { GATEWAY_WORKERS: '2' },
      });
      const read = () => requestOnNewConnection(`${gateway!.url}/items/1`);
      // New connections go to the workers in turn: once the service was asked twice and the next reads are all
      // hits, both workers hold version 1.
      const before: string[] = [];
      await waitFor(async () => {
        before.push(String((await read()).headers['x-cache']));
        return reads === 2 && before.slice(-4).join() === 'HIT,HIT,HIT,HIT';
      }, 'both workers to hold a copy', 20_000);
      expect(reads).toBe(2);

      expect((await requestOnNewConnection(`${gateway.url}/items/1`, { method: 'PUT' })).status).toBe(204);
      const after: number[] = [];
      for (let i = 0; i < 10; i++) after.push((JSON.parse((await read()).body) as { version: number }).version);
      // Before, every other read was the first worker's version 1 until its TTL ended.
      expect(after).toEqual(Array<number>(10).fill(2));
      expect(gateway.lines.filter((line) => line.message === 'ignored a malformed message from a worker')).toEqual([]);
    } finally {
      await items.close();
    }
  });

  it('replaces a worker that crashed, with back-off logged, and keeps serving', async () => {
    gateway = await start();
    const before = await adminConfig();
    const victim = before.workers[0]!;
    const from = gateway.lines.length;
    process.kill(victim.pid, 'SIGKILL');
    expect(await gateway.waitForLine((line) => line.message === 'worker exited; replacing it', { from })).toMatchObject({ worker: victim.id, signal: 'SIGKILL', delayMs: expect.any(Number) });
    await gateway.waitForLine((line) => line.message === 'worker replaced and serving', { from });
    const after = await adminConfig();
    expect(after.workers).toHaveLength(2);
    expect(after.workers.map((worker) => worker.pid)).not.toContain(victim.pid);
    expect(after.workers.every((worker) => worker.version === before.version)).toBe(true);
    const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => requestOnNewConnection(`${gateway!.url}/api/${i}`)));
    expect(answers.map((answer) => answer.status)).toEqual(Array<number>(10).fill(200));
  });

  describe('a worker stuck before it listens', () => {
    const fixture = path.join(__dirname, '../fixtures/worker-hangs-while-starting.js');
    const startTimeoutMs = 5000;
    let marker: string;
    beforeEach(() => {
      marker = path.join(mkdtempSync(path.join(os.tmpdir(), 'worker-hang-')), 'hang');
    });
    afterEach(() => rmSync(path.dirname(marker), { recursive: true, force: true }));
    /** A cluster of two workers, the fixture preloaded in every process, with this start bound (spawned, not started: it may never listen). */
    const spawnWithStartBound = (workerStartTimeoutMs: number, env: Record<string, string>) => {
      const configFile = path.join(path.dirname(marker), 'gateway.config.json');
      writeFileSync(configFile, JSON.stringify({ ...config(), server: { workerStartTimeoutMs } }));
      return spawnGateway({ GATEWAY_CONFIG: configFile, HOST: '127.0.0.1', GATEWAY_WORKERS: '2', ...env }, ['--require', fixture]);
    };

    it('is killed after server.workerStartTimeoutMs and replaced: the watchdog pings only listening workers, so its slot never served again', async () => {
      gateway = await startGatewayProcess({ config: { ...config(), server: { workerStartTimeoutMs: startTimeoutMs } }, env: { GATEWAY_WORKERS: '2', NODE_OPTIONS: `--require ${fixture}`, HANG_MARKER: marker } });
      const victim = (await adminConfig()).workers[0]!;
      const from = gateway.lines.length;
      writeFileSync(marker, '');
      process.kill(victim.pid, 'SIGKILL');
      const killed = await gateway.waitForLine((line) => line.message === 'worker did not start listening in time; killing it', { from, timeoutMs: startTimeoutMs + 20_000 });
      expect(killed).toMatchObject({ workerStartTimeoutMs: startTimeoutMs });
      expect(killed.worker).not.toBe(victim.id);
      // The next one starts (the marker gone) and takes the slot.
      rmSync(marker);
      await gateway.waitForLine((line) => line.message === 'worker exited; replacing it' && line.worker === killed.worker, { from });
      await gateway.waitForLine((line) => line.message === 'worker replaced and serving', { from });
      const after = await adminConfig();
      expect(after.workers).toHaveLength(2);
      expect(after.workers.map((worker) => worker.pid)).not.toContain(killed.pid);
      const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => requestOnNewConnection(`${gateway!.url}/api/${i}`)));
      expect(answers.map((answer) => answer.status)).toEqual(Array<number>(10).fill(200));
    });

    it('stops the gateway with exit 1 when it is one of the first workers: it waited for good, neither serving nor stopping', async () => {
      writeFileSync(marker, '');
      const stuck = spawnWithStartBound(startTimeoutMs, { HANG_MARKER: marker });
      try {
        await waitFor(() => stuck.child.exitCode !== null, 'the primary to exit', startTimeoutMs + 20_000);
        expect(stuck.child.exitCode).toBe(1);
        const messages = stuck.lines.map((line) => line.message);
        expect(messages).toContain('worker did not start listening in time; killing it');
        expect(messages).toContain('worker exited before the gateway started; stopping');
        expect(messages).not.toContain('gateway listening');
      } finally {
        if (stuck.child.exitCode === null) stuck.child.kill('SIGKILL');
      }
    });

    it('counts no pause of the whole cluster against a starting worker (a paused container): on resume it killed workers still starting', async () => {
      // Each worker is held 6 s of its running time, then starts: well within its 10 s when nothing is paused.
      const slow = spawnWithStartBound(10_000, { HANG_MS: '6000' });
      const held = () => [...slow.stderr().matchAll(/worker held (\d+)/g)].map((match) => Number(match[1]));
      let paused: number[] = [];
      try {
        await waitFor(() => held().length === 2, 'both workers to be forked and held', 20_000);
        // Everything paused past the workers' deadline (the pause is what is tested, not a wait for something); on
        // resume each worker still has most of its 6 s to go.
        paused = [slow.child.pid!, ...held()];
        for (const pid of paused) process.kill(pid, 'SIGSTOP');
        await new Promise((resolve) => setTimeout(resolve, 12_000));
        for (const pid of paused) process.kill(pid, 'SIGCONT');
        await slow.waitForLine('gateway listening', 30_000);
        expect(slow.lines.map((line) => line.message)).not.toContain('worker did not start listening in time; killing it');
      } finally {
        for (const pid of paused) {
          try {
            process.kill(pid, 'SIGCONT');
          } catch {}
        }
        if (slow.child.exitCode === null) slow.child.kill('SIGKILL');
      }
    });
  });

  it('serves the certificate in use from every worker, replacements included, after a rotation it refused (the primary reads the files)', async () => {
    const { first, second, live } = rotatingCertificates('gateway-workers-tls-');
    gateway = await startGatewayProcess({ config: { ...config(), tls: live }, env: { GATEWAY_WORKERS: '2' } });
    const presented = () => presentedByWorkers(gateway!.url, [first.cert, second.cert]);
    expect(await presented()).toEqual([first.fingerprint256]);

    // Half a rotation (the new certificate, the old key): refused once, by the primary; the first pair stays.
    copyFileSync(second.certFile, live.certFile);
    let from = gateway.lines.length;
    gateway.child.kill('SIGHUP');
    await gateway.waitForLine((line) => line.message === 'tls certificates not reloaded; the previous ones stay in use', { from });
    // A worker dies meanwhile: its replacement used to read the half-rotated files and fail, again and again.
    const victim = (await adminConfig()).workers[0]!;
    from = gateway.lines.length;
    process.kill(victim.pid, 'SIGKILL');
    await gateway.waitForLine((line) => line.message === 'worker replaced and serving', { from });
    expect((await adminConfig()).workers.map((worker) => worker.version)).toEqual([expect.any(String), expect.any(String)]);
    expect(await presented()).toEqual([first.fingerprint256]);

    // The rotation finished: every worker takes the new pair.
    copyFileSync(second.keyFile, live.keyFile);
    from = gateway.lines.length;
    gateway.child.kill('SIGHUP');
    await waitFor(() => gateway!.lines.slice(from).filter((line) => line.message === 'tls certificates reloaded').length === 2, 'both workers to take the new pair', 20_000);
    expect(await presented()).toEqual([second.fingerprint256]);
  });

  it('takes a rotation signalled while its workers were still starting (the SIGHUP used to be lost, the old pair served for good)', async () => {
    const { directory, first, second, live } = rotatingCertificates('gateway-workers-tls-start-');
    // A "Redis" that accepts and never answers holds each worker in its start-up wait (3 s) after it got its config.
    const peers = new Set<net.Socket>();
    const silentRedis = net.createServer((socket) => void peers.add(socket.on('error', () => undefined)));
    await new Promise<void>((resolve) => silentRedis.listen(0, '127.0.0.1', resolve));
    const configFile = path.join(directory, 'gateway.config.json');
    writeFileSync(configFile, JSON.stringify({ ...config(), tls: live }));
    const { port } = silentRedis.address() as net.AddressInfo;
    const starting = spawnGateway({ GATEWAY_CONFIG: configFile, HOST: '127.0.0.1', GATEWAY_WORKERS: '2', REDIS_URL: `redis://127.0.0.1:${port}` });
    try {
      await waitFor(() => peers.size >= 2, 'both workers to be starting', 20_000);
      copyFileSync(second.certFile, live.certFile);
      copyFileSync(second.keyFile, live.keyFile);
      starting.child.kill('SIGHUP');
      const origin = String((await starting.waitForLine('gateway listening', 30_000)).url);
      expect(await presentedByWorkers(origin, [first.cert, second.cert])).toEqual([second.fingerprint256]);
    } finally {
      starting.child.kill('SIGKILL');
      for (const socket of peers) socket.destroy();
      silentRedis.close();
    }
  });

  it('replaces a worker that stopped answering (its event loop stuck), which kept getting connections that hung', async () => {
    gateway = await start();
    const before = await adminConfig();
    const stuck = before.workers[0]!;
    const from = gateway.lines.length;
    // SIGSTOP stands in for an endless loop: the process lives, its connections are accepted and never answered.
    process.kill(stuck.pid, 'SIGSTOP');
    try {
      expect(await gateway.waitForLine((line) => line.message === 'worker not responding; replacing it', { from, timeoutMs: 30_000 })).toMatchObject({ worker: stuck.id, pid: stuck.pid, silentMs: expect.any(Number) });
      await gateway.waitForLine((line) => line.message === 'worker replaced and serving', { from, timeoutMs: 30_000 });
    } finally {
      // Already killed by the primary; if not, do not leave it stopped.
      try {
        process.kill(stuck.pid, 'SIGKILL');
      } catch {}
    }
    const after = await adminConfig();
    expect(after.workers.map((worker) => worker.pid)).not.toContain(stuck.pid);
    const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => requestOnNewConnection(`${gateway!.url}/api/${i}`)));
    expect(answers.map((answer) => answer.status)).toEqual(Array<number>(10).fill(200));
  });

  it('kills no worker for a pause of the primary itself (a paused container, a suspended VM): it killed them all', async () => {
    gateway = await start();
    const before = await adminConfig();
    const from = gateway.lines.length;
    // Longer than the watchdog's 10 s: on resume every worker looked silent for that long.
    gateway.child.kill('SIGSTOP');
    await new Promise((resolve) => setTimeout(resolve, 12_000));
    gateway.child.kill('SIGCONT');
    // The first watchdog round after the pause, where every worker was killed, says it saw the pause instead. A worker
    // the primary did not hear from meanwhile would need 10 s more of silence to count as stuck.
    const paused = await gateway.waitForLine((line) => line.message === 'gateway primary was not running; its workers\' silence meanwhile is not counted', { from, timeoutMs: 10_000 });
    expect(paused.pausedMs).toBeGreaterThanOrEqual(12_000);
    expect(gateway.lines.slice(from).filter((line) => line.message === 'worker not responding; replacing it')).toEqual([]);
    expect((await adminConfig()).workers.map((worker) => worker.pid).sort()).toEqual(before.workers.map((worker) => worker.pid).sort());
  });

  // The primary read the protos for the version and sent the workers the config alone: each worker read the files
  // again as it built, so a replacement (a crash, the watchdog) ran an edit nobody had reloaded, under the running
  // version, and a broken one kept it from ever starting.
  it("builds a replacement worker from the running version's protos, not from an edit on disk nobody reloaded", async () => {
    const directory = mkdtempSync(path.join(os.tmpdir(), 'gateway-workers-proto-'));
    const proto = path.join(directory, 'notifications.proto');
    const shipped = readFileSync(path.join(__dirname, '../../proto/notifications.proto'), 'utf8');
    expect(shipped).toContain('get: "/v1/notifications/{id}"');
    writeFileSync(proto, shipped);
    const grpcRoute = route('rpc', { service: 'notifications', upstreamPath: '/v1/notifications', methods: ['GET'], grpc: { proto, service: 'koagateway.notifications.v1.Notifications' } });
    const grpcConfig = { ...config([route('api'), grpcRoute]), services: { users: { url: upstream.url }, api: { url: upstream.url }, notifications: { url: upstream.url, grpcUrl: await refusedOrigin() } } };
    gateway = await startGatewayProcess({ config: grpcConfig, env: { GATEWAY_WORKERS: '2' } });
    // Mapped (the service is down: 503), or not (the gateway's 404), on new connections, which reach both workers.
    const statuses = async (target: string) => (await Promise.all(Array.from({ length: 6 }, () => requestOnNewConnection(`${gateway!.url}${target}`)))).map((answer) => answer.status);
    const mapped = (answers: number[]) => answers.every((status) => status !== 404);
    expect(mapped(await statuses('/rpc/n-1'))).toBe(true);
    const { version } = await adminConfig();

    for (const edit of [shipped.replace('get: "/v1/notifications/{id}"', 'get: "/v1/notifications/by-id/{id}"'), 'this is no proto']) {
      writeFileSync(proto, edit);
      const victim = (await adminConfig()).workers[0]!;
      const from = gateway.lines.length;
      process.kill(victim.pid, 'SIGKILL');
      await gateway.waitForLine((line) => line.message === 'worker replaced and serving', { from });
      expect((await adminConfig()).workers.map((worker) => worker.version)).toEqual([version, version]);
      expect(mapped(await statuses('/rpc/n-1'))).toBe(true);
      expect(await statuses('/rpc/by-id/n-1')).toEqual(Array<number>(6).fill(404));
    }
    rmSync(directory, { recursive: true, force: true });
  });

  it('reloads every worker and answers once all run the new version', async () => {
    gateway = await start();
    const { version: first } = await adminConfig();
    expect((await requestOnNewConnection(`${gateway.url}/added/x`)).status).toBe(404);
    gateway.writeConfig(config([route('api'), route('added')]));
    const response = await fetch(`${gateway.adminUrl}/admin/reload`, { method: 'POST' });
    const answer = (await response.json()) as { status: string; version: string; workers: { version: string }[] };
    expect(response.status).toBe(200);
    expect(answer.status).toBe('reloaded');
    expect(answer.version).not.toBe(first);
    expect(answer.workers.map((worker) => worker.version)).toEqual([answer.version, answer.version]);
    // Whichever worker a new connection reaches, it has the route.
    const answers = await Promise.all(Array.from({ length: 6 }, (_, i) => requestOnNewConnection(`${gateway!.url}/added/${i}`)));
    expect(answers.map((each) => each.status)).toEqual(Array<number>(6).fill(200));

    // SIGHUP to the primary does the same; a broken file is refused there once.
    const from = gateway.lines.length;
    gateway.writeConfig('not json');
    gateway.child.kill('SIGHUP');
    await gateway.waitForLine((line) => line.message === 'config reload refused; the running config keeps serving', { from });
    expect((await adminConfig()).version).toBe(answer.version);
    expect(gateway.lines.slice(from).filter((line) => line.message === 'config reload refused; the running config keeps serving')).toHaveLength(1);
  });

  it('refuses a config the workers cannot build with 422 and the workers\' own reason, keeping the running one', async () => {
    gateway = await start();
    const { version: running } = await adminConfig();
    // Valid by the schema; only building it finds the proto file missing.
    gateway.writeConfig(config([route('api'), route('rpc', { methods: ['GET'], grpc: { proto: 'proto/missing.proto', service: 'x.v1.X' } })]));
    const response = await fetch(`${gateway.adminUrl}/admin/reload`, { method: 'POST' });
    expect(response.status).toBe(422);
    const { code, detail: reason } = (await response.json()) as { code: string; detail: string };
    expect(code).toBe('config_invalid');
    // It said "not every worker could apply version ... within 10000 ms" (in ~170 ms), and no cause.
    expect(reason).toMatch(new RegExp(`^worker \\d+ could not build version [0-9a-f]+: .*proto/missing\\.proto.*ENOENT.*; version ${running} restored$`));
    expect(reason).not.toMatch(/within \d+ ms/);
    // The path as it is: the app root once (it was joined twice, naming a file nobody wrote).
    expect(reason.split(path.resolve(__dirname, '../..')).length - 1).toBeLessThanOrEqual(1);
    expect((await adminConfig()).version).toBe(running);
    expect((await requestOnNewConnection(`${gateway.url}/api/x`)).status).toBe(200);
  });

  // The primary took the reload at once and handed its config to the workers saying hello: one they could not build
  // ended a starting worker, and the cluster stopped with exit 1 where one process refuses the reload and serves on.
  it('takes a reload signalled while its workers start once all serve: a config they cannot build is refused then, the start goes on', async () => {
    let running = '';
    gateway = await startGatewayProcess({
      config: config(),
      env: { GATEWAY_WORKERS: '2' },
      whileStarting: async (starting) => {
        running = String((await starting.waitForLine((line) => line.message === 'gateway primary started')).version);
        starting.writeConfig(config([route('api'), route('rpc', { methods: ['GET'], grpc: { proto: 'proto/missing.proto', service: 'x.v1.X' } })]));
        starting.child.kill('SIGHUP');
      },
    });
    await gateway.waitForLine((line) => line.message === 'config reload failed in the workers');
    expect((await adminConfig()).version).toBe(running);
    expect((await requestOnNewConnection(`${gateway.url}/api/x`)).status).toBe(200);
    expect(gateway.child.exitCode).toBeNull();
  });

  // With every worker gone (crashed, waiting to be replaced) a reload was "applied" by no one and became the config
  // each replacement started with: one they could not build ended every replacement, again and again. A reload that
  // reached a replacement still starting was its first config too, one it could not refuse.
  it('refuses a reload while its workers are being replaced when the replacements cannot build it, and they serve the running one', async () => {
    gateway = await start();
    const { version: running, workers } = await adminConfig();
    const from = gateway.lines.length;
    for (const worker of workers) process.kill(worker.pid, 'SIGKILL');
    await waitFor(() => gateway!.lines.slice(from).filter((line) => line.message === 'worker exited; replacing it').length === 2, 'both workers to exit');
    gateway.writeConfig(config([route('api'), route('rpc', { methods: ['GET'], grpc: { proto: 'proto/missing.proto', service: 'x.v1.X' } })]));
    gateway.child.kill('SIGHUP');
    const failed = await gateway.waitForLine((line) => line.message === 'config reload failed in the workers', { from, timeoutMs: 20_000 });
    expect(String(failed.reason)).toMatch(new RegExp(`could not build version [0-9a-f]+: .*proto/missing\\.proto.*; version ${running} restored$`));
    const serving = () => gateway!.lines.slice(from).filter((line) => line.message === 'worker listening');
    await waitFor(() => serving().length === 2, 'both replacements to serve');
    // Each started with the running config. (With every worker gone the test's port 0 was let go: the replacements
    // listen on another one, so they are asked there.)
    expect(serving().map((line) => line.version)).toEqual([running, running]);
    const messages = gateway.lines.slice(from).map((line) => line.message);
    expect(messages).not.toContain('config reloaded');
    expect(messages.filter((message) => message === 'worker exited; replacing it')).toHaveLength(2);
    expect((await requestOnNewConnection(`${String(serving()[1]!.url)}/api/x`)).status).toBe(200);
  });

  // A worker killed by the Ctrl-C in Node's own start-up (before its modules hold the signal) exits by SIGINT; when
  // that exit reached the primary before its own copy of the signal, it read a failed start and exited 1.
  it('takes a worker killed by SIGINT before the gateway started for a stop (exit 0), not a failed start', async () => {
    const gateway = spawnGateway({ GATEWAY_WORKERS: '2', USER_SERVICE_URL: upstream.url, ORDER_SERVICE_URL: upstream.url, NOTIF_SERVICE_URL: upstream.url });
    try {
      const children = () => readFileSync(`/proc/${gateway.child.pid}/task/${gateway.child.pid}/children`, 'utf8').trim();
      // Polled every millisecond: Node's start-up in the worker, before its modules hold the signal, takes tens of them.
      for (const deadline = Date.now() + 10_000; children() === '' && gateway.child.exitCode === null && Date.now() < deadline; ) await new Promise((resolve) => setTimeout(resolve, 1));
      process.kill(Number(children().split(' ')[0]), 'SIGINT');
      await waitFor(() => gateway.child.exitCode !== null, 'the primary to exit', 30_000);
      expect(gateway.child.exitCode).toBe(0);
      expect(gateway.lines.map((line) => line.message)).not.toContain('worker exited before the gateway started; stopping');
    } finally {
      if (gateway.child.exitCode === null) gateway.child.kill('SIGKILL');
    }
  });

  it('stops with exit code 1 when the workers cannot start (a taken admin port), instead of retrying forever', async () => {
    const taken = await namedUpstream('occupant');
    try {
      const gateway = spawnGateway({ GATEWAY_WORKERS: '2', ADMIN_PORT: new URL(taken.url).port, USER_SERVICE_URL: upstream.url, ORDER_SERVICE_URL: upstream.url, NOTIF_SERVICE_URL: upstream.url });
      // 'close': exited and its output read to the end.
      await new Promise((resolve) => gateway.child.once('close', resolve));
      expect(gateway.child.exitCode).toBe(1);
      expect(gateway.lines.map((line) => line.message)).toContain('worker exited before the gateway started; stopping');
      expect(gateway.lines.map((line) => line.message)).not.toContain('gateway listening');
    } finally {
      await taken.close();
    }
  });

  // With telemetry off nothing else listened for SIGTERM: the primary let the hold go before listening itself, Node
  // closed the signal's handle, and the SIGTERM caught while the modules loaded was dropped. It forked and served on.
  it('stops (exit 0) on a SIGTERM that arrived while the primary was loading, telemetry off', async () => {
    const fixture = path.join(__dirname, '../fixtures/sigterm-while-loading.js');
    const gateway = spawnGateway({ GATEWAY_WORKERS: '2', USER_SERVICE_URL: upstream.url, ORDER_SERVICE_URL: upstream.url, NOTIF_SERVICE_URL: upstream.url }, ['--require', fixture]);
    try {
      await waitFor(() => gateway.child.exitCode !== null, 'the primary to exit', 20_000);
      expect(gateway.child.exitCode).toBe(0);
    } finally {
      if (gateway.child.exitCode === null) gateway.child.kill('SIGKILL');
    }
  });

  it('on SIGTERM drains every worker: the request in flight completes, its span is flushed, and the primary exits 0', async () => {
    receiver = await startOtlpReceiver();
    // Spans leave only at shutdown (no scheduled export within the test), so their arrival proves the flush.
    gateway = await start({ OTEL_BSP_SCHEDULE_DELAY: '600000', OTEL_TRACES_SAMPLER: 'always_on', OTEL_METRICS_EXPORTER: 'none', OTEL_LOGS_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url }, true);
    const response = await fetch(`${gateway.url}/api/stream`);
    const inFlight = response.text().then((body) => ({ status: response.status, body }));
    gateway.child.kill('SIGTERM');
    const finished = await inFlight;
    expect(finished.status).toBe(200);
    expect(finished.body.trim().split('\n')).toHaveLength(6);
    expect(await gateway.exited()).toBe(0);
    const received = await receiver.waitFor(({ spans }) => spans.some((span) => span.kind === 'SERVER' && span.attributes['url.path'] === '/api/stream'));
    expect(received.spans.some((span) => span.kind === 'SERVER' && span.attributes['url.path'] === '/api/stream')).toBe(true);
  });

  it('closes connections over server.maxConnections at accept, as one process does (the primary kept them open and new clients hung)', async () => {
    gateway = await startGatewayProcess({ config: { ...config(), server: { maxConnections: 5 } }, env: { GATEWAY_WORKERS: '2' } });
    const { port } = new URL(gateway.url);
    const held: net.Socket[] = [];
    try {
      // Two workers, five each: ten held at most, the others have no room.
      for (let i = 0; i < 20; i++) {
        const socket = net.connect(Number(port), '127.0.0.1');
        socket.on('error', () => undefined);
        held.push(socket);
        await new Promise((resolve) => socket.once('connect', resolve));
      }
      // Which ones go over depends on how the primary hands them out; at least ten are closed, not left hanging open.
      const closedByGateway = () => held.filter((socket) => socket.destroyed || socket.readyState === 'closed' || socket.readableEnded).length;
      await waitFor(() => closedByGateway() >= 10, 'the connections over the cap to be closed', 10_000).catch(() => undefined);
      expect(closedByGateway()).toBeGreaterThanOrEqual(10);
    } finally {
      for (const socket of held) socket.destroy();
    }
  });
});
