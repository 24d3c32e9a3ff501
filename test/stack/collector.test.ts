import { SERVICE_NAME } from '../../otel/wire-names';
import {
  COLLECTOR_COMPONENT_KEYS,
  COLLECTOR_COMPONENTS,
  COLLECTOR_DEPRECATED_TYPES,
  COLLECTOR_FILTER_CONTEXTS,
  COLLECTOR_TOP_LEVEL,
  COLLECTOR_VERSION,
  PROMETHEUS_OTLP_BASE_PATH,
  unknownKeys,
} from './pinned-schemas';
import { appServices, asList, asMap, asString, hostAndPort, readCompose, readYaml, service, type YamlMap } from './stack-files';

const FILE = 'otel/collector.yaml';
const config = asMap(readYaml(FILE), FILE);
const compose = readCompose();

const KINDS = ['receivers', 'processors', 'exporters', 'extensions', 'connectors'] as const;
type Kind = (typeof KINDS)[number];

/** Component ids (`type` or `type/name`) defined under one kind. */
function components(kind: Kind): Map<string, unknown> {
  const section = config[kind];
  return new Map(section === undefined ? [] : Object.entries(asMap(section, `${FILE}: ${kind}`)));
}

function typeOf(id: string): string {
  return id.split('/')[0]!;
}

interface Pipeline {
  receivers: string[];
  processors: string[];
  exporters: string[];
}

function pipelines(): Map<string, Pipeline> {
  const raw = asMap(asMap(config.service, `${FILE}: service`).pipelines, `${FILE}: service.pipelines`);
  return new Map(
    Object.entries(raw).map(([id, value]) => {
      const p = asMap(value, `${FILE}: pipelines.${id}`);
      const list = (key: string) => (p[key] === undefined ? [] : asList(p[key], `pipelines.${id}.${key}`).map(String));
      return [id, { receivers: list('receivers'), processors: list('processors'), exporters: list('exporters') }];
    }),
  );
}

function pipeline(signal: string): Pipeline {
  const found = pipelines().get(signal);
  if (!found) throw new Error(`${FILE} has no ${signal} pipeline`);
  return found;
}

function exporter(id: string): YamlMap {
  return asMap(components('exporters').get(id), `${FILE}: exporters.${id}`);
}

describe('otel/collector.yaml', () => {
  it(`is the config of the collector image pinned in compose (contrib ${COLLECTOR_VERSION})`, () => {
    expect(service(compose, 'otel-collector').image).toBe(`otel/opentelemetry-collector-contrib:${COLLECTOR_VERSION}`);
  });

  it('uses only top-level and service keys the collector knows', () => {
    expect(unknownKeys(config, COLLECTOR_TOP_LEVEL)).toEqual([]);
  });

  const defined = KINDS.flatMap((kind) => [...components(kind).entries()].map(([id, value]) => ({ kind, id, value })));

  it.each(defined)('$id ($kind) is a component type of the pinned contrib build, under its current name', ({ kind, id }) => {
    const type = typeOf(id);
    // `otlp` is deprecated only as an exporter name; the receiver is still `otlp`.
    if (kind !== 'receivers') expect(COLLECTOR_DEPRECATED_TYPES[type]).toBeUndefined();
    expect(COLLECTOR_COMPONENTS[kind] as readonly string[]).toContain(type);
  });

  it.each(defined)('$id ($kind) sets only keys its v0.159.0 config schema has', ({ id, value }) => {
    const tree = COLLECTOR_COMPONENT_KEYS[typeOf(id)];
    expect(tree).toBeDefined();
    expect(unknownKeys(value ?? {}, tree!)).toEqual([]);
  });

  it('catches a misspelt key (the key check is not vacuous)', () => {
    const misspelt = { protocols: { http: { endpiont: '0.0.0.0:4318' } } };
    expect(unknownKeys(misspelt, COLLECTOR_COMPONENT_KEYS.otlp!)).toEqual(['protocols.http.endpiont']);
    expect(unknownKeys({ endpoint: 'jaeger:4317', tls: { insecure: true, insecure_skip: true } }, COLLECTOR_COMPONENT_KEYS.otlp_grpc!)).toEqual(['tls.insecure_skip']);
    // The filter processor's pre-v0.146 form is refused: it is deprecated in the pinned build.
    expect(unknownKeys({ metrics: { metric: ['true'] } }, COLLECTOR_COMPONENT_KEYS.filter!)).toEqual(['metrics']);
  });

  it('wires every pipeline to defined components, and uses every defined component', () => {
    const used = new Set<string>();
    for (const [id, p] of pipelines()) {
      for (const [kind, ids] of [['receivers', p.receivers], ['processors', p.processors], ['exporters', p.exporters]] as const) {
        for (const component of ids) {
          expect({ pipeline: id, kind, component, defined: components(kind).has(component) }).toEqual({ pipeline: id, kind, component, defined: true });
          used.add(`${kind}:${component}`);
        }
      }
    }
    const defined = (['receivers', 'processors', 'exporters'] as const).flatMap((kind) => [...components(kind).keys()].map((c) => `${kind}:${c}`));
    expect(defined.filter((c) => !used.has(c))).toEqual([]);
  });

  it.each(['traces', 'logs', 'metrics'])('limits memory first and batches in the %s pipeline', (signal) => {
    const { processors } = pipeline(signal);
    expect(processors[0]).toBe('memory_limiter');
    expect(processors.map(typeOf)).toContain('batch');
  });

  it('gives the memory limiter the check interval it requires and a limit', () => {
    const limiter = asMap(components('processors').get('memory_limiter'), 'memory_limiter');
    expect(limiter.check_interval).toMatch(/^[1-9]\d*(ms|s)$/);
    expect(limiter.limit_mib ?? limiter.limit_percentage).toBeDefined();
  });

  it.each(['grpc', 'http'])('receives OTLP/%s on every interface (the receiver defaults to localhost)', (protocol) => {
    const protocols = asMap(asMap(components('receivers').get('otlp'), 'receivers.otlp').protocols, 'otlp.protocols');
    const endpoint = asString(asMap(protocols[protocol], `otlp.protocols.${protocol}`).endpoint, 'endpoint');
    expect(endpoint).toMatch(/^0\.0\.0\.0:\d+$/);
    expect(service(compose, 'otel-collector').expose).toContain(String(hostAndPort(endpoint).port));
  });

  it('sends traces to the jaeger compose service on its OTLP gRPC port', () => {
    const { exporters, receivers } = pipeline('traces');
    expect(receivers).toEqual(['otlp']);
    expect(exporters).toHaveLength(1);
    const id = exporters[0]!;
    expect(typeOf(id)).toBe('otlp_grpc');
    const target = hostAndPort(asString(exporter(id).endpoint, `${id}.endpoint`));
    expect(target).toEqual({ host: 'jaeger', port: 4317 });
    expect(service(compose, 'jaeger').image).toMatch(/^jaegertracing\/jaeger:2\./);
    expect(service(compose, 'jaeger').expose).toContain('4317');
    // Plain gRPC inside the compose network.
    expect(asMap(exporter(id).tls, `${id}.tls`).insecure).toBe(true);
  });

  it("sends logs to the loki compose service's native OTLP endpoint (base URL: the exporter appends /v1/logs)", () => {
    const { exporters, receivers } = pipeline('logs');
    expect(receivers).toEqual(['otlp']);
    expect(exporters).toHaveLength(1);
    const id = exporters[0]!;
    expect(typeOf(id)).toBe('otlp_http');
    const endpoint = asString(exporter(id).endpoint, `${id}.endpoint`);
    const url = new URL(endpoint);
    const lokiPort = Number(asMap(asMap(readYaml('otel/loki.yaml'), 'otel/loki.yaml').server, 'server').http_listen_port);
    expect({ host: url.hostname, port: Number(url.port), path: url.pathname }).toEqual({ host: 'loki', port: lokiPort, path: '/otlp' });
    expect(service(compose, 'loki').expose).toContain(String(lokiPort));
  });

  it('has one pipeline per signal the apps send: traces, logs and metrics', () => {
    expect([...pipelines().keys()].sort()).toEqual(['logs', 'metrics', 'traces']);
  });

  it("sends metrics to the prometheus compose service's OTLP receiver (base URL: the exporter appends /v1/metrics)", () => {
    const { exporters, receivers } = pipeline('metrics');
    expect(receivers).toEqual(['otlp']);
    expect(exporters).toHaveLength(1);
    const id = exporters[0]!;
    expect(typeOf(id)).toBe('otlp_http');
    const url = new URL(asString(exporter(id).endpoint, `${id}.endpoint`));
    expect({ host: url.hostname, port: Number(url.port), path: url.pathname }).toEqual({ host: 'prometheus', port: 9090, path: PROMETHEUS_OTLP_BASE_PATH });
    const prometheus = service(compose, 'prometheus');
    expect(prometheus.expose).toContain('9090');
    // The receiver is off unless this flag is given; 9090 is the default --web.listen-address.
    expect(prometheus.command).toContain('--web.enable-otlp-receiver');
    expect(prometheus.command.filter((a) => a.startsWith('--web.listen-address'))).toEqual([]);
  });

  describe('drops the gateway\'s metrics from the metrics pipeline: Prometheus scrapes them (exemplars), so they are not counted twice', () => {
    const filters = pipeline('metrics').processors.filter((id) => typeOf(id) === 'filter');
    const groups = filters.flatMap((id) =>
      asList(asMap(components('processors').get(id), id).metric_conditions, `${id}.metric_conditions`).map((g) => asMap(g, `${id}.metric_conditions[]`)),
    );
    /** The service.name values the filter drops, read from its `resource.attributes["service.name"] == "x"` conditions. */
    const dropped = groups.flatMap((g) =>
      asList(g.conditions, 'conditions').flatMap((c) => [...String(c).matchAll(/^(?:resource\.)?attributes\["service\.name"\] == "([^"]+)"$/g)].map((m) => m[1]!)),
    );

    it('with one filter processor of resource-context conditions, after the memory limiter and before the batch', () => {
      expect(filters).toHaveLength(1);
      const { processors } = pipeline('metrics');
      expect(processors.indexOf(filters[0]!)).toBeGreaterThan(processors.indexOf('memory_limiter'));
      expect(processors.indexOf(filters[0]!)).toBeLessThan(processors.findIndex((id) => typeOf(id) === 'batch'));
      for (const g of groups) {
        expect(COLLECTOR_FILTER_CONTEXTS as readonly unknown[]).toContain(g.context);
        expect(g.context).toBe('resource');
      }
      // Every condition is one this test can read: nothing else is dropped.
      expect(dropped).toHaveLength(groups.flatMap((g) => asList(g.conditions, 'conditions')).length);
    });

    it('drops exactly the gateway, whose OTEL_SERVICE_NAME is the gateway wire name, and no service', () => {
      expect(dropped).toEqual([SERVICE_NAME.gateway]);
      const byServiceName = Object.fromEntries(appServices(compose).map((s) => [s.environment.OTEL_SERVICE_NAME, s.name]));
      expect(byServiceName[SERVICE_NAME.gateway]).toBe('gateway');
    });

    it('only in the metrics pipeline: the gateway\'s traces and logs still go through', () => {
      for (const signal of ['traces', 'logs']) expect(pipeline(signal).processors.map(typeOf)).not.toContain('filter');
    });
  });
});

describe('otel/loki.yaml', () => {
  const loki = asMap(readYaml('otel/loki.yaml'), 'otel/loki.yaml');

  it('stores structured metadata (needed by OTLP ingestion): tsdb, schema v13, allowed', () => {
    const schemas = asList(asMap(loki.schema_config, 'schema_config').configs, 'schema_config.configs').map((c) => asMap(c, 'config'));
    expect(schemas.at(-1)).toMatchObject({ store: 'tsdb', schema: 'v13' });
    expect(asMap(loki.limits_config, 'limits_config').allow_structured_metadata).toBe(true);
  });

  it('indexes service.name (label service_name) and no per-process or per-request id', () => {
    const otlp = asMap(asMap(loki.limits_config, 'limits_config').otlp_config, 'otlp_config');
    const resource = asMap(otlp.resource_attributes, 'resource_attributes');
    expect(resource.ignore_defaults).toBe(true);
    const indexed = asList(resource.attributes_config, 'attributes_config')
      .map((c) => asMap(c, 'attributes_config[]'))
      .filter((c) => c.action === 'index_label')
      .flatMap((c) => asList(c.attributes, 'attributes').map(String));
    expect(indexed).toContain('service.name');
    for (const highCardinality of ['service.instance.id', 'request.id', 'request_id', 'trace_id', 'span_id', 'host.name', 'process.pid']) {
      expect(indexed).not.toContain(highCardinality);
    }
    // Log attributes (request_id) and the trace context stay structured metadata: no log_attributes rules.
    expect(otlp.log_attributes).toBeUndefined();
  });
});
