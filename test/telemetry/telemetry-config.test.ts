import { readTelemetryConfig, serviceNameFromEntryScript, type TelemetryConfig } from '../../otel/telemetry-config';
import { describeDestination } from '../../otel/telemetry';
import { SERVICE_NAME } from '../../otel/wire-names';

const read = (env: Readonly<Record<string, string | undefined>>, entry = '/app/dist/services/users/main.js') =>
  readTelemetryConfig(env, entry, '1.0.0');

describe('service.name', () => {
  it.each([
    { desc: 'the compiled gateway', entry: '/app/dist/src/main.js', name: SERVICE_NAME.gateway },
    { desc: 'the users service', entry: '/app/dist/services/users/main.js', name: SERVICE_NAME.users },
    { desc: 'the orders service', entry: 'dist/services/orders/main.js', name: SERVICE_NAME.orders },
    { desc: 'the notifications service', entry: '/srv/services/notifications/main.js', name: SERVICE_NAME.notifications },
    { desc: 'a TypeScript entry', entry: '/app/src/main.ts', name: SERVICE_NAME.gateway },
    { desc: 'an unrelated script', entry: '/app/bench/run.js', name: undefined },
    { desc: 'a services file that is not main', entry: '/app/dist/services/users/app.js', name: undefined },
  ])('is derived from the entry script path for $desc', ({ entry, name }) => {
    expect(serviceNameFromEntryScript(entry)).toBe(name);
  });

  it.each([
    { desc: 'OTEL_SERVICE_NAME wins over everything', env: { OTEL_SERVICE_NAME: 'x', OTEL_RESOURCE_ATTRIBUTES: 'service.name=y' }, name: 'x' },
    { desc: 'service.name in OTEL_RESOURCE_ATTRIBUTES wins over the path', env: { OTEL_RESOURCE_ATTRIBUTES: 'a=b,service.name=y%20z' }, name: 'y z' },
    { desc: 'the entry script is the fallback', env: {}, name: SERVICE_NAME.users },
    // As the SDK's resource gets it: the last of two, and none from a value the SDK discards whole (spec: "the
    // entire environment variable value SHOULD be discarded"); read on its own, it named the logs' service.
    { desc: 'the last service.name of OTEL_RESOURCE_ATTRIBUTES, as the resource takes it', env: { OTEL_RESOURCE_ATTRIBUTES: 'service.name=a,service.name=b' }, name: 'b' },
    { desc: 'the entry script when OTEL_RESOURCE_ATTRIBUTES does not decode', env: { OTEL_RESOURCE_ATTRIBUTES: 'service.name=a%ZZ' }, name: SERVICE_NAME.users },
    { desc: 'the entry script when OTEL_RESOURCE_ATTRIBUTES has a malformed pair', env: { OTEL_RESOURCE_ATTRIBUTES: 'service.name=checkout,team=a=b' }, name: SERVICE_NAME.users },
    { desc: 'the entry script when an OTEL_RESOURCE_ATTRIBUTES value is over 255 characters', env: { OTEL_RESOURCE_ATTRIBUTES: `service.name=checkout,note=${'x'.repeat(256)}` }, name: SERVICE_NAME.users },
  ])('$desc', ({ env, name }) => {
    expect(read(env).serviceName).toBe(name);
  });

  it('says why an OTEL_RESOURCE_ATTRIBUTES it discards was discarded', () => {
    expect(read({ OTEL_RESOURCE_ATTRIBUTES: 'service.name=a%ZZ' }).warnings).toEqual([expect.stringMatching(/^OTEL_RESOURCE_ATTRIBUTES is discarded \("service\.name=a%ZZ" is not percent-encoded UTF-8\)/)]);
  });

  it('is the OpenTelemetry default for an unknown entry script', () => {
    expect(readTelemetryConfig({}, '/x/y.js', undefined).serviceName).toBe('unknown_service:node');
  });
});

describe('defaults, with no OTEL_* variables', () => {
  const config = read({});

  it('exports traces and logs as OTLP protobuf to localhost:4318, batched with SDK defaults', () => {
    expect(config).toMatchObject<Partial<TelemetryConfig>>({
      enabled: true,
      serviceVersion: '1.0.0',
      environment: 'development',
      traces: { exporters: ['otlp'], protocol: 'http/protobuf', url: 'http://localhost:4318/v1/traces', batch: {} },
      logs: { exporters: ['otlp'], protocol: 'http/protobuf', url: 'http://localhost:4318/v1/logs', batch: {} },
      metrics: { exporters: ['otlp'], protocol: 'http/protobuf', url: 'http://localhost:4318/v1/metrics', exportIntervalMillis: 60_000, exportTimeoutMillis: 30_000 },
      instrumentations: ['http-server', 'http-client', 'koa', 'undici'],
      sampler: { name: 'parentbased_always_on', ratio: 1 },
      sdkLogLevel: undefined,
      warnings: [],
    });
  });

  it('is frozen', () => {
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.traces.batch)).toBe(true);
  });
});

it.each([
  { desc: 'OTEL_SDK_DISABLED=true turns it off', env: { OTEL_SDK_DISABLED: 'true' }, expected: { enabled: false } },
  { desc: 'OTEL_SDK_DISABLED=TRUE too', env: { OTEL_SDK_DISABLED: 'TRUE' }, expected: { enabled: false } },
  { desc: 'OTEL_SDK_DISABLED=false leaves it on', env: { OTEL_SDK_DISABLED: 'false' }, expected: { enabled: true } },
  { desc: 'NODE_ENV names the environment', env: { NODE_ENV: 'production' }, expected: { environment: 'production' } },
  {
    desc: 'the endpoint gets /v1/<signal> appended, trailing slash or not',
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/' },
    expected: { traces: { url: 'http://collector:4318/v1/traces' }, logs: { url: 'http://collector:4318/v1/logs' } },
  },
  {
    desc: 'a per-signal endpoint is used as is',
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_EXPORTER_OTLP_LOGS_ENDPOINT: 'http://loki:3100/otlp/v1/logs' },
    expected: { traces: { url: 'http://c:4318/v1/traces' }, logs: { url: 'http://loki:3100/otlp/v1/logs' } },
  },
  {
    desc: 'http/json is supported, per signal too',
    env: { OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_EXPORTER_OTLP_LOGS_PROTOCOL: 'http/protobuf' },
    expected: { traces: { protocol: 'http/json' }, logs: { protocol: 'http/protobuf' } },
  },
  {
    desc: 'exporters can be console or none per signal',
    env: { OTEL_TRACES_EXPORTER: 'console', OTEL_LOGS_EXPORTER: 'none' },
    expected: { traces: { exporters: ['console'] }, logs: { exporters: [] } },
  },
  {
    desc: 'batch processors are tuned by OTEL_BSP_* and OTEL_BLRP_*',
    env: { OTEL_BSP_SCHEDULE_DELAY: '200', OTEL_BSP_MAX_QUEUE_SIZE: '100', OTEL_BLRP_EXPORT_TIMEOUT: '3000' },
    expected: {
      traces: { batch: { scheduledDelayMillis: 200, maxQueueSize: 100 } },
      logs: { batch: { exportTimeoutMillis: 3000 } },
    },
  },
  {
    desc: 'OTEL_NODE_ENABLED_INSTRUMENTATIONS replaces the list',
    env: { OTEL_NODE_ENABLED_INSTRUMENTATIONS: 'undici,@opentelemetry/instrumentation-koa' },
    expected: { instrumentations: ['undici', 'koa'] },
  },
  {
    desc: 'OTEL_NODE_ENABLED_INSTRUMENTATIONS=none enables none',
    env: { OTEL_NODE_ENABLED_INSTRUMENTATIONS: 'none' },
    expected: { instrumentations: [] },
  },
  {
    desc: 'OTEL_NODE_DISABLED_INSTRUMENTATIONS removes from it, http meaning both sides',
    env: { OTEL_NODE_DISABLED_INSTRUMENTATIONS: 'http,koa' },
    expected: { instrumentations: ['undici'] },
  },
  {
    desc: 'one side of http can be kept, e.g. a gateway that makes its own server spans',
    env: { OTEL_NODE_DISABLED_INSTRUMENTATIONS: 'http-server,koa' },
    expected: { instrumentations: ['http-client', 'undici'] },
  },
  {
    desc: 'the gateway loads no instrumentation by default: it makes its own spans and injects its own headers',
    env: { OTEL_SERVICE_NAME: SERVICE_NAME.gateway },
    expected: { instrumentations: [] },
  },
  { desc: 'OTEL_LOG_LEVEL hands diagnostics back to the SDK', env: { OTEL_LOG_LEVEL: 'debug' }, expected: { sdkLogLevel: 'debug' } },
  {
    desc: 'a service name that is also an Object property gets the full default list',
    env: { OTEL_SERVICE_NAME: 'constructor', OTEL_NODE_DISABLED_INSTRUMENTATIONS: 'toString' },
    expected: { serviceName: 'constructor', instrumentations: ['http-server', 'http-client', 'koa', 'undici'] },
    warnings: ['OTEL_NODE_DISABLED_INSTRUMENTATIONS names "tostring", which this bootstrap does not load (http, http-server, http-client, koa, undici)'],
  },
  {
    desc: 'OTEL_TRACES_SAMPLER_ARG is the ratio of a traceidratio sampler',
    env: { OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.1' },
    expected: { sampler: { name: 'parentbased_traceidratio', ratio: 0.1 } },
  },
  { desc: 'a ratio of 0 is in range', env: { OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '0' }, expected: { sampler: { name: 'traceidratio', ratio: 0 } } },
  { desc: 'a ratio sampler without OTEL_TRACES_SAMPLER_ARG samples everything', env: { OTEL_TRACES_SAMPLER: 'traceidratio' }, expected: { sampler: { name: 'traceidratio', ratio: 1 } } },
  { desc: 'sampler names are case-insensitive', env: { OTEL_TRACES_SAMPLER: 'Always_Off' }, expected: { sampler: { name: 'always_off', ratio: 1 } } },
  {
    desc: 'OTEL_TRACES_SAMPLER_ARG is not read for samplers without a ratio, as by the SDK',
    env: { OTEL_TRACES_SAMPLER: 'always_on', OTEL_TRACES_SAMPLER_ARG: 'junk' },
    expected: { sampler: { name: 'always_on', ratio: 1 } },
  },
  { desc: 'OTEL_METRICS_EXPORTER=none turns metric export off', env: { OTEL_METRICS_EXPORTER: 'none' }, expected: { metrics: { exporters: [] }, traces: { exporters: ['otlp'] } } },
  { desc: 'metrics can go to stdout, and to OTLP at once', env: { OTEL_METRICS_EXPORTER: 'OTLP, console' }, expected: { metrics: { exporters: ['otlp', 'console'] } } },
  {
    desc: 'metrics use the general endpoint and protocol, with /v1/metrics appended',
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' },
    expected: { metrics: { url: 'http://collector:4318/v1/metrics', protocol: 'http/json' } },
  },
  {
    desc: 'metrics have their own endpoint and protocol variables',
    env: { OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'http://prometheus:9090/api/v1/otlp/v1/metrics', OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'http/json' },
    expected: { metrics: { url: 'http://prometheus:9090/api/v1/otlp/v1/metrics', protocol: 'http/json' }, traces: { protocol: 'http/protobuf' } },
  },
  {
    desc: 'OTEL_METRIC_EXPORT_INTERVAL and _TIMEOUT set the reader, ms',
    env: { OTEL_METRIC_EXPORT_INTERVAL: '15000', OTEL_METRIC_EXPORT_TIMEOUT: '5000' },
    expected: { metrics: { exportIntervalMillis: 15_000, exportTimeoutMillis: 5_000 } },
  },
  {
    desc: 'a short interval quietly cuts the default timeout to the interval',
    env: { OTEL_METRIC_EXPORT_INTERVAL: '200' },
    expected: { metrics: { exportIntervalMillis: 200, exportTimeoutMillis: 200 } },
  },
  { desc: 'empty variables count as unset', env: { OTEL_TRACES_EXPORTER: '', OTEL_SERVICE_NAME: ' ' }, expected: { traces: { exporters: ['otlp'] }, serviceName: SERVICE_NAME.users } },
])('$desc', ({ env, expected, warnings = [] }: { env: Readonly<Record<string, string | undefined>>; expected: object; warnings?: readonly string[] }) => {
  const config = read(env);
  expect(config).toMatchObject(expected);
  expect(config.warnings).toEqual(warnings);
});

it.each([
  {
    desc: 'an unknown exporter',
    env: { OTEL_TRACES_EXPORTER: 'zipkin' },
    expected: { traces: { exporters: [] } },
    warning: 'OTEL_TRACES_EXPORTER="zipkin" is not supported (otlp, console, none); ignored',
  },
  {
    desc: 'grpc',
    env: { OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' },
    expected: { traces: { protocol: 'http/protobuf' } },
    warning: 'OTEL_EXPORTER_OTLP_PROTOCOL="grpc" is not supported (http/protobuf, http/json); using http/protobuf',
  },
  {
    desc: 'an endpoint without its scheme',
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' },
    expected: { traces: { url: 'http://localhost:4318/v1/traces' } },
    warning: 'OTEL_EXPORTER_OTLP_ENDPOINT="collector:4318" is not an http(s) URL; using http://localhost:4318',
  },
  // Printed as given, a password in it reached stderr.
  {
    desc: 'an endpoint of another scheme with credentials',
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'ftp://tenant:S3CRET@collector:4318' },
    expected: { traces: { url: 'http://localhost:4318/v1/traces' } },
    warning: 'OTEL_EXPORTER_OTLP_ENDPOINT="ftp://REDACTED@collector:4318" is not an http(s) URL; using http://localhost:4318',
  },
  // A pasted password with a `/` makes the URL no URL, and hid it from redactUrl's userinfo.
  {
    desc: 'an endpoint whose password holds a slash',
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'https://tenant:S3/CRET@collector:4318' },
    expected: { traces: { url: 'http://localhost:4318/v1/traces' } },
    warning: 'OTEL_EXPORTER_OTLP_ENDPOINT="https://REDACTED@collector:4318" is not an http(s) URL; using http://localhost:4318',
  },
  {
    desc: 'a malformed per-signal endpoint',
    env: { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'not a url', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' },
    expected: { traces: { url: 'http://c:4318/v1/traces' } },
    warning: 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="not a url" is not an http(s) URL; using OTEL_EXPORTER_OTLP_ENDPOINT or the default',
  },
  {
    desc: 'a batch setting that is not a positive integer',
    env: { OTEL_BSP_SCHEDULE_DELAY: '-5' },
    expected: { traces: { batch: { scheduledDelayMillis: undefined } } },
    warning: 'OTEL_BSP_SCHEDULE_DELAY="-5" is not a positive integer; using the SDK default',
  },
  {
    desc: 'a sampler the SDK for Node does not implement',
    env: { OTEL_TRACES_SAMPLER: 'xray' },
    expected: { sampler: { name: 'parentbased_always_on', ratio: 1 } },
    warning:
      'OTEL_TRACES_SAMPLER="xray" is not supported (always_on, always_off, traceidratio, parentbased_always_on, ' +
      'parentbased_always_off, parentbased_traceidratio); using parentbased_always_on',
  },
  {
    desc: 'a sampler ratio that is not a number',
    env: { OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: 'half' },
    expected: { sampler: { name: 'parentbased_traceidratio', ratio: 1 } },
    warning: 'OTEL_TRACES_SAMPLER_ARG="half" is not a number from 0 to 1; using 1',
  },
  {
    desc: 'a sampler ratio above 1',
    env: { OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '1.5' },
    expected: { sampler: { name: 'traceidratio', ratio: 1 } },
    warning: 'OTEL_TRACES_SAMPLER_ARG="1.5" is not a number from 0 to 1; using 1',
  },
  {
    desc: 'a negative sampler ratio',
    env: { OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '-0.1' },
    expected: { sampler: { name: 'traceidratio', ratio: 1 } },
    warning: 'OTEL_TRACES_SAMPLER_ARG="-0.1" is not a number from 0 to 1; using 1',
  },
  {
    desc: 'an unknown metrics exporter',
    env: { OTEL_METRICS_EXPORTER: 'prometheus' },
    expected: { metrics: { exporters: [] } },
    warning: 'OTEL_METRICS_EXPORTER="prometheus" is not supported (otlp, console, none); ignored',
  },
  {
    desc: 'a metrics exporter list mixing none with an exporter',
    env: { OTEL_METRICS_EXPORTER: 'none,otlp' },
    expected: { metrics: { exporters: ['otlp'] } },
    warning: 'OTEL_METRICS_EXPORTER mixes "none" with exporters; "none" is ignored',
  },
  {
    desc: 'a metrics protocol that is not HTTP',
    env: { OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'grpc' },
    expected: { metrics: { protocol: 'http/protobuf' }, traces: { protocol: 'http/protobuf' } },
    warning: 'OTEL_EXPORTER_OTLP_METRICS_PROTOCOL="grpc" is not supported (http/protobuf, http/json); using http/protobuf',
  },
  {
    desc: 'a metric export interval of 0',
    env: { OTEL_METRIC_EXPORT_INTERVAL: '0' },
    expected: { metrics: { exportIntervalMillis: 60_000, exportTimeoutMillis: 30_000 } },
    warning: 'OTEL_METRIC_EXPORT_INTERVAL="0" is not a positive integer; using the SDK default',
  },
  // Past 2^31 - 1 ms Node fires a timer after 1 ms: "never" was "at once" (every export timed out, or a hot export loop).
  {
    desc: 'a span export timeout beyond what a Node timer holds',
    env: { OTEL_BSP_EXPORT_TIMEOUT: '9999999999' },
    expected: { traces: { batch: { exportTimeoutMillis: undefined } } },
    warning: "OTEL_BSP_EXPORT_TIMEOUT=\"9999999999\" is longer than Node's longest timer (2147483647 ms, which would fire at once); using the SDK default",
  },
  {
    desc: 'a metric export interval beyond what a Node timer holds',
    env: { OTEL_METRIC_EXPORT_INTERVAL: '2147483648' },
    expected: { metrics: { exportIntervalMillis: 60_000 } },
    warning: "OTEL_METRIC_EXPORT_INTERVAL=\"2147483648\" is longer than Node's longest timer (2147483647 ms, which would fire at once); using the SDK default",
  },
  {
    desc: 'a log batch size in hexadecimal (Number() read it as 16)',
    env: { OTEL_BLRP_MAX_EXPORT_BATCH_SIZE: '0x10' },
    expected: { logs: { batch: { maxExportBatchSize: undefined } } },
    warning: 'OTEL_BLRP_MAX_EXPORT_BATCH_SIZE="0x10" is not a positive integer; using the SDK default',
  },
  {
    desc: 'a metric export interval with a unit',
    env: { OTEL_METRIC_EXPORT_INTERVAL: '15s' },
    expected: { metrics: { exportIntervalMillis: 60_000 } },
    warning: 'OTEL_METRIC_EXPORT_INTERVAL="15s" is not a positive integer; using the SDK default',
  },
  {
    desc: 'a metric export timeout longer than the interval',
    env: { OTEL_METRIC_EXPORT_INTERVAL: '10000', OTEL_METRIC_EXPORT_TIMEOUT: '30000' },
    expected: { metrics: { exportIntervalMillis: 10_000, exportTimeoutMillis: 10_000 } },
    warning: 'OTEL_METRIC_EXPORT_TIMEOUT="30000" is longer than the export interval (10000 ms); using 10000',
  },
  {
    desc: 'an instrumentation this bootstrap does not load',
    env: { OTEL_NODE_ENABLED_INSTRUMENTATIONS: 'http,pg' },
    expected: { instrumentations: ['http-server', 'http-client'] },
    warning:
      'OTEL_NODE_ENABLED_INSTRUMENTATIONS names "pg", which this bootstrap does not load ' +
      '(http, http-server, http-client, koa, undici)',
  },
])('never throws on $desc: it warns, naming the variable and value, and uses a default', ({ env, expected, warning }) => {
  const config = read(env);
  expect(config).toMatchObject(expected);
  expect(config.warnings).toEqual(warning === undefined ? [] : [warning]);
});

// An endpoint's user:password works (http.request sends it as Basic auth), and the start-up line printed it.
describe('the start-up line naming where telemetry goes', () => {
  it('names each signal endpoint without its credentials or secret query values', () => {
    const config = readTelemetryConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'https://tenant:S3CRET@otlp.example.net', OTEL_EXPORTER_OTLP_LOGS_ENDPOINT: 'https://otlp.example.net/v1/logs?api_key=K3Y' }, '/app/dist/src/main.js', '1.0.0');
    const line = describeDestination(config);
    expect(line).toContain('traces to https://REDACTED@otlp.example.net/v1/traces');
    expect(line).toContain('logs to https://otlp.example.net/v1/logs?api_key=REDACTED');
    expect(line).not.toMatch(/S3CRET|K3Y/);
  });
});
