import { readFileSync } from 'node:fs';
import path from 'node:path';
import { readTelemetryConfig } from '../../otel/telemetry-config';
import { SERVICE_NAME } from '../../otel/wire-names';
import { SERVICE_ENV_VARIABLES, loadServiceEnv, type ServiceKey } from '../../services/shared/service-config';
import { DEPLOYMENT_ENV_VARIABLES, ENV_OVERRIDES, envShadowedKeys, GATEWAY_ENV_VARIABLES, loadConfig, valueAt } from '../../src/config';
import { readCompose, ROOT, service } from './stack-files';

/**
 * The environment compose gives each process is the environment its code reads: the lists come from the
 * config modules themselves (GATEWAY_ENV_VARIABLES, SERVICE_ENV_VARIABLES), and the values are run through the
 * same loaders the processes use at startup, so a value the schema refuses fails here, not in `compose up`.
 */

const compose = readCompose();

/** Compose's `${NAME:-default}` / `${NAME-default}` / `${NAME}` / `$$`, evaluated with nothing set in the shell. */
function interpolate(value: string, shell: Record<string, string> = {}): string {
  return value.replace(/\$\$|\$\{(\w+)(?:(:?-)([^}]*))?\}/g, (match, name: string | undefined, op: string | undefined, fallback: string | undefined) => {
    if (match === '$$') return '$';
    const set = shell[name!];
    if (op === ':-') return set === undefined || set === '' ? fallback! : set;
    if (op === '-') return set === undefined ? fallback! : set;
    return set ?? '';
  });
}

/** The environment a compose service's process starts with (only what compose sets). */
function composeEnv(name: string): Record<string, string> {
  return Object.fromEntries(Object.entries(service(compose, name).environment).map(([k, v]) => [k, interpolate(v)]));
}

/** OTEL_* variables belong to the telemetry bootstrap, checked separately below. */
function appVariables(name: string): string[] {
  return Object.keys(service(compose, name).environment).filter((k) => !k.startsWith('OTEL_')).sort();
}

const SERVICES: readonly { key: ServiceKey; compose: string }[] = [
  { key: 'users', compose: 'user-service' },
  { key: 'orders', compose: 'order-service' },
  { key: 'notifications', compose: 'notification-service' },
];

const PROCESSES: readonly { compose: string; serviceName: string }[] = [
  { compose: 'gateway', serviceName: SERVICE_NAME.gateway },
  { compose: 'user-service', serviceName: SERVICE_NAME.users },
  { compose: 'order-service', serviceName: SERVICE_NAME.orders },
  { compose: 'notification-service', serviceName: SERVICE_NAME.notifications },
];

describe('gateway environment in docker-compose.yml', () => {
  // A variable over a key the file sets overrides it for the container's life: an edit of gateway.config.json then
  // changed nothing (the limits, token issuer and audience and proxy timeout were set in both).
  it('sets exactly the variables the gateway reads (GATEWAY_ENV_VARIABLES) but those over keys the shipped config file sets', () => {
    const file = JSON.parse(readFileSync(path.join(ROOT, 'gateway.config.json'), 'utf8')) as unknown;
    const fileOwned = new Set(Object.entries(ENV_OVERRIDES).flatMap(([name, keyPath]) => (valueAt(file, keyPath) === undefined ? [] : [name])));
    expect(fileOwned).toEqual(new Set(['PORT', 'JWT_ISSUER', 'JWT_AUDIENCE', 'RATE_LIMIT_MAX', 'RATE_LIMIT_WINDOW_MS', 'PROXY_TIMEOUT_MS', 'USER_SERVICE_URL', 'ORDER_SERVICE_URL', 'NOTIF_SERVICE_URL', 'NOTIF_GRPC_SERVICE_URL']));
    // Where each deployment differs (its port and the services' addresses), the environment says it; nothing else.
    expect(appVariables('gateway')).toEqual(GATEWAY_ENV_VARIABLES.filter((name) => !fileOwned.has(name) || DEPLOYMENT_ENV_VARIABLES.has(name)).sort());
  });

  // The start's warning of the file keys the environment overrides: under the shipped environment, not a word.
  it('overrides none of the file keys the start warns of', () => {
    expect(envShadowedKeys(composeEnv('gateway'), ROOT, DEPLOYMENT_ENV_VARIABLES)).toEqual([]);
    // Its addresses it does override, as every deployment does.
    expect(envShadowedKeys(composeEnv('gateway'), ROOT)).toEqual(expect.arrayContaining(['services.users.url (USER_SERVICE_URL)']));
  });

  it('is a configuration the gateway accepts, wired to the compose services', () => {
    const config = loadConfig(composeEnv('gateway'), ROOT);
    expect(config.host).toBe('0.0.0.0');
    expect(config.port).toBe(3000);
    expect(Object.fromEntries(Object.entries(config.services).map(([key, s]) => [key, s.url]))).toEqual({
      users: 'http://user-service:4001',
      orders: 'http://order-service:4002',
      notifications: 'http://notification-service:4003',
    });
    expect(config.rateLimit.redisUrl).toBe('redis://redis:6379');
  });

  it('opens the metrics listener on every interface of the container, on a port other than the public and admin ones', () => {
    const config = loadConfig(composeEnv('gateway'), ROOT);
    expect(config.metrics.host).toBe('0.0.0.0');
    expect(config.metrics.port).toEqual(expect.any(Number));
    expect([config.port, config.admin.port]).not.toContain(config.metrics.port);
  });

  it('accepts a JWT_SECRET from the shell, and starts without one (local development secret)', () => {
    expect(interpolate(service(compose, 'gateway').environment.JWT_SECRET ?? '', { JWT_SECRET: 's3cret' })).toBe('s3cret');
    expect(composeEnv('gateway').NODE_ENV).toBe('development');
  });
});

describe.each(SERVICES)('$compose environment in docker-compose.yml', ({ key, compose: name }) => {
  it(`sets exactly the variables the ${key} service reads (SERVICE_ENV_VARIABLES.${key})`, () => {
    expect(appVariables(name)).toEqual([...SERVICE_ENV_VARIABLES[key]].sort());
  });

  it('is a configuration the service accepts, listening on every interface', () => {
    const env = loadServiceEnv(key, composeEnv(name));
    expect(env.HOST).toBe('0.0.0.0');
  });
});

describe.each(PROCESSES)('telemetry of $compose', ({ compose: name, serviceName }) => {
  const entryScript = service(compose, name).command.at(-1);

  it('exports traces and logs over OTLP/HTTP to the collector service, with no configuration warning', () => {
    const config = readTelemetryConfig(composeEnv(name), entryScript, '0.0.0');
    expect(config.enabled).toBe(true);
    expect(config.warnings).toEqual([]);
    expect(config.serviceName).toBe(serviceName);
    expect(config.traces).toMatchObject({ exporters: ['otlp'], protocol: 'http/protobuf', url: 'http://otel-collector:4318/v1/traces' });
    expect(config.logs).toMatchObject({ exporters: ['otlp'], protocol: 'http/protobuf', url: 'http://otel-collector:4318/v1/logs' });
  });

  it('sets only OTEL_* variables the telemetry bootstrap reads', () => {
    const read = new Set<string>();
    const env = new Proxy(composeEnv(name), {
      get(target, key) {
        if (typeof key === 'string') read.add(key);
        return Reflect.get(target, key);
      },
    });
    readTelemetryConfig(env, entryScript, '0.0.0');
    const otel = Object.keys(service(compose, name).environment).filter((k) => k.startsWith('OTEL_'));
    expect(otel.filter((k) => !read.has(k))).toEqual([]);
  });
});
