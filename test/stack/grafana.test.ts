import { EXEMPLAR_LABEL, METRIC, METRIC_LABEL, SERVICE_NAME } from '../../otel/wire-names';
import {
  GRAFANA_DASHBOARD_PROVIDER_FILE,
  GRAFANA_DATASOURCE,
  GRAFANA_DATASOURCE_FILE,
  GRAFANA_DERIVED_FIELD_MATCHER_TYPES,
  GRAFANA_JSON_DATA,
  GRAFANA_VERSION,
  unknownKeys,
} from './pinned-schemas';
import {
  asList,
  asMap,
  asString,
  containerPorts,
  GRAFANA_DASHBOARD_PROVIDERS,
  GRAFANA_DATASOURCES,
  hostAndPort,
  promqlGroupingLabels,
  promqlSelectors,
  readCompose,
  readDashboards,
  readDatasources,
  readText,
  readYaml,
  service,
  yamlFilesIn,
  type Datasource,
  type DashboardPanel,
} from './stack-files';

const compose = readCompose();
const datasources = readDatasources();
const dashboards = readDashboards();
const provisioningFiles = [...yamlFilesIn(GRAFANA_DATASOURCES), ...yamlFilesIn(GRAFANA_DASHBOARD_PROVIDERS)];

function datasource(uid: string | undefined): Datasource | undefined {
  return datasources.find((ds) => ds.uid === uid);
}

function byType(type: string): Datasource {
  const found = datasources.filter((ds) => ds.type === type);
  if (found.length !== 1) throw new Error(`expected one ${type} data source, found ${found.length}`);
  return found[0]!;
}

/** Grafana expands `$VAR` in provisioning files; `$$` is a literal `$`. */
function unescapeProvisioning(value: string): string {
  return value.replaceAll('$$', '$');
}

/** Label names used in the stream selectors (`{a="x", b=~"y"}`) of a LogQL expression. */
function streamSelectorLabels(expr: string): string[] {
  const matcher = String.raw`[a-zA-Z_]\w*\s*(?:=~|!~|!=|=)\s*(?:"[^"]*"|` + '`[^`]*`)';
  const selector = new RegExp(String.raw`\{\s*(${matcher}(?:\s*,\s*${matcher})*)\s*\}`, 'g');
  return [...expr.matchAll(selector)].flatMap((m) => [...m[1]!.matchAll(/([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)/g)].map((l) => l[1]!));
}

describe('Grafana provisioning', () => {
  it(`targets the Grafana image pinned in compose (${GRAFANA_VERSION})`, () => {
    expect(service(compose, 'grafana').image).toBe(`grafana/grafana:${GRAFANA_VERSION}`);
  });

  describe.each(yamlFilesIn(GRAFANA_DATASOURCES))('%s', (file) => {
    const doc = asMap(readYaml(file), file);

    it('is a version 1 provisioning file with only known top-level keys', () => {
      expect(doc.apiVersion).toBe(1);
      expect(unknownKeys(doc, GRAFANA_DATASOURCE_FILE)).toEqual([]);
    });
  });

  it('provisions one Prometheus, one Jaeger and one Loki data source with fixed, unique uids and names', () => {
    expect(datasources.map((ds) => ds.type).sort()).toEqual(['jaeger', 'loki', 'prometheus']);
    expect(new Set(datasources.map((ds) => ds.uid)).size).toBe(datasources.length);
    expect(new Set(datasources.map((ds) => ds.name)).size).toBe(datasources.length);
    for (const ds of datasources) expect(ds.uid).toMatch(/^[a-zA-Z0-9_-]{1,40}$/);
  });

  it.each(datasources.map((ds) => [ds.name, ds]))('%s uses only data source and jsonData keys Grafana 12.4 documents', (_name, ds) => {
    expect(unknownKeys(ds, GRAFANA_DATASOURCE)).toEqual([]);
    const jsonDataKeys = GRAFANA_JSON_DATA[ds.type];
    expect(jsonDataKeys).toBeDefined();
    expect(unknownKeys(ds.jsonData, jsonDataKeys!)).toEqual([]);
  });

  it.each([
    { desc: 'Jaeger: its query and UI port', type: 'jaeger', host: 'jaeger', port: 16686 },
    { desc: 'Loki: its HTTP port', type: 'loki', host: 'loki', port: 3100 },
    { desc: 'Prometheus: its HTTP API port', type: 'prometheus', host: 'prometheus', port: 9090 },
  ])('reaches the data source by compose name and port: $desc', ({ type, host, port }) => {
    const ds = byType(type);
    expect(ds.access).toBe('proxy');
    expect(hostAndPort(ds.url)).toEqual({ host, port });
    const target = service(compose, host);
    expect(containerPorts(target)).toContain(port);
  });

  describe('Prometheus -> Jaeger: an exemplar links to its trace', () => {
    const prometheus = byType('prometheus');
    const destinations = asList(prometheus.jsonData.exemplarTraceIdDestinations, 'prometheus jsonData.exemplarTraceIdDestinations').map((d) =>
      asMap(d, 'exemplarTraceIdDestinations[]'),
    );

    it('reads the exemplar label the gateway writes (EXEMPLAR_LABEL.traceId) and opens it in the Jaeger data source', () => {
      expect(destinations).toHaveLength(1);
      const destination = destinations[0]!;
      expect(destination.name).toBe(EXEMPLAR_LABEL.traceId);
      expect(datasource(String(destination.datasourceUid))?.type).toBe('jaeger');
      // An internal link (Explore, next to the metrics): no external URL.
      expect(destination.url).toBeUndefined();
    });

    it('states the Prometheus scrape interval as the smallest step (timeInterval), and the server type', () => {
      const prometheusConfig = asMap(readYaml('otel/prometheus.yaml'), 'otel/prometheus.yaml');
      expect(prometheus.jsonData.timeInterval).toBe(asMap(prometheusConfig.global, 'global').scrape_interval);
      expect(prometheus.jsonData.prometheusType).toBe('Prometheus');
      expect(service(compose, 'prometheus').image).toBe(`prom/prometheus:v${String(prometheus.jsonData.prometheusVersion)}`);
    });
  });

  describe('Loki -> Jaeger: a log line links to its trace', () => {
    const loki = byType('loki');
    const derived = asList(loki.jsonData.derivedFields, 'loki jsonData.derivedFields').map((f) => asMap(f, 'derivedFields[]'));

    it('has a derived field whose internal link opens the trace id in the Jaeger data source', () => {
      const toTrace = derived.filter((f) => datasource(f.datasourceUid as string)?.type === 'jaeger');
      expect(toTrace).toHaveLength(1);
      const field = toTrace[0]!;
      // OTLP logs: Loki stores the record's trace id as the structured metadata field trace_id.
      expect({ matcherType: field.matcherType, matcherRegex: field.matcherRegex }).toEqual({ matcherType: 'label', matcherRegex: 'trace_id' });
      // For an internal link the URL is the query sent to Jaeger: the trace id itself.
      expect(unescapeProvisioning(asString(field.url, 'url'))).toBe('${__value.raw}');
    });

    it.each(derived.map((f) => [String(f.name), f]))('derived field %s links only to a data source that exists, with a known matcher type', (_name, field) => {
      if (field.datasourceUid !== undefined) expect(datasource(String(field.datasourceUid))).toBeDefined();
      expect(GRAFANA_DERIVED_FIELD_MATCHER_TYPES as readonly unknown[]).toContain(field.matcherType ?? 'regex');
    });
  });

  describe('Jaeger -> Loki: a span links to its logs', () => {
    const jaeger = byType('jaeger');
    const toLogs = asMap(jaeger.jsonData.tracesToLogsV2, 'jaeger jsonData.tracesToLogsV2');

    it('points at the Loki data source', () => {
      expect(datasource(String(toLogs.datasourceUid))?.type).toBe('loki');
    });

    it("queries the span's trace id as structured metadata, selecting streams by service_name only", () => {
      expect(toLogs.customQuery).toBe(true);
      const query = unescapeProvisioning(asString(toLogs.query, 'tracesToLogsV2.query'));
      expect(query).toMatch(/\| trace_id="\$\{__(span|trace)\.traceId\}"/);
      expect(streamSelectorLabels(query)).toEqual(['service_name']);
    });

    it('widens the time range around the span, since log lines are written when a request ends', () => {
      expect(toLogs.spanStartTimeShift).toMatch(/^-\d+[smh]$/);
      expect(toLogs.spanEndTimeShift).toMatch(/^\d+[smh]$/);
    });
  });

  it.each(provisioningFiles)('%s writes every literal $ as $$ (Grafana expands $VAR in provisioning files)', (file) => {
    const lone = readText(file)
      .split('\n')
      .filter((line) => !line.trimStart().startsWith('#'))
      .filter((line) => /(?<!\$)\$(?!\$)/.test(line.replaceAll('$$', '')));
    expect(lone).toEqual([]);
  });

  describe.each(yamlFilesIn(GRAFANA_DASHBOARD_PROVIDERS))('%s', (file) => {
    it('is a version 1 dashboard provider file with only documented keys', () => {
      const doc = asMap(readYaml(file), file);
      expect(doc.apiVersion).toBe(1);
      expect(unknownKeys(doc, GRAFANA_DASHBOARD_PROVIDER_FILE)).toEqual([]);
    });

    it("gives its folder a uid no dashboard has (folders and dashboards share one uid space: Grafana refuses to save a dashboard over a folder's uid)", () => {
      const folderUids = asList(asMap(readYaml(file), file).providers, 'providers').map((provider) => asMap(provider, 'providers[]').folderUid);
      const dashboardUids = dashboards.map(({ dashboard }) => dashboard.uid);
      expect(folderUids.filter((uid) => dashboardUids.includes(uid as string))).toEqual([]);
    });
  });
});

// ---- The dashboard -----------------------------------------------------------------------------------------

/** The gateway's histograms: each is exported as `_bucket`, `_count` and `_sum` series. */
const HISTOGRAMS: readonly string[] = [METRIC.requestDuration, METRIC.upstreamDuration];

/**
 * The services' OTLP histograms beside `http.server.request.duration` (which arrives under the gateway's name,
 * METRIC.requestDuration), as Prometheus names them: notification-service's `rpc.server.call.duration` (s).
 */
const SERVICE_HISTOGRAMS: readonly string[] = ['rpc_server_call_duration_seconds'];
/** Their attributes as labels (`rpc.method`, `rpc.status_code`, `rpc.system.name`). */
const SERVICE_LABELS: readonly string[] = ['rpc_method', 'rpc_status_code', 'rpc_system_name'];

/**
 * Every series name the dashboard may query: the gateway's metrics (otel/wire-names.ts METRIC, the names its
 * /metrics exports) and the services' histograms (SERVICE_HISTOGRAMS).
 */
const EXPORTED_SERIES: ReadonlySet<string> = new Set([
  ...Object.values(METRIC).flatMap((name) => (HISTOGRAMS.includes(name) ? [`${name}_bucket`, `${name}_count`, `${name}_sum`] : [name])),
  ...SERVICE_HISTOGRAMS.flatMap((name) => [`${name}_bucket`, `${name}_count`, `${name}_sum`]),
]);

/** Labels the metrics carry: the gateway's (METRIC_LABEL), the services' (SERVICE_LABELS), job, instance, le. */
const KNOWN_LABELS: ReadonlySet<string> = new Set([...Object.values(METRIC_LABEL), ...SERVICE_LABELS, 'job', 'instance', 'le']);

const prometheusConfig = asMap(readYaml('otel/prometheus.yaml'), 'otel/prometheus.yaml');
const scrapeJobs = asList(prometheusConfig.scrape_configs, 'scrape_configs').map((c) => String(asMap(c, 'scrape_configs[]').job_name));

describe('the PromQL reader the dashboard tests use', () => {
  it('finds selectors and their matchers, not functions, keywords, label lists or ranges', () => {
    const expr = '(sum by (le) (rate(a_bucket{job="x", code=~"5.."}[$__rate_interval])) or vector(0)) / on (job) b';
    expect(promqlSelectors(expr)).toEqual([
      { metric: 'a_bucket', matchers: [{ label: 'job', op: '=', value: 'x' }, { label: 'code', op: '=~', value: '5..' }] },
      { metric: 'b', matchers: [] },
    ]);
    expect(promqlGroupingLabels(expr)).toEqual(['le', 'job']);
  });
});

describe.each(dashboards)('dashboard $file', ({ dashboard, panels }) => {
  const visible = panels.filter((p) => p.type !== 'row');
  const targetsOf = (type: string) =>
    visible.flatMap((panel) =>
      (panel.targets ?? []).filter((t) => (t.datasource ?? panel.datasource)?.type === type).map((target) => ({ panel, target, expr: target.expr ?? '' })),
    );
  const promTargets = targetsOf('prometheus');
  const lokiTargets = targetsOf('loki');
  const promExprs = promTargets.map(({ panel, target, expr }) => [`${panel.title} (${target.refId ?? '?'})`, expr] as const);
  const lokiExprs = lokiTargets.map(({ panel, expr }) => [panel.title, expr] as const);

  it('has a fixed uid, a title and panels', () => {
    expect(dashboard.uid).toMatch(/^[a-zA-Z0-9_-]{1,40}$/);
    expect(dashboard.title).toEqual(expect.any(String));
    expect(visible.length).toBeGreaterThan(0);
  });

  it('references only provisioned data sources, by uid and matching type', () => {
    const refs = visible.flatMap((p) => [p.datasource, ...(p.targets ?? []).map((t) => t.datasource)]).filter((r) => r !== undefined);
    expect(refs.length).toBeGreaterThan(0);
    for (const ref of refs) expect({ ref, type: datasource(ref.uid)?.type }).toEqual({ ref, type: ref.type });
  });

  it('queries metrics from Prometheus and logs from Loki, nothing else', () => {
    const all = visible.flatMap((p) => p.targets ?? []);
    expect(promTargets.length + lokiTargets.length).toBe(all.length);
    expect(promTargets.length).toBeGreaterThan(0);
  });

  describe('metrics (Prometheus)', () => {
    it.each(promExprs)('%s queries only series the gateway exports (otel/wire-names.ts METRIC)', (_title, expr) => {
      const names = promqlSelectors(expr).map((s) => s.metric);
      expect(names.length).toBeGreaterThan(0);
      expect(names.filter((n) => !EXPORTED_SERIES.has(n))).toEqual([]);
    });

    it.each(promExprs)('%s matches and groups only by labels the metrics carry (METRIC_LABEL, job, instance, le)', (_title, expr) => {
      const labels = [...promqlSelectors(expr).flatMap((s) => s.matchers.map((m) => m.label)), ...promqlGroupingLabels(expr)];
      expect(labels.filter((l) => !KNOWN_LABELS.has(l))).toEqual([]);
    });

    it.each(promExprs)(
      '%s selects by job: job="<the gateway scrape job>", or job!="gateway" for the services (their service.name)',
      (_title, expr) => {
        for (const selector of promqlSelectors(expr)) {
          const jobs = selector.matchers.filter((m) => m.label === 'job');
          expect(jobs).toHaveLength(1);
          const job = jobs[0]!;
          if (job.op === '=') expect(scrapeJobs).toContain(job.value);
          else expect(job).toEqual({ label: 'job', op: '!=', value: SERVICE_NAME.gateway });
        }
      },
    );

    it.each(promExprs.filter(([, expr]) => /\b(rate|increase|irate)\(/.test(expr)))('%s takes rates over $__rate_interval', (_title, expr) => {
      const windows = [...expr.matchAll(/\[([^\]]*)\]/g)].map((m) => m[1]);
      expect(windows.length).toBeGreaterThan(0);
      expect(new Set(windows)).toEqual(new Set(['$__rate_interval']));
    });

    it.each(promExprs.filter(([, expr]) => expr.includes('histogram_quantile(')))(
      '%s sums a histogram\'s bucket rates by le before histogram_quantile',
      (_title, expr) => {
        expect(expr).toMatch(/histogram_quantile\(0\.\d+, sum by \(le\b[^)]*\) \(rate\([a-z_]+_bucket\{/);
      },
    );

    const gatewayExprs = promExprs.map(([, expr]) => expr).filter((e) => e.includes('job="gateway"'));
    const request = METRIC.requestDuration;

    it.each([
      { desc: 'request rate by route', pattern: `sum by (http_route) (rate(${request}_count{job="gateway"}` },
      { desc: '5xx ratio', pattern: `${request}_count{job="gateway", http_response_status_code=~"5.."}` },
      { desc: 'p50 by route', pattern: `histogram_quantile(0.50, sum by (le, http_route) (rate(${request}_bucket{job="gateway"}` },
      { desc: 'p95 by route', pattern: `histogram_quantile(0.95, sum by (le, http_route) (rate(${request}_bucket{job="gateway"}` },
      { desc: 'p99 by route', pattern: `histogram_quantile(0.99, sum by (le, http_route) (rate(${request}_bucket{job="gateway"}` },
      { desc: 'upstream latency by service', pattern: `sum by (le, gateway_upstream_service) (rate(${METRIC.upstreamDuration}_bucket{job="gateway"}` },
      { desc: 'rate-limit decisions by policy', pattern: `sum by (gateway_rate_limit_policy, gateway_rate_limit_decision) (rate(${METRIC.rateLimitDecisions}{job="gateway"}` },
      { desc: 'response cache lookups by route and result', pattern: `sum by (gateway_route_name, gateway_cache_result) (rate(${METRIC.cacheLookups}{job="gateway"}` },
      { desc: 'auth failures by reason', pattern: `sum by (error_type) (rate(${METRIC.authFailures}{job="gateway"}` },
      { desc: 'in-flight requests', pattern: `${METRIC.activeRequests}{job="gateway"}` },
      { desc: 'upstream retries', pattern: `${METRIC.upstreamRetries}{job="gateway"}` },
      { desc: 'upstream ejections', pattern: `${METRIC.upstreamEjections}{job="gateway"}` },
    ])('shows the gateway\'s $desc', ({ pattern }) => {
      expect(gatewayExprs.filter((e) => e.includes(pattern)).length).toBeGreaterThan(0);
    });

    it("shows the services' gRPC calls by method and status (notification-service's rpc.server.call.duration)", () => {
      expect(promExprs.map(([, expr]) => expr)).toContainEqual(expect.stringContaining('sum by (job, rpc_method, rpc_status_code) (rate(rpc_server_call_duration_seconds_count{job!="gateway"}'));
    });

    it("shows the services' own request rate and latency (their OTLP metrics), apart from the gateway's", () => {
      const services = promExprs.map(([, expr]) => expr).filter((e) => e.includes(`${request}_count{job!="gateway"}`) || e.includes(`${request}_bucket{job!="gateway"}`));
      expect(services.some((e) => e.includes('_count{'))).toBe(true);
      expect(services.some((e) => e.includes('histogram_quantile('))).toBe(true);
      for (const e of services) expect(promqlGroupingLabels(e)).toContain('job');
    });

    describe('exemplars', () => {
      const withExemplars = promTargets.filter(({ target }) => target.exemplar === true);
      const routeLatency = visible.filter((p: DashboardPanel) =>
        (p.targets ?? []).some((t) => (t.expr ?? '').includes(`sum by (le, http_route) (rate(${request}_bucket{job="gateway"}`)),
      );

      it('are shown on the route latency panel, from one target only (every quantile reads the same buckets)', () => {
        expect(routeLatency).toHaveLength(1);
        expect((routeLatency[0]!.targets ?? []).filter((t) => t.exemplar === true)).toHaveLength(1);
      });

      it.each(withExemplars.map(({ panel, expr }) => [panel.title, expr]))(
        '%s asks for exemplars of a gateway histogram, the only series that carry them (scraped OpenMetrics)',
        (_title, expr) => {
          const selectors = promqlSelectors(expr);
          expect(selectors.length).toBeGreaterThan(0);
          for (const s of selectors) {
            expect(HISTOGRAMS.map((h) => `${h}_bucket`)).toContain(s.metric);
            expect(s.matchers).toContainEqual({ label: 'job', op: '=', value: SERVICE_NAME.gateway });
          }
        },
      );
    });
  });

  describe('logs (Loki)', () => {
    it.each(lokiExprs)('%s selects Loki streams by service_name only (ids are structured metadata, not labels)', (_title, expr) => {
      const labels = streamSelectorLabels(expr);
      expect(labels.length).toBeGreaterThan(0);
      expect(new Set(labels)).toEqual(new Set(['service_name']));
    });

    it('has a log panel filtered by the request_id variable', () => {
      const variables = asList(asMap(dashboard.templating, 'templating').list, 'templating.list').map((v) => asMap(v, 'variable'));
      const requestId = variables.find((v) => v.name === 'request_id');
      expect(requestId?.type).toBe('textbox');
      const logs = visible.filter((p) => p.type === 'logs');
      expect(logs.flatMap((p) => (p.targets ?? []).map((t) => t.expr))).toEqual([expect.stringMatching(/\| request_id=~`\$\{request_id:regex\}/)]);
    });
  });
});
