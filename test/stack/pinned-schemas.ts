/**
 * The configuration keys the pinned images accept, for the parts of their configs this repo writes.
 * Neither the Collector nor Grafana ships a whole-config schema, so these trees are transcribed from the
 * sources named beside each one. When an image tag in docker-compose.yml changes, re-read those sources and
 * update the tree and the version constant together (the tests check the tag matches the constant).
 */

/** Accept anything below this key (a sub-structure this repo does not use, so not transcribed). */
export const ANY = Symbol('any key below');

export interface KeyTree {
  readonly [key: string]: KeyTree | typeof ANY;
}

/** Keys in `value` that `tree` does not know, as dotted paths. Lists are checked item by item. */
export function unknownKeys(value: unknown, tree: KeyTree, at = ''): string[] {
  if (Array.isArray(value)) return value.flatMap((item, i) => unknownKeys(item, tree, `${at}[${i}]`));
  if (typeof value !== 'object' || value === null) return [];
  return Object.entries(value).flatMap(([key, child]) => {
    const path = at ? `${at}.${key}` : key;
    const sub = tree[key];
    if (sub === undefined) return [path];
    if (sub === ANY) return [];
    return unknownKeys(child, sub, path);
  });
}

// ---- OpenTelemetry Collector contrib ----------------------------------------------------------------------
// Source: open-telemetry/opentelemetry-collector tag v0.159.0, the config.schema.yaml of
// receiver/otlpreceiver, processor/{memorylimiterprocessor (-> internal/memorylimiter), batchprocessor},
// exporter/{otlpexporter, otlphttpexporter, debugexporter, exporterhelper/internal}, config/{configgrpc, confighttp,
// confignet, configtls, configretry}; component type names from each metadata.yaml; the component list
// from open-telemetry/opentelemetry-collector-releases v0.159.0 distributions/otelcol-contrib/manifest.yaml.
// The filter processor (contrib): processor/filterprocessor/config.schema.yaml and internal/condition/config.go
// (the newest stored versions; `metric_conditions` and the other `*_conditions` arrived in v0.146.0,
// open-telemetry-collector-contrib#44543, and deprecated the `metrics`/`traces`/`logs` blocks).

export const COLLECTOR_VERSION = '0.159.0';

/**
 * Component types registered by otelcol-contrib 0.159.0 whose keys are transcribed below, by kind. To use
 * another component, check it is in the contrib manifest and transcribe its config.schema.yaml first.
 */
export const COLLECTOR_COMPONENTS = {
  receivers: ['otlp'],
  processors: ['memory_limiter', 'batch', 'filter'],
  exporters: ['otlp_grpc', 'otlp_http', 'debug'],
  extensions: [] as string[],
  connectors: [] as string[],
} as const;

/** Names that still load in 0.159.0 but log a deprecation warning (renamed in v0.144.0). */
export const COLLECTOR_DEPRECATED_TYPES: Readonly<Record<string, string>> = {
  otlp: 'otlp_grpc (as an exporter)',
  otlphttp: 'otlp_http',
  spanmetrics: 'span_metrics',
};

const addr: KeyTree = { endpoint: ANY, transport: ANY, dialer: ANY }; // confignet.addr_config
const tlsClient: KeyTree = {
  // configtls.client_config + configtls.config
  insecure: ANY, insecure_skip_verify: ANY, server_name_override: ANY,
  ca_file: ANY, ca_pem: ANY, cert_file: ANY, cert_pem: ANY, key_file: ANY, key_pem: ANY,
  cipher_suites: ANY, curve_preferences: ANY, include_system_ca_certs_pool: ANY,
  max_version: ANY, min_version: ANY, reload_interval: ANY, tpm: ANY,
};
const grpcServer: KeyTree = {
  ...addr,
  auth: ANY, include_metadata: ANY, keepalive: ANY, max_concurrent_streams: ANY, max_recv_msg_size_mib: ANY,
  middlewares: ANY, read_buffer_size: ANY, tls: ANY, write_buffer_size: ANY,
};
const httpServer: KeyTree = {
  auth: ANY, compression_algorithms: ANY, cors: ANY, endpoint: ANY, idle_timeout: ANY, include_metadata: ANY,
  keep_alives_enabled: ANY, max_request_body_size: ANY, middlewares: ANY, read_header_timeout: ANY,
  read_timeout: ANY, response_headers: ANY, tls: ANY, write_timeout: ANY,
  // otlpreceiver http_config
  logs_url_path: ANY, metrics_url_path: ANY, traces_url_path: ANY,
};
const grpcClient: KeyTree = {
  auth: ANY, authority: ANY, balancer_name: ANY, compression: ANY, endpoint: ANY, headers: ANY, keepalive: ANY,
  middlewares: ANY, read_buffer_size: ANY, tls: tlsClient, user_agent: ANY, wait_for_ready: ANY,
  write_buffer_size: ANY,
};
const httpClient: KeyTree = {
  auth: ANY, compression: ANY, compression_params: ANY, cookies: ANY, disable_keep_alives: ANY, endpoint: ANY,
  headers: ANY, idle_conn_timeout: ANY, max_conns_per_host: ANY, max_idle_conns: ANY,
  max_idle_conns_per_host: ANY, middlewares: ANY, proxy_url: ANY, read_buffer_size: ANY, timeout: ANY,
  tls: tlsClient, write_buffer_size: ANY,
};
/** filterprocessor internal/condition ContextConditions: one group of OTTL conditions in one context. */
const contextConditions: KeyTree = { context: ANY, conditions: ANY, error_mode: ANY };
/** ContextConditions.context values (internal/condition/config.go). */
export const COLLECTOR_FILTER_CONTEXTS = ['resource', 'scope', 'span', 'spanevent', 'metric', 'datapoint', 'log', 'profile'] as const;

const retry: KeyTree = {
  enabled: ANY, initial_interval: ANY, max_elapsed_time: ANY, max_interval: ANY, multiplier: ANY,
  randomization_factor: ANY,
};

/** Keys of each component type's config, at v0.159.0. */
export const COLLECTOR_COMPONENT_KEYS: Readonly<Record<string, KeyTree>> = {
  otlp: { protocols: { grpc: grpcServer, http: httpServer } },
  memory_limiter: {
    check_interval: ANY, limit_mib: ANY, limit_percentage: ANY, spike_limit_mib: ANY,
    spike_limit_percentage: ANY, min_gc_interval_when_soft_limited: ANY,
    min_gc_interval_when_hard_limited: ANY, max_gc_interval_when_soft_limited: ANY,
    max_gc_interval_when_hard_limited: ANY,
  },
  batch: {
    timeout: ANY, send_batch_size: ANY, send_batch_max_size: ANY, metadata_keys: ANY,
    metadata_cardinality_limit: ANY,
  },
  // Only the current form: the deprecated `metrics`, `traces`, `spans`, `logs`, `profiles` blocks are refused.
  filter: {
    error_mode: ANY,
    metric_conditions: contextConditions, trace_conditions: contextConditions,
    log_conditions: contextConditions, profile_conditions: contextConditions,
  },
  otlp_grpc: { ...grpcClient, timeout: ANY, retry_on_failure: retry, sending_queue: ANY },
  otlp_http: {
    ...httpClient, retry_on_failure: retry, sending_queue: ANY, encoding: ANY,
    traces_endpoint: ANY, metrics_endpoint: ANY, logs_endpoint: ANY, profiles_endpoint: ANY,
  },
  debug: {
    verbosity: ANY, sampling_initial: ANY, sampling_thereafter: ANY, use_internal_logger: ANY, output_paths: ANY,
    sending_queue: ANY,
  },
};

export const COLLECTOR_TOP_LEVEL: KeyTree = {
  receivers: ANY, processors: ANY, exporters: ANY, connectors: ANY, extensions: ANY,
  service: { extensions: ANY, pipelines: ANY, telemetry: ANY },
};

// ---- Grafana 12.4 provisioning -----------------------------------------------------------------------------
// Sources (grafana/grafana, the newest stored versions; the 12.4.12 tag itself was not readable here):
// docs/sources/administration/provisioning/index.md (data source and dashboard provider keys),
// docs/sources/datasources/jaeger/configure/index.md (review_date 2026-03-03: provisioning example),
// docs/sources/datasources/loki/configure/index.md (derived fields),
// packages/grafana-o11y-ds-frontend/src/TraceToLogs/TraceToLogsSettings.tsx (TraceToLogsOptionsV2),
// public/app/plugins/datasource/loki/types.ts (DerivedFieldConfig, LokiOptions).

export const GRAFANA_VERSION = '12.4.12';

export const GRAFANA_DATASOURCE_FILE: KeyTree = {
  apiVersion: ANY, datasources: ANY, deleteDatasources: ANY, prune: ANY,
};

/** Keys of one `datasources[]` entry. */
export const GRAFANA_DATASOURCE: KeyTree = {
  name: ANY, type: ANY, access: ANY, orgId: ANY, uid: ANY, url: ANY, user: ANY, database: ANY,
  basicAuth: ANY, basicAuthUser: ANY, withCredentials: ANY, isDefault: ANY, jsonData: ANY,
  secureJsonData: ANY, version: ANY, editable: ANY,
};

/** jsonData settings every HTTP data source accepts (provisioning docs, "JSON Data"). */
const httpJsonData: KeyTree = {
  tlsAuth: ANY, tlsAuthWithCACert: ANY, tlsSkipVerify: ANY, serverName: ANY, timeout: ANY,
};

const traceToLogsV2: KeyTree = {
  datasourceUid: ANY, tags: { key: ANY, value: ANY }, spanStartTimeShift: ANY, spanEndTimeShift: ANY,
  filterByTraceID: ANY, filterBySpanID: ANY, query: ANY, customQuery: ANY,
};

/** jsonData keys by data source type. */
export const GRAFANA_JSON_DATA: Readonly<Record<string, KeyTree>> = {
  // PromOptions and ExemplarTraceIdDestination (packages/grafana-prometheus/src/types.ts), and the provisioning
  // example of docs/sources/datasources/prometheus/configure/_index.md.
  prometheus: {
    ...httpJsonData,
    timeInterval: ANY, queryTimeout: ANY, httpMethod: ANY, customQueryParameters: ANY, disableMetricsLookup: ANY,
    prometheusType: ANY, prometheusVersion: ANY, cacheLevel: ANY, defaultEditor: ANY, incrementalQuerying: ANY,
    incrementalQueryOverlapWindow: ANY, disableRecordingRules: ANY, allowAsRecordingRulesTarget: ANY,
    manageAlerts: ANY, seriesEndpoint: ANY, seriesLimit: ANY,
    exemplarTraceIdDestinations: { name: ANY, url: ANY, urlDisplayLabel: ANY, datasourceUid: ANY },
  },
  jaeger: {
    ...httpJsonData,
    tracesToLogsV2: traceToLogsV2,
    tracesToMetrics: ANY,
    nodeGraph: { enabled: ANY },
    traceIdTimeParams: { enabled: ANY },
    spanBar: { type: ANY, tag: ANY },
  },
  loki: {
    ...httpJsonData,
    maxLines: ANY,
    manageAlerts: ANY,
    alertmanagerUid: ANY,
    keepCookies: ANY,
    derivedFields: {
      name: ANY, matcherType: ANY, matcherRegex: ANY, url: ANY, urlDisplayLabel: ANY, datasourceUid: ANY,
      targetBlank: ANY,
    },
  },
};

/** Loki DerivedFieldConfig.matcherType values. */
export const GRAFANA_DERIVED_FIELD_MATCHER_TYPES = ['label', 'regex'] as const;

export const GRAFANA_DASHBOARD_PROVIDER_FILE: KeyTree = {
  apiVersion: ANY,
  providers: {
    name: ANY, orgId: ANY, folder: ANY, folderUid: ANY, type: ANY, disableDeletion: ANY,
    updateIntervalSeconds: ANY, allowUiUpdates: ANY, options: { path: ANY, foldersFromFilesStructure: ANY },
  },
};

// ---- Prometheus 3.14 ----------------------------------------------------------------------------------------
// Source: prometheus/prometheus tag v3.14.0: docs/configuration/configuration.md (the configuration file,
// <scrape_config>, <http_config>, <static_config>, <tsdb>, <exemplars>, the `otlp` block), cmd/prometheus/main.go
// (command-line flags and --enable-feature names), docs/querying/api.md ("OTLP Receiver": /api/v1/otlp/v1/metrics).

export const PROMETHEUS_VERSION = '3.14.0';

/** Where the OTLP receiver (--web.enable-otlp-receiver) listens; an OTLP/HTTP exporter appends /v1/metrics. */
export const PROMETHEUS_OTLP_BASE_PATH = '/api/v1/otlp';

/** The command-line flags of `prometheus` (server mode) this repo may pass, by name, at v3.14.0. */
export const PROMETHEUS_FLAGS: readonly string[] = [
  'config.file', 'config.auto-reload', 'config.auto-reload-interval', 'web.listen-address', 'web.read-timeout',
  'web.max-connections', 'web.external-url', 'web.route-prefix', 'web.enable-lifecycle', 'web.enable-admin-api',
  'web.enable-remote-write-receiver', 'web.enable-otlp-receiver', 'web.page-title', 'web.cors.origin',
  'storage.tsdb.path', 'storage.tsdb.retention.time', 'storage.tsdb.retention.size', 'storage.tsdb.wal-compression',
  'query.lookback-delta', 'query.timeout', 'query.max-concurrency', 'query.max-samples', 'enable-feature',
];

/** `--enable-feature` values v3.14.0 accepts (main.go's switch; its help text lists the same). */
export const PROMETHEUS_FEATURES: readonly string[] = [
  'concurrent-rule-eval', 'created-timestamp-zero-ingestion', 'delayed-compaction', 'exemplar-storage',
  'extra-scrape-metrics', 'histograms-st-encoding', 'memory-snapshot-on-shutdown', 'metadata-wal-records', 'old-ui',
  'otlp-deltatocumulative', 'otlp-native-delta-ingestion', 'promql-binop-fill-modifiers',
  'promql-delayed-name-removal', 'promql-experimental-functions', 'promql-extended-range-selectors',
  'promql-per-step-stats', 'search-api', 'st-storage', 'st-synthesis', 'type-and-unit-labels',
  'use-start-timestamps', 'use-uncached-io', 'xor2-encoding',
];

/** `scrape_protocols` values (case sensitive). */
export const PROMETHEUS_SCRAPE_PROTOCOLS = [
  'PrometheusProto', 'OpenMetricsText0.0.1', 'OpenMetricsText1.0.0', 'PrometheusText0.0.4', 'PrometheusText1.0.0',
] as const;

/** `otlp.translation_strategy` values. */
export const PROMETHEUS_OTLP_TRANSLATION_STRATEGIES = [
  'UnderscoreEscapingWithSuffixes', 'NoUTF8EscapingWithSuffixes', 'UnderscoreEscapingWithoutSuffixes', 'NoTranslation',
] as const;

/** <http_config>, inlined into a scrape config. */
const promHttpConfig: KeyTree = {
  basic_auth: ANY, authorization: ANY, oauth2: ANY, follow_redirects: ANY, enable_http2: ANY, tls_config: ANY,
  proxy_url: ANY, no_proxy: ANY, proxy_from_environment: ANY, proxy_connect_header: ANY, http_headers: ANY,
};

/** Keys shared by `global` and a scrape config (limits, histogram and name-validation settings). */
const promScrapeDefaults: KeyTree = {
  scrape_interval: ANY, scrape_timeout: ANY, scrape_protocols: ANY, scrape_failure_log_file: ANY,
  body_size_limit: ANY, sample_limit: ANY, label_limit: ANY, label_name_length_limit: ANY,
  label_value_length_limit: ANY, target_limit: ANY, keep_dropped_targets: ANY, metric_name_validation_scheme: ANY,
  scrape_native_histograms: ANY, convert_classic_histograms_to_nhcb: ANY, always_scrape_classic_histograms: ANY,
  extra_scrape_metrics: ANY,
};

const promServiceDiscovery: KeyTree = Object.fromEntries(
  [
    'aws', 'azure', 'consul', 'digitalocean', 'docker', 'dockerswarm', 'dns', 'ec2', 'eureka', 'file', 'gce', 'hetzner',
    'http', 'ionos', 'kubernetes', 'kuma', 'lightsail', 'linode', 'marathon', 'nerve', 'nomad', 'oci', 'openstack',
    'outscale', 'ovhcloud', 'puppetdb', 'scaleway', 'serverset', 'stackit', 'triton', 'uyuni', 'vultr',
  ].map((sd) => [`${sd}_sd_configs`, ANY]),
);

/** Keys of one `scrape_configs[]` entry. */
export const PROMETHEUS_SCRAPE_CONFIG: KeyTree = {
  ...promScrapeDefaults,
  ...promHttpConfig,
  ...promServiceDiscovery,
  job_name: ANY, fallback_scrape_protocol: ANY, metrics_path: ANY, honor_labels: ANY, honor_timestamps: ANY,
  track_timestamps_staleness: ANY, scheme: ANY, params: ANY, enable_compression: ANY,
  static_configs: { targets: ANY, labels: ANY },
  relabel_configs: ANY, metric_relabel_configs: ANY, metric_name_escaping_scheme: ANY,
  native_histogram_bucket_limit: ANY, native_histogram_min_bucket_factor: ANY,
};

/** Keys of the whole configuration file. */
export const PROMETHEUS_CONFIG_FILE: KeyTree = {
  global: {
    ...promScrapeDefaults, evaluation_interval: ANY, rule_query_offset: ANY, external_labels: ANY,
    query_log_file: ANY,
  },
  runtime: { gogc: ANY },
  rule_files: ANY,
  scrape_config_files: ANY,
  scrape_configs: PROMETHEUS_SCRAPE_CONFIG,
  alerting: ANY,
  remote_write: ANY,
  remote_read: ANY,
  otlp: {
    promote_resource_attributes: ANY, promote_all_resource_attributes: ANY, ignore_resource_attributes: ANY,
    translation_strategy: ANY, keep_identifying_resource_attributes: ANY, convert_histograms_to_nhcb: ANY,
    promote_scope_metadata: ANY, label_name_underscore_sanitization: ANY, label_name_preserve_multiple_underscores: ANY,
  },
  storage: {
    tsdb: { out_of_order_time_window: ANY, stale_series_compaction_threshold: ANY, chunk_encoding: ANY, retention: ANY },
    exemplars: { max_exemplars: ANY },
  },
  tracing: ANY,
};
