import { SERVICE_NAME } from '../../otel/wire-names';
import {
  PROMETHEUS_CONFIG_FILE,
  PROMETHEUS_FEATURES,
  PROMETHEUS_FLAGS,
  PROMETHEUS_OTLP_TRANSLATION_STRATEGIES,
  PROMETHEUS_SCRAPE_PROTOCOLS,
  PROMETHEUS_VERSION,
  unknownKeys,
} from './pinned-schemas';
import { appServices, asList, asMap, asString, containerPorts, hostAndPort, publishedPorts, readCompose, readYaml, service } from './stack-files';

/**
 * otel/prometheus.yaml and the prometheus compose service: keys the pinned release knows, flags it accepts, and
 * scrape targets that resolve to compose services on the ports they are given. The collector side (the
 * services' OTLP metrics, the gateway's dropped) is in collector.test.ts.
 */

const FILE = 'otel/prometheus.yaml';
const config = asMap(readYaml(FILE), FILE);
const compose = readCompose();
const prometheus = service(compose, 'prometheus');
const gateway = service(compose, 'gateway');

const scrapeConfigs = asList(config.scrape_configs, `${FILE}: scrape_configs`).map((c, i) => asMap(c, `${FILE}: scrape_configs[${i}]`));

/** `host:port` targets of one scrape config's static_configs. */
function targets(scrape: Record<string, unknown>): string[] {
  return asList(scrape.static_configs ?? [], 'static_configs').flatMap((s) => asList(asMap(s, 'static_configs[]').targets, 'targets').map(String));
}

/** `--name=value` / `--name` arguments of the prometheus command. */
const flags = prometheus.command.map((arg) => {
  const match = /^--([a-z0-9.-]+)(?:=(.*))?$/.exec(arg);
  if (!match) throw new Error(`prometheus: unexpected argument ${arg}`);
  return { name: match[1]!, value: match[2] };
});

function flag(name: string): string[] {
  return flags.filter((f) => f.name === name).map((f) => f.value ?? '');
}

const gatewayJob = scrapeConfigs.find((c) => c.job_name === SERVICE_NAME.gateway);

describe('the prometheus compose service', () => {
  it(`runs the image whose configuration is transcribed (prom/prometheus:v${PROMETHEUS_VERSION})`, () => {
    expect(prometheus.image).toBe(`prom/prometheus:v${PROMETHEUS_VERSION}`);
  });

  it('passes only flags the pinned release has, and feature names it knows', () => {
    expect(flags.map((f) => f.name).filter((name) => !PROMETHEUS_FLAGS.includes(name))).toEqual([]);
    const features = flag('enable-feature').flatMap((v) => v.split(','));
    expect(features.filter((f) => !PROMETHEUS_FEATURES.includes(f))).toEqual([]);
  });

  it('stores exemplars (exemplar-storage) and receives OTLP (--web.enable-otlp-receiver)', () => {
    expect(flag('enable-feature').flatMap((v) => v.split(','))).toContain('exemplar-storage');
    expect(flag('web.enable-otlp-receiver')).toEqual(['']);
  });

  it('keeps its data where the image declares its volume (the command replaces the default --storage.tsdb.path)', () => {
    expect(flag('storage.tsdb.path')).toEqual(['/prometheus']);
  });

  it('is reachable inside the compose network only, on the port Grafana and the collector use', () => {
    expect(publishedPorts(prometheus)).toEqual([]);
    expect(containerPorts(prometheus)).toEqual([9090]);
  });

  it('health-checks with promtool in exec form (in both the busybox and the distroless image; no shell needed)', () => {
    expect(prometheus.healthcheck?.test.slice(0, 4)).toEqual(['CMD', '/bin/promtool', 'check', 'ready']);
    expect(prometheus.healthcheck?.test.join(' ')).toContain('http://127.0.0.1:9090');
  });
});

describe(FILE, () => {
  it(`uses only keys Prometheus ${PROMETHEUS_VERSION} documents`, () => {
    expect(unknownKeys(config, PROMETHEUS_CONFIG_FILE)).toEqual([]);
  });

  it('catches a misspelt key (the key check is not vacuous)', () => {
    expect(unknownKeys({ scrape_configs: [{ job_name: 'x', static_config: [] }] }, PROMETHEUS_CONFIG_FILE)).toEqual(['scrape_configs[0].static_config']);
    expect(unknownKeys({ storage: { exemplars: { max_exemplar: 1 } } }, PROMETHEUS_CONFIG_FILE)).toEqual(['storage.exemplars.max_exemplar']);
  });

  it('has unique job names and only known scrape protocols', () => {
    const names = scrapeConfigs.map((c) => asString(c.job_name, 'job_name'));
    expect(new Set(names).size).toBe(names.length);
    const protocols = scrapeConfigs.flatMap((c) => asList(c.scrape_protocols ?? [], 'scrape_protocols').map(String));
    expect(protocols.filter((p) => !(PROMETHEUS_SCRAPE_PROTOCOLS as readonly string[]).includes(p))).toEqual([]);
  });

  it.each(scrapeConfigs.flatMap((c) => targets(c).map((t) => [String(c.job_name), t])))(
    'job %s scrapes %s: a compose service, on a port it exposes',
    (_job, target) => {
      const { host, port } = hostAndPort(target);
      expect(compose.services.has(host)).toBe(true);
      expect(containerPorts(service(compose, host))).toContain(port);
    },
  );

  describe('the gateway job', () => {
    it('is named after the gateway service.name, so job="gateway" means the gateway whichever way its metrics came', () => {
      expect(gatewayJob).toBeDefined();
      expect(gateway.environment.OTEL_SERVICE_NAME).toBe(SERVICE_NAME.gateway);
    });

    it('scrapes gateway:METRICS_PORT, the metrics listener compose gives the gateway, at /metrics', () => {
      const port = Number(gateway.environment.METRICS_PORT);
      expect(Number.isInteger(port) && port > 0).toBe(true);
      expect(targets(gatewayJob!)).toEqual([`gateway:${port}`]);
      expect(gatewayJob!.metrics_path ?? '/metrics').toBe('/metrics');
      expect(gatewayJob!.scheme ?? 'http').toBe('http');
    });

    it('reaches a listener bound to every interface but never published on the host', () => {
      const port = Number(gateway.environment.METRICS_PORT);
      expect(gateway.environment.METRICS_HOST).toBe('0.0.0.0');
      expect(gateway.expose).toContain(String(port));
      expect(publishedPorts(gateway).map((p) => p.container)).not.toContain(port);
      expect(port).not.toBe(Number(gateway.environment.PORT));
      expect(port).not.toBe(Number(gateway.environment.ADMIN_PORT));
    });

    it('asks for OpenMetrics first: the only text format that carries exemplars', () => {
      const protocols = asList(gatewayJob!.scrape_protocols, 'scrape_protocols').map(String);
      expect(protocols[0]).toBe('OpenMetricsText1.0.0');
      // No protobuf: the classic histograms then arrive as they are exposed.
      expect(protocols).not.toContain('PrometheusProto');
    });
  });

  it('scrapes no app other than the gateway: the services push OTLP, and a scrape would count them twice', () => {
    const scraped = new Set(scrapeConfigs.flatMap((c) => targets(c).map((t) => hostAndPort(t).host)));
    const apps = appServices(compose).map((s) => s.name);
    expect(apps.filter((name) => scraped.has(name))).toEqual(['gateway']);
  });

  it('translates OTLP names with unit suffixes, as the dashboard queries them (http_server_request_duration_seconds)', () => {
    const otlp = asMap(config.otlp ?? {}, 'otlp');
    const strategy = otlp.translation_strategy ?? 'UnderscoreEscapingWithSuffixes';
    expect(PROMETHEUS_OTLP_TRANSLATION_STRATEGIES as readonly unknown[]).toContain(strategy);
    expect(strategy).toBe('UnderscoreEscapingWithSuffixes');
    // service.name must stay the job label (promoted attributes would add a second copy of it).
    expect(otlp.keep_identifying_resource_attributes ?? false).toBe(false);
  });

  it('accepts late OTLP samples (an out-of-order window), since pushes are batched and retried', () => {
    const tsdb = asMap(asMap(config.storage, 'storage').tsdb, 'storage.tsdb');
    expect(tsdb.out_of_order_time_window).toMatch(/^[1-9]\d*[smh]$/);
  });

  it('scrapes as often as the apps push (OTEL_METRIC_EXPORT_INTERVAL), so both kinds of panel move together', () => {
    const interval = asString(asMap(config.global, 'global').scrape_interval, 'global.scrape_interval');
    const seconds = Number(/^(\d+)s$/.exec(interval)?.[1]);
    for (const app of appServices(compose)) expect({ app: app.name, ms: Number(app.environment.OTEL_METRIC_EXPORT_INTERVAL) }).toEqual({ app: app.name, ms: seconds * 1000 });
  });
});
