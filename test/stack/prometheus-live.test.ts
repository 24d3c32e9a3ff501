import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { EXEMPLAR_LABEL, METRIC, METRIC_LABEL_VALUE, SERVICE_NAME } from '../../otel/wire-names';
import { startOtlpPrometheusBridge, type OtlpPrometheusBridge } from '../helpers/otlp-prometheus-bridge';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver';
import { startProcessStack, type ProcessStack } from '../helpers/process-stack';
import { checkConfig, prometheusVersion, startPrometheus, type PrometheusProcess } from '../helpers/prometheus-process';
import { startOwnRedis, type OwnRedis } from '../helpers/redis';
import { freePort, refusedOrigin } from '../helpers/servers';
import { shippedConfigFile } from '../helpers/test-config';
import { asList, asMap, promqlGroupingLabels, promqlSelectors, readDashboards, readDatasources, readYaml, type DashboardPanel } from './stack-files';

/**
 * Every Prometheus query of grafana/dashboards/*.json, run by the real `prometheus` binary against the real gateway
 * (scraped as otel/prometheus.yaml scrapes it) and the three real services (their OTLP metrics), after traffic whose
 * every count is known: each panel must find the metrics and labels it names and show what its title says. The
 * static checks of the same files are grafana.test.ts and prometheus.test.ts.
 *
 * Debian's Prometheus (2.42) is older than the pinned one (3.14), so two things differ from compose, both stated
 * where they happen: otel/prometheus.yaml loses the keys 2.42 does not know (`scrape_protocols`, which only orders
 * formats it negotiates anyway, OpenMetrics first; `otlp`), and the services' OTLP metrics reach it through a
 * scrape of what Prometheus 3's OTLP receiver would store (test/helpers/otlp-prometheus-bridge.ts), not through
 * the receiver itself, which 2.42 lacks.
 */

const VERSION = prometheusVersion();
const skipNote = VERSION ? '' : ' (skipped: the prometheus binary is not installed; .ci/run installs Debian\'s package)';
const describeLive = VERSION ? describe : describe.skip;

/** Scrape interval here (compose: 15 s): seconds, not minutes, per test. Grafana's minimum step is the same. */
const SCRAPE_SECONDS = 1;
/** How long a wait for Prometheus to catch up may take, ms. */
const CATCH_UP_MS = 30_000;
/** Prometheus's job scraping the OTLP receiver's stand-in (test/helpers/otlp-prometheus-bridge.ts). */
const BRIDGE_JOB = 'otlp-receiver-stand-in';

const PROMETHEUS_CONFIG = asMap(readYaml('otel/prometheus.yaml'), 'otel/prometheus.yaml');
const dashboards = readDashboards();
const datasources = readDatasources();

/**
 * otel/prometheus.yaml with the gateway job's target rewritten to `gateway`, intervals shortened, the keys this
 * binary predates dropped (named in `dropped`), and one job for the services' OTLP metrics (`bridge`).
 */
function testConfig(gateway: string, bridge: string): { config: Record<string, unknown>; dropped: string[] } {
  const config = structuredClone(PROMETHEUS_CONFIG);
  const dropped: string[] = [];
  const [major, minor] = VERSION!;
  config.global = { ...asMap(config.global, 'global'), scrape_interval: `${SCRAPE_SECONDS}s`, scrape_timeout: `${SCRAPE_SECONDS}s` };
  const jobs = asList(config.scrape_configs, 'scrape_configs').map((c) => asMap(c, 'scrape_configs[]'));
  const gatewayJob = jobs.find((job) => job.job_name === SERVICE_NAME.gateway);
  if (!gatewayJob) throw new Error('otel/prometheus.yaml: no gateway job');
  gatewayJob.static_configs = [{ targets: [gateway] }];
  // scrape_protocols came in 2.49, otlp.translation_strategy in 3.0.
  if (major < 2 || (major === 2 && minor < 49)) {
    for (const job of jobs.filter((j) => 'scrape_protocols' in j)) {
      delete job.scrape_protocols;
      dropped.push(`scrape_configs[${String(job.job_name)}].scrape_protocols`);
    }
  }
  if (major < 3 && 'otlp' in config) {
    delete config.otlp;
    dropped.push('otlp');
  }
  // What the OTLP receiver would store, with the job and instance it would give (service.name, service.instance.id).
  config.scrape_configs = [...jobs, { job_name: BRIDGE_JOB, honor_labels: true, static_configs: [{ targets: [bridge] }] }];
  return { config, dropped };
}

// ---- Traffic --------------------------------------------------------------------------------------------------

interface Call {
  desc: string;
  /** The route's `http_route` label (its template; `unmatched` for no route). */
  route: string;
  path: string;
  method?: string;
  auth?: 'token' | 'bad';
  body?: unknown;
  status: number;
  /** The status of each warm-up call (default: `status`, `warmUp` times). */
  warmUpStatuses?: number[];
  warmUp: number;
  measured: number;
}

const ALICE = { email: 'alice@example.com', password: 'wonderland' };

/**
 * Every kind of call, once or more in the warm-up (so that each series exists before the measured part: rate()
 * cannot count a series' first sample), then `measured` times. Measured: 35 requests, 3 of them 5xx.
 */
const CALLS: Call[] = [
  // Its warm-up is the login that gets the token.
  { desc: 'login', route: '/api/auth/login', path: '/api/auth/login', method: 'POST', body: ALICE, status: 200, warmUp: 0, measured: 1 },
  { desc: 'a user (cached: a miss, then hits)', route: '/api/users/*', path: '/api/users/1', auth: 'token', status: 200, warmUp: 1, measured: 10 },
  { desc: 'orders', route: '/api/orders/*', path: '/api/orders', auth: 'token', status: 200, warmUp: 1, measured: 5 },
  { desc: 'orders without a token', route: '/api/orders/*', path: '/api/orders', status: 401, warmUp: 1, measured: 4 },
  { desc: 'orders with a bad token', route: '/api/orders/*', path: '/api/orders', auth: 'bad', status: 401, warmUp: 1, measured: 2 },
  { desc: 'no route', route: 'unmatched', path: '/nope', status: 404, warmUp: 1, measured: 3 },
  { desc: 'notifications', route: '/api/notifications/*', path: '/api/notifications', auth: 'token', status: 200, warmUp: 1, measured: 2 },
  { desc: 'notifications over gRPC (REST to gRPC)', route: '/api/v1/notifications/*', path: '/api/v1/notifications', auth: 'token', status: 200, warmUp: 1, measured: 3 },
  { desc: 'a route allowing one request (then 429)', route: '/api/limited', path: '/api/limited', auth: 'token', status: 429, warmUp: 2, warmUpStatuses: [200, 429], measured: 2 },
  { desc: 'a service whose two instances refuse (502)', route: '/api/down/*', path: '/api/down', status: 502, warmUp: 1, measured: 1 },
  { desc: 'a service slower than the route timeout (504)', route: '/api/slow/*', path: '/api/slow', status: 504, warmUp: 1, measured: 2 },
];

const MEASURED_TOTAL = CALLS.reduce((n, c) => n + c.measured, 0);

function measuredWhere(predicate: (call: Call) => boolean): number {
  return CALLS.filter(predicate).reduce((n, c) => n + c.measured, 0);
}

/** An upstream that answers only when released (a request in flight for as long as the test wants). */
async function holdingUpstream() {
  const held: http.ServerResponse[] = [];
  const server = http.createServer((_req, res) => void held.push(res));
  server.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    held: () => held.length,
    release: () => held.splice(0).forEach((res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{}')),
    close: () => new Promise<void>((resolve) => (server.closeAllConnections(), server.close(() => resolve()))),
  };
}

/** An upstream that answers after `ms`. */
async function slowUpstream(ms: number) {
  const timers = new Set<NodeJS.Timeout>();
  const server = http.createServer((_req, res) => {
    const timer = setTimeout(() => (timers.delete(timer), res.end('{}')), ms);
    timers.add(timer);
  });
  server.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => (timers.forEach(clearTimeout), server.closeAllConnections(), server.close(() => resolve()))),
  };
}

// ---- Grafana's substitutions ------------------------------------------------------------------------------------

/**
 * An expression as Grafana sends it: `$__interval` is the step, `$__rate_interval` max(step + scrape interval, 4 x
 * scrape interval) (the data source's timeInterval is the scrape interval), `$__range` the whole range, a variable
 * its value (a multi-value or All variable: its values as a regex alternation).
 */
function substitute(expr: string, stepSeconds: number, rangeSeconds: number, variables: Record<string, string[]>): string {
  const rateInterval = Math.max(stepSeconds + SCRAPE_SECONDS, 4 * SCRAPE_SECONDS);
  let out = expr
    .replace(/\$\{?__rate_interval\}?/g, `${rateInterval}s`)
    .replace(/\$\{?__interval\}?/g, `${stepSeconds}s`)
    .replace(/\$\{?__range\}?/g, `${rangeSeconds}s`)
    .replace(/\$\{?__range_s\}?/g, String(rangeSeconds));
  for (const [name, values] of Object.entries(variables)) {
    const value = values.length === 1 ? values[0]! : `(${values.map((v) => v.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})`;
    out = out.replace(new RegExp(String.raw`\$\{${name}(?::\w+)?\}|\$${name}\b|\[\[${name}\]\]`, 'g'), value);
  }
  return out;
}

/**
 * The expression with each `rate(selector[$__rate_interval])` as the exact increase between two instants divided by
 * their distance: `(selector - selector offset Ns) / N`. rate() extrapolates each series' increase to its window's
 * edges, a little differently per series over a window of a few scrapes, so the dashboard's own expression gives
 * numbers within some tens of percent of the truth; this one gives the truth, with the same selectors, matchers,
 * aggregations and ratios, for the numbers each panel must show.
 */
function exactRates(expr: string, ms: number): string {
  const out = expr.replace(/\brate\(([^()[\]]+)\[\$__rate_interval\]\)/g, (_m, selector: string) => `((${selector} - ${selector} offset ${ms}ms) / ${ms / 1000})`);
  if (/\b(rate|irate|increase|delta|idelta|deriv)\(/.test(out)) throw new Error(`exactRates: a range function it cannot rewrite: ${expr}`);
  return out;
}

/** `{{label}}` names of a legend format. */
function legendLabels(format: string | undefined): string[] {
  return [...(format ?? '').matchAll(/\{\{\s*(\w+)\s*\}\}/g)].map((m) => m[1]!);
}

interface PromTarget {
  key: string;
  panel: DashboardPanel;
  expr: string;
  legendFormat?: string;
  exemplar: boolean;
  range: boolean;
}

function promTargets(panels: DashboardPanel[]): PromTarget[] {
  return panels
    .filter((p) => p.type !== 'row')
    .flatMap((panel) =>
      (panel.targets ?? [])
        .filter((t) => (t.datasource ?? panel.datasource)?.type === 'prometheus')
        .map((t) => {
          const target = t as typeof t & { legendFormat?: string; range?: boolean; instant?: boolean };
          return { key: `${panel.title} (${t.refId ?? 'A'})`, panel, expr: t.expr ?? '', legendFormat: target.legendFormat, exemplar: t.exemplar === true, range: target.range !== false };
        }),
    );
}

// ---- What each panel must show ----------------------------------------------------------------------------------

type Series = { metric: Record<string, string>; value: number };

interface Observed {
  /** The instant vector of the expression at the end of the measured traffic. */
  result: Series[];
  /** The value of "Request rate" (all routes), the unit of every ratio below. */
  requestRate: number;
  /** GATEWAY_WORKERS. */
  workers: number;
}

function near(actual: number, expected: number, what: string): void {
  const ok = expected === 0 ? actual === 0 : Math.abs(actual / expected - 1) <= 1e-9;
  if (!ok) throw new Error(`${what}: ${actual}, expected ${expected}`);
}

function one(result: Series[], what: string): number {
  if (result.length !== 1) throw new Error(`${what}: ${result.length} series, expected one: ${JSON.stringify(result)}`);
  return result[0]!.value;
}

function byLabel(result: Series[], label: string): Record<string, number> {
  return Object.fromEntries(result.map((s) => [s.metric[label] ?? '', s.value]));
}

/** Ratios of each series' value to the request rate, by one label: what the traffic table says they are. */
function ratios(result: Series[], label: string, requestRate: number, expected: Record<string, number>, what: string): void {
  const got = byLabel(result, label);
  const nonZero = Object.keys(got).filter((k) => got[k]! > 0);
  expect({ what, labels: nonZero.sort() }).toEqual({ what, labels: Object.keys(expected).filter((k) => expected[k]! > 0).sort() });
  for (const [value, count] of Object.entries(expected)) near(got[value] ?? 0, (count / MEASURED_TOTAL) * requestRate, `${what} ${label}=${value}`);
}

const SERVICE_JOBS = [SERVICE_NAME.users, SERVICE_NAME.orders, SERVICE_NAME.notifications];

/**
 * By panel title and refId: what its series must be after the traffic of CALLS. A panel without an entry fails the
 * test: a new panel says here what it means.
 */
const EXPECTATIONS: Record<string, (o: Observed) => void> = {
  'Request rate (A)': ({ result }) => expect(one(result, 'request rate')).toBeGreaterThan(0),
  '5xx ratio (A)': ({ result }) => near(one(result, '5xx ratio'), measuredWhere((c) => c.status >= 500) / MEASURED_TOTAL, '5xx ratio'),
  // 2 of the 32 took the route's 300 ms timeout: more than 5 %, so the 95th percentile is in their bucket.
  'p95 latency (A)': ({ result }) => {
    const p95 = one(result, 'p95');
    expect(p95).toBeGreaterThan(0.25);
    expect(p95).toBeLessThanOrEqual(0.5);
  },
  'In flight (A)': () => undefined, // checked while a request is held: see IN_FLIGHT
  'Request rate by route (A)': ({ result, requestRate }) => {
    const expected: Record<string, number> = {};
    for (const c of CALLS) expected[c.route] = (expected[c.route] ?? 0) + c.measured;
    ratios(result, 'http_route', requestRate, expected, 'request rate by route');
  },
  '5xx ratio by route (A)': ({ result }) => {
    expect(byLabel(result, 'http_route')).toEqual({ '/api/down/*': 1, '/api/slow/*': 1 });
  },
  ...Object.fromEntries(
    ['A', 'B', 'C'].map((refId) => [
      `Latency by route: p50, p95, p99 (dots: exemplars, click one to open its trace) (${refId})`,
      ({ result }: Observed) => {
        const quantiles = byLabel(result, 'http_route');
        expect(Object.keys(quantiles).sort()).toEqual([...new Set(CALLS.map((c) => c.route))].sort());
        // Every request of the slow route took its 300 ms timeout: between the 0.25 and 0.5 bounds.
        expect(quantiles['/api/slow/*']).toBeGreaterThan(0.25);
        expect(quantiles['/api/slow/*']).toBeLessThanOrEqual(0.5);
        expect(quantiles['unmatched']).toBeLessThan(0.25);
      },
    ]),
  ),
  'Upstream latency by service (p95) (A)': ({ result }) => {
    const p95 = byLabel(result, 'gateway_upstream_service');
    for (const service of ['orders', 'notifications', 'down', 'slow']) expect({ service, finite: Number.isFinite(p95[service]) }).toEqual({ service, finite: true });
    expect(p95.slow).toBeGreaterThan(0.25);
    expect(p95.slow).toBeLessThanOrEqual(0.5);
  },
  'Upstream outcomes, retries and ejections (A)': ({ result, requestRate }) => {
    const got = Object.fromEntries(result.map((s) => [`${s.metric.gateway_upstream_service} ${s.metric.gateway_upstream_outcome}`, s.value]));
    // Attempts: the cached user's hits never reach users (nor does the login's check, which is no proxied attempt);
    // each refused request is tried on both instances of `down`; a timeout is not retried.
    const expected: Record<string, number> = { 'orders ok': 5, 'notifications ok': 2 + 3, 'down refused': 2, 'slow timeout': 2 };
    expect(Object.keys(got).filter((k) => got[k]! > 0).sort()).toEqual(Object.keys(expected).sort());
    for (const [key, count] of Object.entries(expected)) near(got[key]!, (count / MEASURED_TOTAL) * requestRate, `upstream ${key}`);
  },
  // The one refused request was retried once, on the other instance; with that both had failed twice: ejected. A
  // cluster's workers each keep their own failure counts, and which worker took the warm-up's request is not ours
  // to choose: there, up to two.
  // The attempts that ended with an error, by error.type: no service answered a 4xx or 5xx, so the outcomes of the
  // attempts that got no answer (each refused request on both instances of `down`; the timeouts of `slow`).
  'Upstream outcomes, retries and ejections (D)': ({ result, requestRate }) => {
    const got = Object.fromEntries(result.map((s) => [`${s.metric.gateway_upstream_service} ${s.metric.error_type}`, s.value]));
    const expected: Record<string, number> = { 'down refused': 2, 'slow timeout': 2 };
    expect(Object.keys(got).filter((k) => got[k]! > 0).sort()).toEqual(Object.keys(expected).sort());
    for (const [key, count] of Object.entries(expected)) near(got[key]!, (count / MEASURED_TOTAL) * requestRate, `upstream error ${key}`);
  },
  'Upstream outcomes, retries and ejections (B)': ({ result, requestRate }) => near(one(result, 'retries'), (1 / MEASURED_TOTAL) * requestRate, 'retries'),
  'Upstream outcomes, retries and ejections (C)': ({ result, requestRate, workers }) => {
    if (workers === 1) return near(one(result, 'ejections'), (2 / MEASURED_TOTAL) * requestRate, 'ejections');
    expect(one(result, 'ejections')).toBeLessThanOrEqual((2 / MEASURED_TOTAL) * requestRate * (1 + 1e-9));
  },
  'Rate-limit decisions by policy (A)': ({ result, requestRate }) => {
    const got = Object.fromEntries(result.map((s) => [`${s.metric.gateway_rate_limit_policy} ${s.metric.gateway_rate_limit_decision}`, s.value]));
    // Every decision of every policy, from the start: the zeros are series too.
    const policies = ['default', 'login', 'login-account', 'register', 'limited'];
    expect(Object.keys(got).sort()).toEqual(policies.flatMap((p) => ['allowed', 'limited', 'store_down_allowed', 'store_down_rejected'].map((d) => `${p} ${d}`)).sort());
    // A route with a policy of its own is not counted under default; the login meets its client's and its account's;
    // a request no route took (404) meets the default one, as any other.
    const routed = (c: Call) => c.desc !== 'login' && c.route !== '/api/limited';
    const expected: Record<string, number> = { 'default allowed': measuredWhere(routed), 'login allowed': 1, 'login-account allowed': 1, 'limited limited': measuredWhere((c) => c.status === 429) };
    expect(Object.keys(got).filter((k) => got[k]! > 0).sort()).toEqual(Object.keys(expected).sort());
    for (const [key, count] of Object.entries(expected)) near(got[key]!, (count / MEASURED_TOTAL) * requestRate, key);
  },
  'Response cache lookups by route (A)': ({ result, requestRate }) => {
    const got = Object.fromEntries(result.map((s) => [`${s.metric.gateway_route_name} ${s.metric.gateway_cache_result}`, s.value]));
    // Only the users route caches; the warm-up stored the user, so every measured GET of it was a hit.
    expect(Object.keys(got).sort()).toEqual(['users bypass', 'users hit', 'users miss', 'users revalidated', 'users stale']);
    expect(Object.keys(got).filter((k) => got[k]! > 0)).toEqual(['users hit']);
    near(got['users hit']!, (10 / MEASURED_TOTAL) * requestRate, 'users hit');
  },
  'Auth failures by reason (A)': ({ result, requestRate }) =>
    ratios(result, 'error_type', requestRate, { missing_token: 4, invalid_token: 2 }, 'auth failures'),
  'In-flight requests by method (A)': () => undefined, // see IN_FLIGHT
  'Services: request rate (A)': ({ result }) => {
    const rates = byLabel(result, 'job');
    expect(Object.keys(rates).sort()).toEqual([...SERVICE_JOBS].sort());
    for (const job of SERVICE_JOBS) expect({ job, rate: rates[job]! > 0 }).toEqual({ job, rate: true });
  },
  'Services: gRPC calls by method and status (A)': ({ result }) => {
    const got = Object.fromEntries(result.map((s) => [`${s.metric.job} ${s.metric.rpc_method} ${s.metric.rpc_status_code}`, s.value]));
    const calls = `${SERVICE_NAME.notifications} koagateway.notifications.v1.Notifications/ListNotifications OK`;
    expect(Object.keys(got)).toEqual([calls]);
    expect(got[calls]).toBeGreaterThan(0);
  },
  'Services: p95 latency (A)': ({ result }) => {
    const p95 = byLabel(result, 'job');
    expect(Object.keys(p95).sort()).toEqual([...SERVICE_JOBS].sort());
    for (const job of SERVICE_JOBS) expect({ job, finite: Number.isFinite(p95[job]) && p95[job]! > 0 }).toEqual({ job, finite: true });
  },
};

/** Panels about requests in progress: checked while one GET is held at an upstream. */
const IN_FLIGHT: Record<string, (result: Series[]) => void> = {
  'In flight (A)': (result) => expect(one(result, 'in flight')).toBe(1),
  'In-flight requests by method (A)': (result) => expect(byLabel(result, 'http_request_method')).toEqual({ GET: 1, POST: 0 }),
};

// ---- The run ------------------------------------------------------------------------------------------------------

describeLive.each([{ workers: 1 }, { workers: 2 }])(`the dashboards against the real Prometheus, gateway with $workers worker(s)${skipNote}`, ({ workers }) => {
  let receiver: OtlpReceiver;
  let bridge: OtlpPrometheusBridge;
  let redis: OwnRedis;
  let stack: ProcessStack | undefined;
  let prometheus: PrometheusProcess | undefined;
  let held: Awaited<ReturnType<typeof holdingUpstream>>;
  let slow: Awaited<ReturnType<typeof slowUpstream>>;
  let configDir: string;
  let dropped: string[] = [];
  let tokenHeader = '';
  const sentByStatus = new Map<number, number>();
  /** Measured part: from its first request to the scrape that saw its last. */
  let start = 0;
  let end = 0;
  /** Milliseconds between the scrape that saw the warm-up and the one that saw the measured part. */
  let measuredMs = 0;
  let inFlightAt = 0;
  let requestRate = 0;

  async function call(c: Call): Promise<void> {
    const headers: Record<string, string> = {};
    if (c.auth === 'token') headers.authorization = tokenHeader;
    if (c.auth === 'bad') headers.authorization = 'Bearer not.a.token';
    if (c.body !== undefined) headers['content-type'] = 'application/json';
    const response = await fetch(`${stack!.gatewayUrl}${c.path}`, { method: c.method ?? 'GET', headers, body: c.body === undefined ? undefined : JSON.stringify(c.body) });
    await response.arrayBuffer();
    sentByStatus.set(response.status, (sentByStatus.get(response.status) ?? 0) + 1);
    expect({ call: c.desc, status: response.status }).toEqual({ call: c.desc, status: c.status });
  }

  const sent = () => [...sentByStatus.values()].reduce((a, b) => a + b, 0);

  /**
   * Waits until Prometheus has scraped every request sent and the services' latest OTLP points; resolves with the
   * time of the later of the two targets' last scrapes (each target's scrapes are stored in time order, so at that
   * time both answer what was just checked: the exact rates are taken between two such times).
   */
  async function caughtUp(): Promise<number> {
    const deadline = Date.now() + CATCH_UP_MS;
    const exportsAfter = Date.now();
    /**
     * When the receiver first held an export of every service's collected after the traffic (ms). The bridge must
     * be scraped after it: the services' HTTP counts cannot tell, since notification-service's stop before the
     * REST-to-gRPC calls, and a scrape of the export before theirs (holding the same HTTP counts) matched them
     * while `rpc.server.call.duration`, in the next export, was not yet stored (its rate over the window was 0).
     */
    let allExportedAt: number | undefined;
    for (;;) {
      const now = Date.now() / 1000;
      const gateway = await prometheus!.vector(`sum(${METRIC.requestDuration}_count{job="gateway"})`, now);
      const serviceExports = new Set(receiver.metrics().filter((p) => Number(BigInt(p.timeUnixNano) / 1_000_000n) > exportsAfter + 200).map((p) => p.serviceName));
      if (allExportedAt === undefined && SERVICE_JOBS.every((job) => serviceExports.has(job))) allExportedAt = Date.now();
      const bridgeScrapedAt = (await prometheus!.vector(`timestamp(up{job="${BRIDGE_JOB}"})`, now))[0]?.value ?? 0;
      const served = bridge.exposition();
      const services = await prometheus!.vector(`sum by (job) (${METRIC.requestDuration}_count{job!="gateway"})`, now);
      const stored = Object.fromEntries(services.map((s) => [s.metric.job, s.value]));
      const servedCounts = Object.fromEntries(
        SERVICE_JOBS.map((job) => [
          job,
          [...served.matchAll(new RegExp(`^${METRIC.requestDuration}_count\\{job="${job}"[^}]*\\} (\\d+)$`, 'gm'))].reduce((n, m) => n + Number(m[1]), 0),
        ]),
      );
      // Both targets' last scrapes answered (a failed one marks every series of its target stale).
      const up = (await prometheus!.vector('min(up)', now))[0]?.value === 1;
      const bridgeScrapedSince = allExportedAt !== undefined && bridgeScrapedAt * 1000 > allExportedAt;
      if (up && bridgeScrapedSince && gateway[0]?.value === sent() && SERVICE_JOBS.every((job) => serviceExports.has(job) && stored[job] === servedCounts[job])) {
        return Math.max(...(await prometheus!.vector('timestamp(up)', Date.now() / 1000)).map((s) => s.value));
      }
      if (Date.now() > deadline) {
        throw new Error(`Prometheus did not catch up: gateway ${JSON.stringify(gateway)} of ${sent()} sent; services stored ${JSON.stringify(stored)}, served ${JSON.stringify(servedCounts)}; every service exported at ${allExportedAt ?? 'not yet'}, the stand-in last scraped at ${bridgeScrapedAt * 1000}\n${prometheus!.log().slice(-3000)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    bridge = await startOtlpPrometheusBridge(() => receiver.metrics(), [SERVICE_NAME.gateway]);
    redis = await startOwnRedis();
    held = await holdingUpstream();
    slow = await slowUpstream(1_500);
    configDir = mkdtempSync(path.join(os.tmpdir(), 'dashboard-'));
    const file = shippedConfigFile() as { services: Record<string, unknown>; routes: Record<string, unknown>[] };
    file.services.down = { url: [await refusedOrigin(), await refusedOrigin()], ejectAfterFailures: 2, ejectMs: 600_000 };
    file.services.slow = { url: slow.url, ejectAfterFailures: 100 };
    file.services.held = { url: held.url };
    file.routes = file.routes.map((r) => (r.name === 'users' ? { ...r, cache: { ttlSeconds: 600 } } : r));
    file.routes.push(
      { name: 'limited', prefix: '/api/limited', exact: true, service: 'notifications', upstreamPath: '/notifications', rateLimit: { max: 1, windowMs: 600_000 } },
      { name: 'down', prefix: '/api/down', service: 'down', upstreamPath: '/down', auth: 'public' },
      { name: 'slow', prefix: '/api/slow', service: 'slow', upstreamPath: '/slow', auth: 'public', timeoutMs: 300 },
      { name: 'held', prefix: '/api/held', service: 'held', upstreamPath: '/held', auth: 'public', timeoutMs: 60_000 },
    );
    writeFileSync(path.join(configDir, 'gateway.json'), JSON.stringify(file));
    const [metricsPort, grpcPort] = [await freePort(), await freePort()];
    // As docker-compose.yml runs them, but on loopback, with telemetry to the test's receiver every second.
    stack = await startProcessStack({
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
      OTEL_METRIC_EXPORT_INTERVAL: '1000',
      OTEL_BSP_SCHEDULE_DELAY: '100',
      GATEWAY_CONFIG: path.join(configDir, 'gateway.json'),
      GATEWAY_WORKERS: String(workers),
      // notification-service's gRPC interface, which the gateway's REST-to-gRPC route calls.
      GRPC_PORT: String(grpcPort),
      NOTIF_GRPC_SERVICE_URL: `http://127.0.0.1:${grpcPort}`,
      METRICS_PORT: String(metricsPort),
      METRICS_HOST: '127.0.0.1',
      REDIS_URL: redis.url,
      RATE_LIMIT_MAX: '1000',
      RATE_LIMIT_WINDOW_MS: '60000',
      TRUST_PROXY: 'false',
      TRUST_TRACEPARENT: 'false',
      MAP_REQUEST_ID_TO_TRACE_ID: 'true',
    });
    const made = testConfig(`127.0.0.1:${metricsPort}`, bridge.url.replace('http://', ''));
    dropped = made.dropped;
    prometheus = await startPrometheus(made.config, ['--enable-feature=exemplar-storage']);
    const deadline = Date.now() + CATCH_UP_MS;
    while ((await prometheus.vector('up == 1', Date.now() / 1000)).length < 2) {
      if (Date.now() > deadline) throw new Error(`targets not up:\n${prometheus.log().slice(-3000)}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }

    const login = await fetch(`${stack.gatewayUrl}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(ALICE) });
    tokenHeader = `Bearer ${((await login.json()) as { token: string }).token}`;
    sentByStatus.set(login.status, 1);
    for (const c of CALLS) for (let i = 0; i < c.warmUp; i++) await call({ ...c, status: c.warmUpStatuses?.[i] ?? c.status });
    start = await caughtUp();
    for (const c of CALLS) for (let i = 0; i < c.measured; i++) await call(c);
    end = await caughtUp();
    measuredMs = Math.round((end - start) * 1000);
    requestRate = (await prometheus.vector(exactRates(`sum(rate(${METRIC.requestDuration}_count{job="gateway"}[$__rate_interval]))`, measuredMs), end))[0]?.value ?? 0;
    expect(requestRate).toBeCloseTo(MEASURED_TOTAL / (measuredMs / 1000), 9);

    // One request held at its upstream, until a scrape saw it in progress.
    const inFlight = fetch(`${stack.gatewayUrl}/api/held`).then((r) => r.arrayBuffer());
    const inFlightDeadline = Date.now() + CATCH_UP_MS;
    for (;;) {
      const now = Date.now() / 1000;
      if (held.held() === 1 && (await prometheus.vector(`sum(${METRIC.activeRequests}{job="gateway"})`, now))[0]?.value === 1) {
        inFlightAt = now;
        break;
      }
      if (Date.now() > inFlightDeadline) throw new Error('the held request was never scraped in flight');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    held.release();
    await inFlight;
  }, 150_000);

  afterAll(async () => {
    await prometheus?.stop();
    await stack?.stop();
    await Promise.all([receiver?.close(), bridge?.close(), held?.close(), slow?.close()]);
    await redis?.stop();
    if (configDir) rmSync(configDir, { recursive: true, force: true });
  });

  it('runs otel/prometheus.yaml, which promtool accepts, less only the keys this Prometheus predates', () => {
    const made = testConfig('127.0.0.1:1', '127.0.0.1:2');
    expect(checkConfig(made.config)).toBeUndefined();
    // Everything else is as shipped: if the shipped file fails promtool, only for the keys dropped here.
    const shipped = checkConfig(PROMETHEUS_CONFIG);
    if (shipped !== undefined) {
      const unknown = [...shipped.matchAll(/field (\w+) not found/g)].map((m) => m[1]);
      expect({ shipped, unknown: unknown.filter((f) => !dropped.some((d) => d.endsWith(f!))) }).toEqual({ shipped, unknown: [] });
    }
  });

  it('scrapes the gateway (up is 1) and stores the services\' OTLP metrics under their service.name as job', async () => {
    expect(await prometheus!.vector('up{job="gateway"}', end)).toEqual([expect.objectContaining({ value: 1 })]);
    const jobs = await prometheus!.api<string[]>('/api/v1/label/job/values', { start: String(start), end: String(end) });
    expect(jobs.filter((job) => job !== 'otlp-receiver-stand-in').sort()).toEqual([SERVICE_NAME.gateway, ...SERVICE_JOBS].sort());
  });

  describe.each(dashboards.map((d) => [d.file, d]))('%s', (_file, { dashboard, panels }) => {
    const targets = promTargets(panels);
    const variables = () => ({}) as Record<string, string[]>;

    it('has an expectation for every Prometheus query (a new panel says here what it must show)', () => {
      expect(targets.map((t) => t.key).filter((key) => !(key in EXPECTATIONS))).toEqual([]);
    });

    it('has no template variable or annotation that queries Prometheus unchecked', () => {
      const templating = asList(asMap(dashboard.templating ?? {}, 'templating').list ?? [], 'templating.list').map((v) => asMap(v, 'variable'));
      const annotations = asList(asMap(dashboard.annotations ?? {}, 'annotations').list ?? [], 'annotations.list').map((v) => asMap(v, 'annotation'));
      // Such a variable or annotation would need its label_values()/query evaluated here too; none exists yet.
      const prometheusBacked = [...templating, ...annotations].filter((v) => asMap(v.datasource ?? {}, 'datasource').type === 'prometheus' || v.type === 'query');
      expect(prometheusBacked.map((v) => v.name)).toEqual([]);
    });

    it.each(targets.map((t) => [t.key, t]))('%s: every metric and label it names exists, as the metrics really carry them', async (_key, target) => {
      const expr = substitute(target.expr, Math.ceil(end - start), Math.ceil(end - start), variables());
      for (const selector of promqlSelectors(expr)) {
        const match = `${selector.metric}{${selector.matchers.map((m) => `${m.label}${m.op}${JSON.stringify(m.value)}`).join(',')}}`;
        const series = await prometheus!.api<Record<string, string>[]>('/api/v1/series', { 'match[]': match, start: String(start - 120), end: String(inFlightAt) });
        expect({ match, found: series.length > 0 }).toEqual({ match, found: true });
        const labels = new Set(series.flatMap((s) => Object.keys(s)));
        const grouping = [...promqlGroupingLabels(expr), ...legendLabels(target.legendFormat)];
        expect({ match, missing: grouping.filter((l) => !labels.has(l)) }).toEqual({ match, missing: [] });
      }
    });

    it.each(targets.map((t) => [t.key, t]))('%s: shows what its title says after the traffic', async (key, target) => {
      const exact = await prometheus!.vector(substitute(exactRates(target.expr, measuredMs), 1, 1, variables()), end);
      EXPECTATIONS[key]!({ result: exact, requestRate, workers });
      // The expression as Grafana sends it, its rate() windows covering the measured part (and perhaps a scrape of the
      // warm-up): the same series, a number other than 0 wherever the exact one is (only extrapolated values differ).
      const step = Math.ceil(end - start) + SCRAPE_SECONDS;
      const result = await prometheus!.vector(substitute(target.expr, step, step, variables()), end);
      const counted = (series: Series[]) => series.filter((s) => Number.isFinite(s.value) && s.value !== 0).map((s) => JSON.stringify(s.metric));
      expect(result.map((s) => JSON.stringify(s.metric)).sort()).toEqual(exact.map((s) => JSON.stringify(s.metric)).sort());
      expect(counted(result)).toEqual(expect.arrayContaining(counted(exact)));
      for (const label of legendLabels(target.legendFormat)) for (const s of result) expect({ key, series: s.metric, has: label in s.metric }).toEqual({ key, series: s.metric, has: true });
      if (key in IN_FLIGHT) IN_FLIGHT[key]!(await prometheus!.vector(substitute(target.expr, SCRAPE_SECONDS, SCRAPE_SECONDS, variables()), inFlightAt));
    });

    it.each(targets.filter((t) => t.range).map((t) => [t.key, t]))('%s: answers query_range over the traffic with data points', async (_key, target) => {
      const step = SCRAPE_SECONDS;
      const data = await prometheus!.api<{ resultType: string; result: { values: [number, string][] }[] }>('/api/v1/query_range', {
        query: substitute(target.expr, step, Math.ceil(end - start), variables()),
        start: String(Math.floor(start)),
        end: String(Math.ceil(inFlightAt)),
        step: `${step}s`,
      });
      expect(data.resultType).toBe('matrix');
      expect(data.result.flatMap((s) => s.values).filter(([, v]) => Number.isFinite(Number(v))).length).toBeGreaterThan(0);
    });

    const exemplarTargets = targets.filter((t) => t.exemplar);
    it.each(exemplarTargets.map((t) => [t.key, t]))(
      '%s: its exemplars carry the trace ids of real traces, under the label the Grafana data source links to Jaeger',
      async (_key, target) => {
        const expr = substitute(target.expr, SCRAPE_SECONDS, SCRAPE_SECONDS, variables());
        const found = await prometheus!.api<{ seriesLabels: Record<string, string>; exemplars: { labels: Record<string, string>; value: string }[] }[]>('/api/v1/query_exemplars', {
          query: expr,
          start: String(start - 120),
          end: String(inFlightAt + 5),
        });
        const exemplars = found.flatMap((s) => s.exemplars.map((e) => ({ series: s.seriesLabels, ...e })));
        // A cluster's too: its scrape is the workers' sum, each bucket with a worker's exemplar.
        expect(exemplars.length).toBeGreaterThan(0);
        const destination = asList(datasources.find((d) => d.type === 'prometheus')!.jsonData.exemplarTraceIdDestinations, 'exemplarTraceIdDestinations').map((d) => asMap(d, 'destination'))[0]!;
        expect(datasources.find((d) => d.uid === destination.datasourceUid)?.type).toBe('jaeger');
        for (const e of exemplars) expect(Object.keys(e.labels)).toEqual([String(destination.name)]);
        const ids = exemplars.map((e) => e.labels[EXEMPLAR_LABEL.traceId]!);
        const received = await receiver.waitFor((r) => ids.every((id) => r.spans.some((s) => s.traceId === id && s.serviceName === SERVICE_NAME.gateway && s.kind === 'SERVER')));
        // A dot opens the request it stands for: the trace of a route's exemplar is a request of that route, and the
        // slow route's dots are its slow requests.
        const rootOf = (id: string) => received.spans.find((s) => s.traceId === id && s.kind === 'SERVER' && s.serviceName === SERVICE_NAME.gateway)!;
        for (const e of exemplars.filter((each) => each.series.http_route !== undefined)) {
          // A request no route took has no http.route on its span (the conventions' rule), `unmatched` on its series.
          const route = e.series.http_route === METRIC_LABEL_VALUE.unmatchedRoute ? undefined : e.series.http_route;
          expect({ series: e.series.http_route, trace: rootOf(e.labels[EXEMPLAR_LABEL.traceId]!).attributes['http.route'] }).toEqual({ series: e.series.http_route, trace: route });
        }
        const slowDots = exemplars.filter((e) => e.series.http_route === '/api/slow/*' || e.series.gateway_upstream_service === 'slow');
        expect(slowDots.length).toBeGreaterThan(0);
        for (const e of slowDots) {
          expect(rootOf(e.labels[EXEMPLAR_LABEL.traceId]!).attributes['http.route']).toBe('/api/slow/*');
          expect(Number(e.value)).toBeGreaterThanOrEqual(0.3);
        }
      },
    );
  });
});
