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
  readCompose,
  readDashboards,
  readDatasources,
  readText,
  readYaml,
  service,
  yamlFilesIn,
  type Datasource,
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

  it('provisions one Jaeger and one Loki data source with fixed, unique uids and names', () => {
    expect(datasources.map((ds) => ds.type).sort()).toEqual(['jaeger', 'loki']);
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
  ])('reaches the data source by compose name and port: $desc', ({ type, host, port }) => {
    const ds = byType(type);
    expect(ds.access).toBe('proxy');
    expect(hostAndPort(ds.url)).toEqual({ host, port });
    const target = service(compose, host);
    expect(containerPorts(target)).toContain(port);
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
  });
});

describe.each(dashboards)('dashboard $file', ({ dashboard, panels }) => {
  const lokiPanels = panels.filter((p) => p.type !== 'row');

  it('has a fixed uid, a title and panels', () => {
    expect(dashboard.uid).toMatch(/^[a-zA-Z0-9_-]{1,40}$/);
    expect(dashboard.title).toEqual(expect.any(String));
    expect(lokiPanels.length).toBeGreaterThan(0);
  });

  it('references only provisioned data sources, by uid and matching type', () => {
    const refs = lokiPanels.flatMap((p) => [p.datasource, ...(p.targets ?? []).map((t) => t.datasource)]).filter((r) => r !== undefined);
    expect(refs.length).toBeGreaterThan(0);
    for (const ref of refs) expect({ ref, type: datasource(ref.uid)?.type }).toEqual({ ref, type: ref.type });
  });

  const exprs = lokiPanels.flatMap((p) => (p.targets ?? []).map((t) => [p.title, t.expr ?? ''] as const));

  it.each(exprs)('%s selects Loki streams by service_name only (ids are structured metadata, not labels)', (_title, expr) => {
    const labels = streamSelectorLabels(expr);
    expect(labels.length).toBeGreaterThan(0);
    expect(new Set(labels)).toEqual(new Set(['service_name']));
  });

  it.each(exprs.filter(([, expr]) => /_over_time\(|\brate\(/.test(expr)))(
    '%s bounds its series: keeps only the labels it groups by, never a per-request id',
    (_title, expr) => {
      // Structured metadata become labels in metric queries: without `keep`, every request_id is a series.
      expect(expr).toMatch(/\| keep [a-z_, ]+/);
      const grouped = [...expr.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)].flatMap((m) => m[1]!.split(',').map((l) => l.trim()));
      const kept = [...expr.matchAll(/\| keep ([a-z_, ]+)/g)].flatMap((m) => m[1]!.split(',').map((l) => l.trim()));
      for (const label of [...grouped, ...kept]) expect(['service_name', 'route', 'status', 'method', 'duration_ms']).toContain(label);
    },
  );

  it('has the request rate, errors and latency by route, from the access log lines', () => {
    const byRoute = exprs.map(([, expr]) => expr).filter((e) => /by \(route\b/.test(e) && e.includes('"request completed"'));
    expect(byRoute.some((e) => /sum by \(route\) \(rate\(/.test(e))).toBe(true);
    expect(byRoute.some((e) => /status >= 500/.test(e))).toBe(true);
    expect(byRoute.some((e) => /quantile_over_time\(0\.\d+,.*unwrap duration_ms/.test(e))).toBe(true);
  });

  it('has a log panel filtered by the request_id variable', () => {
    const variables = asList(asMap(dashboard.templating, 'templating').list, 'templating.list').map((v) => asMap(v, 'variable'));
    const requestId = variables.find((v) => v.name === 'request_id');
    expect(requestId?.type).toBe('textbox');
    const logs = lokiPanels.filter((p) => p.type === 'logs');
    expect(logs.flatMap((p) => (p.targets ?? []).map((t) => t.expr))).toEqual([expect.stringMatching(/\| request_id=~`\$\{request_id:regex\}/)]);
  });
});
