import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { METRIC } from '../../otel/wire-names';
import { namedUpstream, requestOnNewConnection, startGatewayProcess, type Answer, type GatewayProcess } from '../helpers/gateway-process';
import { OPENMETRICS_CONTENT_TYPE, parseOpenMetrics, parsePrometheusText, PROMETHEUS_ACCEPT, scrapeWhen, TEXT_1_0_0_CONTENT_TYPE, TEXT_FORMAT_CONTENT_TYPE, type Exposition } from '../helpers/openmetrics';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver';
import { promqlGroupingLabels, promqlSelectors, readDashboards } from '../stack/stack-files';

/**
 * The scrape endpoint negotiates its format (OpenMetrics 1.0 "Protocol Negotiation", RFC 9110 12.5.1), on every
 * listener that serves it: one process's, and a cluster primary's sum of its workers. A client that asked only for
 * the Prometheus text format 0.0.4 (promtool, older scrapers) was answered OpenMetrics, whose exemplars it cannot
 * parse; and OpenMetrics' `le` values were not canonical (`le="1"`, where the spec writes `1.0`).
 */
// Real processes (a cluster: three), slow on a busy machine.
jest.setTimeout(120_000);

/** Debian's `prometheus` package installs it; the checks that need it are skipped (and say so) without it. */
const PROMTOOL = spawnSync('promtool', ['--version']).status === 0 ? 'promtool' : undefined;
const withPromtool = PROMTOOL ? it : it.skip;
const promtoolNote = PROMTOOL ? '' : ' (skipped: promtool is not installed)';

type Upstream = Awaited<ReturnType<typeof namedUpstream>>;

/** Labels Prometheus adds to a scraped series itself (the target's), never in the exposition. */
const TARGET_LABELS: ReadonlySet<string> = new Set(['job', 'instance']);

/**
 * The gateway's series the Grafana dashboards query (`job="gateway"`): each selector's metric name, and every label
 * it matches on or the expression groups by. The static dashboard tests read the names from otel/wire-names.ts;
 * these are checked against what a scrape really answers.
 */
const DASHBOARD_GATEWAY_SELECTORS = readDashboards()
  .flatMap(({ panels }) => panels.flatMap((panel) => (panel.targets ?? []).map((target) => target.expr ?? '')))
  .flatMap((expr) =>
    promqlSelectors(expr)
      .filter((selector) => selector.matchers.some((m) => m.label === 'job' && m.op === '=' && m.value === 'gateway'))
      .map((selector) => ({
        expr,
        metric: selector.metric,
        labels: [...new Set([...selector.matchers.map((m) => m.label), ...promqlGroupingLabels(expr)])].filter((label) => !TARGET_LABELS.has(label)),
      })),
  );

describe.each([
  { mode: 'one process', workers: undefined },
  { mode: "a cluster primary (the workers' sum)", workers: '2' },
])('the metrics listener of $mode', ({ workers }) => {
  let upstream: Upstream;
  let receiver: OtlpReceiver;
  let gateway: GatewayProcess;
  let metricsUrl: string;
  let startedAt: number;
  const scrapeAs = (accept: string | undefined, method = 'GET'): Promise<Answer> =>
    requestOnNewConnection(`${metricsUrl}/metrics`, { method, headers: accept === undefined ? {} : { accept } });

  beforeAll(async () => {
    upstream = await namedUpstream('api');
    receiver = await startOtlpReceiver();
    startedAt = Date.now() / 1000;
    const route = (name: string, extra: Record<string, unknown> = {}) => ({ name, prefix: `/${name}`, service: 'api', upstreamPath: '', auth: 'public', ...extra });
    gateway = await startGatewayProcess({
      // A cached route, a limited one: every family the dashboards query has series.
      config: { services: { users: { url: upstream.url }, api: { url: upstream.url } }, routes: [route('api', { cache: { ttlSeconds: 60 } }), route('limited', { rateLimit: { max: 5, windowMs: 60_000 } })] },
      // Traced and sampled, so one process's duration buckets carry exemplars.
      env: { METRICS_PORT: '0', OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_TRACES_SAMPLER: 'always_on', OTEL_METRICS_EXPORTER: 'none', OTEL_LOGS_EXPORTER: 'none', ...(workers ? { GATEWAY_WORKERS: workers } : {}) },
      telemetry: true,
    });
    metricsUrl = String((await gateway.waitForLine((line) => line.message === 'metrics listener started')).url);
    for (let i = 0; i < 6; i++) await requestOnNewConnection(`${gateway.url}/${i % 2 ? 'api' : 'limited'}/${i}`);
    await scrapeWhen(metricsUrl, (exposition) => exposition.samples.filter((sample) => sample.name === `${METRIC.requestDuration}_count`).reduce((sum, sample) => sum + sample.value, 0) === 6, 10_000);
  });
  afterAll(async () => {
    if (gateway?.child.exitCode === null) gateway.child.kill('SIGKILL');
    await receiver?.close();
    await upstream?.close();
  });

  it.each([
    { desc: 'a scrape without Accept', accept: undefined, type: TEXT_FORMAT_CONTENT_TYPE },
    { desc: 'a scrape accepting anything (*/*)', accept: '*/*', type: TEXT_FORMAT_CONTENT_TYPE },
    { desc: 'a scrape accepting only the text format 0.0.4 (promtool, older scrapers)', accept: 'text/plain;version=0.0.4', type: TEXT_FORMAT_CONTENT_TYPE },
    { desc: 'Prometheus (OpenMetrics preferred)', accept: PROMETHEUS_ACCEPT, type: OPENMETRICS_CONTENT_TYPE },
    { desc: 'a scrape naming OpenMetrics', accept: 'application/openmetrics-text', type: OPENMETRICS_CONTENT_TYPE },
    { desc: 'a scrape weighting the text format above OpenMetrics', accept: 'application/openmetrics-text;version=1.0.0;q=0.3, text/plain;version=0.0.4;q=0.5', type: TEXT_FORMAT_CONTENT_TYPE },
    { desc: 'a scrape accepting only the text format 1.0.0 (Prometheus 3, PrometheusText1.0.0)', accept: 'text/plain;version=1.0.0;escaping=allow-utf-8', type: TEXT_1_0_0_CONTENT_TYPE },
    { desc: 'a scrape accepting neither format (406)', accept: 'application/json', type: undefined },
  ])('answers $desc in the format it asked for, with Vary: Accept (and Accept-Encoding on a scrape)', async ({ accept, type }) => {
    for (const method of ['GET', 'HEAD']) {
      const answer = await scrapeAs(accept, method);
      expect(answer.headers.vary).toBe(type === undefined ? 'Accept' : 'Accept, Accept-Encoding');
      if (type === undefined) {
        expect(answer.status).toBe(406);
        continue;
      }
      expect({ status: answer.status, type: answer.headers['content-type'] }).toEqual({ status: 200, type });
      if (method === 'GET') expect(type === OPENMETRICS_CONTENT_TYPE ? parseOpenMetrics(answer.body) : parsePrometheusText(answer.body)).toBeDefined();
    }
  });

  it('has dashboard queries of the gateway to check', () => {
    expect(DASHBOARD_GATEWAY_SELECTORS.length).toBeGreaterThan(0);
  });

  it.each([
    { desc: 'OpenMetrics (what Prometheus asks for)', accept: PROMETHEUS_ACCEPT, parse: parseOpenMetrics },
    { desc: 'the text format 0.0.4 (the fallback scrape protocol)', accept: 'text/plain;version=0.0.4', parse: parsePrometheusText },
  ])('serves, in $desc, every series the Grafana dashboards query, with every label they match or group by', async ({ accept, parse }) => {
    const exposition = parse((await scrapeAs(accept)).body);
    const missing = DASHBOARD_GATEWAY_SELECTORS.flatMap(({ expr, metric, labels }) => {
      const samples = exposition.samples.filter((sample) => sample.name === metric);
      if (samples.length === 0) return [`${metric}: no such series (${expr})`];
      return labels.filter((label) => !samples.every((sample) => label in sample.labels)).map((label) => `${metric}: no label ${label} (${expr})`);
    });
    expect(missing).toEqual([]);
  });

  /** Each sample's name and labels, `le` as a number: what the two formats must agree on. */
  const seriesOf = (exposition: Exposition) =>
    exposition.samples
      .filter((sample) => !sample.name.endsWith('_created'))
      .map((sample) => `${sample.name}${JSON.stringify(Object.entries(sample.labels).map(([name, value]) => [name, name === 'le' ? Number(value) : value]))}`)
      .sort();

  it('answers the text format without exemplars, _created or # EOF, its counters named *_total, `le` as Go writes it', async () => {
    const answer = await scrapeAs('text/plain;version=0.0.4');
    const text = parsePrometheusText(answer.body);
    expect(answer.body).not.toMatch(/# EOF|_created|# \{/);
    expect(text.types.get(METRIC.rateLimitDecisions)).toBe('counter');
    expect(text.samples.filter((sample) => sample.name === METRIC.rateLimitDecisions).length).toBeGreaterThan(0);
    expect(new Set(text.samples.flatMap((sample) => sample.labels.le ?? []))).toEqual(new Set(['0.005', '0.01', '0.025', '0.05', '0.075', '0.1', '0.25', '0.5', '0.75', '1', '2.5', '5', '7.5', '10', '+Inf']));
    // The same series as the OpenMetrics answer.
    expect(seriesOf(text)).toEqual(seriesOf(parseOpenMetrics((await scrapeAs(PROMETHEUS_ACCEPT)).body)));
  });

  it('answers OpenMetrics with canonical `le` values, a _created for every counter and histogram series, and exemplars', async () => {
    const answer = await scrapeAs(PROMETHEUS_ACCEPT);
    const openMetrics = parseOpenMetrics(answer.body);
    expect(new Set(openMetrics.samples.flatMap((sample) => sample.labels.le ?? []))).toEqual(new Set(['0.005', '0.01', '0.025', '0.05', '0.075', '0.1', '0.25', '0.5', '0.75', '1.0', '2.5', '5.0', '7.5', '10.0', '+Inf']));
    const cumulative = [...openMetrics.types].filter(([, type]) => type === 'counter' || type === 'histogram').map(([name]) => name);
    const withoutLe = (labels: Record<string, string>) => JSON.stringify(Object.entries(labels).filter(([name]) => name !== 'le'));
    for (const family of cumulative) {
      const series = new Set(openMetrics.samples.filter((sample) => sample.name === `${family}_total` || sample.name === `${family}_count`).map((sample) => withoutLe(sample.labels)));
      const created = openMetrics.samples.filter((sample) => sample.name === `${family}_created`);
      expect(new Set(created.map((sample) => withoutLe(sample.labels)))).toEqual(series);
      // When the counts began: after this test started the process, before the first request.
      for (const sample of created) expect(sample.value).toBeGreaterThanOrEqual(Math.floor(startedAt));
      for (const sample of created) expect(sample.value).toBeLessThanOrEqual(Date.now() / 1000);
    }
    expect(openMetrics.samples.some((sample) => sample.name === `${METRIC.requestDuration}_created`)).toBe(true);
    // A cluster's sum too: each bucket keeps an exemplar of a worker's (the dashboards' latency dots).
    expect(openMetrics.samples.some((sample) => sample.exemplar !== undefined)).toBe(true);
  });

  withPromtool(`passes promtool's text-format parser and linter${promtoolNote}`, async () => {
    const answer = await scrapeAs('text/plain;version=0.0.4');
    const check = spawnSync(PROMTOOL!, ['check', 'metrics'], { input: answer.body, encoding: 'utf8' });
    expect({ status: check.status, output: check.stdout + check.stderr }).toEqual({ status: 0, output: '' });
  });

  // promtool's one command that reads OpenMetrics (Prometheus' own parser) wants a timestamp on every sample.
  withPromtool(`passes Prometheus' OpenMetrics parser (promtool tsdb create-blocks-from openmetrics)${promtoolNote}`, async () => {
    const answer = await scrapeAs(PROMETHEUS_ACCEPT);
    const now = Math.floor(Date.now() / 1000);
    const stamped = answer.body.replace(/^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})? \S+)/gm, `$1 ${now}`);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'openmetrics-'));
    try {
      writeFileSync(path.join(dir, 'scrape.om'), stamped);
      const check = spawnSync(PROMTOOL!, ['tsdb', 'create-blocks-from', 'openmetrics', '--quiet', path.join(dir, 'scrape.om'), path.join(dir, 'blocks')], { encoding: 'utf8' });
      expect({ status: check.status, output: check.stdout + check.stderr }).toEqual({ status: 0, output: '' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
