import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { SERVICE_NAME } from '../../otel/wire-names';
import { SHUTDOWN_BOUND_MS } from '../../src/workers';
import {
  appServices,
  asList,
  asMap,
  asString,
  containerPorts,
  hostAndPort,
  readCompose,
  readYaml,
  repoPath,
  publishedPorts,
  ROOT,
  service,
} from './stack-files';

const compose = readCompose();
const collectorConfig = asMap(readYaml('otel/collector.yaml'), 'otel/collector.yaml');

/** The compose service name of each process, and the `service.name` it must report. */
const APP_SERVICES: readonly { compose: string; serviceName: string; port: number }[] = [
  { compose: 'gateway', serviceName: SERVICE_NAME.gateway, port: 3000 },
  { compose: 'user-service', serviceName: SERVICE_NAME.users, port: 4001 },
  { compose: 'order-service', serviceName: SERVICE_NAME.orders, port: 4002 },
  { compose: 'notification-service', serviceName: SERVICE_NAME.notifications, port: 4003 },
];

function collectorOtlpHttpPort(): number {
  const receivers = asMap(collectorConfig.receivers, 'receivers');
  const http = asMap(asMap(asMap(receivers.otlp, 'receivers.otlp').protocols, 'protocols').http, 'protocols.http');
  return hostAndPort(asString(http.endpoint, 'protocols.http.endpoint')).port;
}

describe('docker-compose.yml', () => {
  it('publishes only the gateway, the Jaeger UI and Grafana, each on the loopback address', () => {
    const published = Object.fromEntries(
      [...compose.services.values()].filter((s) => s.ports.length > 0).map((s) => [s.name, publishedPorts(s)]),
    );
    expect(published).toEqual({
      gateway: [{ ip: '127.0.0.1', host: 3000, container: 3000 }],
      jaeger: [{ ip: '127.0.0.1', host: 16686, container: 16686 }],
      grafana: [{ ip: '127.0.0.1', host: 3001, container: 3000 }],
    });
  });

  it('runs the four processes from the one top-level Dockerfile, and pulls nothing else unpinned', () => {
    expect(appServices(compose).map((s) => s.name).sort()).toEqual(APP_SERVICES.map((a) => a.compose).sort());
    for (const s of appServices(compose)) expect(s.build).toBe('.');
  });

  it.each([...compose.services.values()].filter((s) => s.image !== undefined).map((s) => [s.name, s.image!]))(
    'pins %s to an exact release tag (%s)',
    (_name, image) => {
      expect(image).toMatch(/^[a-z0-9./-]+:v?\d+\.\d+\.\d+(-[a-z0-9.]+)?$/);
    },
  );

  describe.each(APP_SERVICES)('$compose', ({ compose: name, serviceName, port }) => {
    const s = service(compose, name);

    it('sends OTLP/HTTP to the collector service on the port its receiver listens on', () => {
      const endpoint = hostAndPort(s.environment.OTEL_EXPORTER_OTLP_ENDPOINT ?? '');
      expect(s.environment.OTEL_EXPORTER_OTLP_ENDPOINT).toMatch(/^http:\/\//);
      expect(compose.services.has(endpoint.host)).toBe(true);
      expect(service(compose, endpoint.host).image).toMatch(/^otel\/opentelemetry-collector-contrib:/);
      expect(endpoint.port).toBe(collectorOtlpHttpPort());
      expect(s.environment.OTEL_EXPORTER_OTLP_PROTOCOL).toBe('http/protobuf');
      expect(s.dependsOn[endpoint.host]).toBeDefined();
    });

    it('gives the process longer than its own shutdown bound before Docker kills it (Docker waits 10 s by default)', () => {
      // Drain 10 s, then the telemetry flush 5 s; a cluster's primary waits up to SHUTDOWN_BOUND_MS for its workers.
      const seconds = /^(\d+)s$/.exec(s.stopGracePeriod ?? '')?.[1];
      expect(Number(seconds) * 1000).toBeGreaterThan(SHUTDOWN_BOUND_MS);
    });

    it(`reports service.name ${serviceName}, the shared wire name`, () => {
      expect(s.environment.OTEL_SERVICE_NAME).toBe(serviceName);
    });

    it(`listens on every interface on port ${port}, which it exposes and health-checks`, () => {
      expect(s.environment.HOST).toBe('0.0.0.0');
      expect(Number(s.environment.PORT)).toBe(port);
      expect(containerPorts(s)).toContain(port);
      expect(s.healthcheck?.test.join(' ')).toContain(`http://127.0.0.1:${port}/`);
    });

    // As the Kubernetes manifests run them (readOnlyRootFilesystem, drop ALL, allowPrivilegeEscalation: false).
    it('runs on a read-only root with a writable /tmp, no capabilities and no privilege escalation', () => {
      expect({ readOnly: s.readOnly, tmpfs: s.tmpfs, capDrop: s.capDrop, securityOpt: s.securityOpt }).toEqual({ readOnly: true, tmpfs: ['/tmp'], capDrop: ['ALL'], securityOpt: ['no-new-privileges:true'] });
    });

    it('health-checks with node itself (the slim image has no curl or wget)', () => {
      expect(s.healthcheck?.test.slice(0, 3)).toEqual(['CMD', 'node', '-e']);
    });
  });

  it.each([
    { desc: 'gateway -> user-service', from: 'gateway', variable: 'USER_SERVICE_URL', to: 'user-service' },
    { desc: 'gateway -> order-service', from: 'gateway', variable: 'ORDER_SERVICE_URL', to: 'order-service' },
    { desc: 'gateway -> notification-service', from: 'gateway', variable: 'NOTIF_SERVICE_URL', to: 'notification-service' },
    { desc: 'gateway -> redis', from: 'gateway', variable: 'REDIS_URL', to: 'redis' },
    { desc: 'order-service -> user-service', from: 'order-service', variable: 'USER_SERVICE_URL', to: 'user-service' },
    { desc: 'order-service -> notification-service', from: 'order-service', variable: 'NOTIF_SERVICE_URL', to: 'notification-service' },
  ])('reaches its upstream by compose name and port: $desc', ({ from, variable, to }) => {
    const caller = service(compose, from);
    const target = hostAndPort(caller.environment[variable] ?? '');
    expect(target.host).toBe(to);
    expect(containerPorts(service(compose, to))).toContain(target.port);
    expect(caller.dependsOn[to]).toBe('service_healthy');
  });

  it('waits for service_healthy only on dependencies that have a health check', () => {
    const dependencies = [...compose.services.values()].flatMap((s) =>
      Object.entries(s.dependsOn).map(([target, condition]) => ({ from: s.name, target, condition })),
    );
    expect(dependencies.length).toBeGreaterThan(0);
    const broken = dependencies.filter(
      ({ target, condition }) =>
        !compose.services.has(target) ||
        !['service_started', 'service_healthy'].includes(condition) ||
        (condition === 'service_healthy' && service(compose, target).healthcheck === undefined),
    );
    expect(broken).toEqual([]);
  });

  it('settles in order: the dependency graph has no cycle', () => {
    const visiting = new Set<string>();
    const done = new Set<string>();
    const visit = (name: string, trail: string[]): void => {
      if (done.has(name)) return;
      if (visiting.has(name)) throw new Error(`dependency cycle: ${[...trail, name].join(' -> ')}`);
      visiting.add(name);
      for (const next of Object.keys(service(compose, name).dependsOn)) visit(next, [...trail, name]);
      visiting.delete(name);
      done.add(name);
    };
    for (const name of compose.services.keys()) visit(name, []);
    expect(done.size).toBe(compose.services.size);
  });

  it('gives the collector no health check (its image is FROM scratch), so dependants wait for service_started', () => {
    expect(service(compose, 'otel-collector').healthcheck).toBeUndefined();
    const conditions = [...compose.services.values()].flatMap((s) => s.dependsOn['otel-collector'] ?? []);
    expect(conditions.length).toBeGreaterThan(0);
    expect(new Set(conditions)).toEqual(new Set(['service_started']));
  });

  it('health-checks every other service with a command its image has, in exec form (no shell)', () => {
    const expected: Record<string, string> = {
      redis: 'redis-cli', // redis alpine image
      jaeger: 'wget', // Alpine base: busybox wget
      loki: '/usr/bin/loki', // distroless: Loki's own `-health` command (cmd/loki/health.go, in v3.7.6)
      grafana: 'curl', // Grafana's Alpine image installs curl
      prometheus: '/bin/promtool', // `promtool check ready`: in the busybox and the distroless image alike
    };
    for (const [name, binary] of Object.entries(expected)) {
      const test = service(compose, name).healthcheck?.test ?? [];
      expect({ name, form: test[0], binary: test[1] }).toEqual({ name, form: 'CMD', binary });
    }
    expect(service(compose, 'loki').healthcheck?.test).toEqual(['CMD', '/usr/bin/loki', '-health']);
  });

  it('keeps a named volume only for Loki, whose data should survive a restart', () => {
    expect(compose.volumes).toEqual(['loki-data']);
    const named = [...compose.services.values()].flatMap((s) =>
      s.volumes.filter((v) => !v.startsWith('.') && !v.startsWith('/')).map((v) => `${s.name} ${v}`),
    );
    expect(named).toEqual(['loki loki-data:/loki']);
    const loki = asMap(readYaml('otel/loki.yaml'), 'otel/loki.yaml');
    expect(asMap(loki.common, 'common').path_prefix).toBe('/loki');
  });

  it('bind-mounts only files and folders that exist in the repository, read-only', () => {
    const binds = [...compose.services.values()].flatMap((s) => s.volumes.filter((v) => v.startsWith('./')));
    expect(binds.length).toBeGreaterThan(0);
    for (const bind of binds) {
      const [source, , mode] = bind.split(':');
      expect({ bind, exists: existsSync(repoPath(source!)), mode }).toEqual({ bind, exists: true, mode: 'ro' });
    }
  });

  it.each([
    { desc: 'the collector reads otel/collector.yaml', name: 'otel-collector', file: './otel/collector.yaml', flag: '--config=' },
    { desc: 'Loki reads otel/loki.yaml', name: 'loki', file: './otel/loki.yaml', flag: '-config.file=' },
    { desc: 'Prometheus reads otel/prometheus.yaml', name: 'prometheus', file: './otel/prometheus.yaml', flag: '--config.file=' },
  ])('points the config flag at the mounted file: $desc', ({ name, file, flag }) => {
    const s = service(compose, name);
    const mount = s.volumes.find((v) => v.startsWith(`${file}:`));
    const target = mount?.split(':')[1];
    expect(target).toBeDefined();
    expect(s.command).toContain(`${flag}${target}`);
  });

  it('mounts Grafana provisioning where Grafana reads it and the dashboards where the provider points', () => {
    const grafana = service(compose, 'grafana');
    expect(grafana.volumes).toContain('./grafana/provisioning:/etc/grafana/provisioning:ro');
    const file = 'grafana/provisioning/dashboards/dashboards.yaml';
    const providers = asList(asMap(readYaml(file), file).providers, `${file}: providers`);
    const options = asMap(asMap(providers[0], `${file}: providers[0]`).options, `${file}: providers[0].options`);
    const dashboards = asString(options.path, `${file}: providers[0].options.path`);
    expect(grafana.volumes).toContain(`./grafana/dashboards:${dashboards}:ro`);
    const home = grafana.environment.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH ?? '';
    expect(home.startsWith(`${dashboards}/`)).toBe(true);
    expect(existsSync(repoPath('grafana/dashboards', home.slice(dashboards.length + 1)))).toBe(true);
  });

  it('lets anonymous local users into Grafana without making them Admin', () => {
    const env = service(compose, 'grafana').environment;
    expect(env.GF_AUTH_ANONYMOUS_ENABLED).toBe('true');
    expect(['Viewer', 'Editor']).toContain(env.GF_AUTH_ANONYMOUS_ORG_ROLE);
  });

  // CI installs Debian's docker-compose (.ci/run) and must run this; a developer machine without it skips.
  const composeCli = spawnSync('docker-compose', ['version'], { encoding: 'utf8' });
  (composeCli.status === 0 || process.env.CI ? it : it.skip)('passes `docker-compose config -q` (docker-compose 1.29 schema)', () => {
    const result = spawnSync('docker-compose', ['-f', 'docker-compose.yml', 'config', '-q'], { cwd: ROOT, encoding: 'utf8' });
    expect({ status: result.status, stderr: result.stderr }).toEqual({ status: 0, stderr: '' });
  });
});
