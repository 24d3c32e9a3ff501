// First: SIGTERM and SIGINT are held from before anything else loads (a worker's Ctrl-C while it loads).
import { releaseStopSignals } from './stop-signals-held';
import cluster from 'node:cluster';
import { createLogger, type Logger } from '../otel/logger';
import { runServer } from '../otel/lifecycle';
import { exportPromClientRegistry, metricExportEnabled, shutdownTelemetry, startPropagation } from '../otel/telemetry';
import { METRIC_LABEL_OTLP, METRIC_OTLP, SERVICE_NAME } from '../otel/wire-names';
import type { ConfigControl, ReloadAnswer } from './admin';
import { clientTimeouts, ConfigError, DEPLOYMENT_ENV_VARIABLES, envShadowedKeys, loadConfig, type GatewayConfig } from './config';
import { activeConfig, checkReload, createLiveGateway, ENV_SHADOWS_FILE, type ActiveConfig } from './config-reload';
import { listenAdmin } from './admin';
import { BACKGROUND_FETCH_DRAIN_MS, createBackgroundWork } from './cache-background-fetch';
import { createConnectionsPerClient } from './client-connections';
import { createGatewayApps } from './gateway';
import { strictTransportSecurityValue } from './middleware/hsts';
import { rejectedRequestMetrics } from './middleware/request-metrics';
import { createGatewayMetrics, createReloadMetrics, listenMetrics, shareMetricsWithPrimary, type ReloadMetrics } from './metrics';
import { createRedisStore, waitForRedis } from './rate-limit-store';
import { connectWorker, type WorkerLink } from './worker-link';
import { startupWarnings } from './startup-warnings';
import { runPrimary, workerCount } from './workers';
import { createTlsServer, listenHttpsRedirect, type CertificatePems, type RedirectListener } from './tls';
import { handleAfterTurn } from './request-arrival';

/** Longest a rate-limit check waits for the cluster primary's answer, ms (then the store-down policy decides). */
const PRIMARY_STORE_TIMEOUT_MS = 2_000;

/**
 * Reads the config file and environment for a reload. A secret generated when none is configured is a fresh one on
 * each read: checkReload keeps the running generated one instead, and never brings back the one of the start after
 * a configured secret replaced it (its tokens would verify again); workers get theirs from the primary.
 */
function readConfig(): GatewayConfig {
  return loadConfig(process.env, process.cwd());
}

/**
 * The file's keys the environment overrides (envShadowedKeys), read with the file a reload reads; as at the start
 * (warnEnvShadowsFile), not the listeners' and services' addresses.
 */
function readShadowedKeys(): string[] {
  return envShadowedKeys(process.env, process.cwd(), DEPLOYMENT_ENV_VARIABLES);
}

/**
 * At start, as at each reload (checkReload): the file's keys the environment overrides. Said only on a reload, a
 * fresh start said nothing, and a fresh start is how a Kubernetes rollout of an edited ConfigMap applies it: a limit
 * tightened in the file under a manifest's RATE_LIMIT_MAX rolled the pods and changed nothing, without a word.
 */
function warnEnvShadowsFile(logger: Logger): void {
  // Not the listeners' and the services' addresses, which every deployment sets over the file: named at each start,
  // they made the line noise that hid the key it is for.
  const keys = envShadowedKeys(process.env, process.cwd(), DEPLOYMENT_ENV_VARIABLES);
  if (keys.length > 0) logger.warn(ENV_SHADOWS_FILE, { keys });
}

function load(): GatewayConfig {
  try {
    return loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`gateway: ${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
}

/** Why a listener could not open, by the code Node's `listen` failed with. */
const LISTEN_FAILURES: Readonly<Record<string, string>> = {
  EADDRINUSE: 'is in use by another process',
  EACCES: 'is not permitted to this user (a port under 1024?)',
  EADDRNOTAVAIL: 'is not an address of this machine',
  // A host name the config takes (`ADMIN_HOST=gateway-internal`) that does not resolve here.
  ENOTFOUND: 'names a host that does not resolve',
  EAI_AGAIN: 'names a host that could not be resolved now (DNS failed)',
};

/** Failures of the listener's address rather than its port. */
const HOST_FAILURES = new Set(['EADDRNOTAVAIL', 'ENOTFOUND', 'EAI_AGAIN']);

/** Listeners by the keys that choose their port and address. */
const LISTENER_KEYS = {
  public: { port: 'port (PORT)', host: 'host (HOST)' },
  admin: { port: 'admin.port (ADMIN_PORT)', host: 'admin.host (ADMIN_HOST)' },
  metrics: { port: 'metrics.port (METRICS_PORT)', host: 'metrics.host (METRICS_HOST)' },
  redirect: { port: 'tls.redirectHttpPort', host: 'host (HOST)' },
} as const;

/**
 * `opening` (a listener whose port and address `keys` name), its failure to bind said with the key: Node's own message
 * (`listen EADDRINUSE: address already in use 127.0.0.1:9000`, in a cluster worker `bind EADDRINUSE`) named
 * neither which of the gateway's up to four listeners it was nor the setting that chose the port.
 */
async function listening<T>(keys: (typeof LISTENER_KEYS)[keyof typeof LISTENER_KEYS], host: string, port: number, opening: Promise<T>): Promise<T> {
  try {
    return await opening;
  } catch (error) {
    const { code = '' } = error as NodeJS.ErrnoException;
    const why = LISTEN_FAILURES[code];
    if (why === undefined) throw error;
    // The address is the host's fault, the rest the port's.
    const key = HOST_FAILURES.has(code) ? keys.host : keys.port;
    throw new Error(`${key}: ${host.includes(':') ? `[${host}]` : host}:${port} ${why} (${code})`, { cause: error });
  }
}

async function main(): Promise<void> {
  // A cluster worker: the primary sends the config it read and validated.
  if (cluster.isWorker) {
    const worker = await connectWorker();
    return serve(worker.initial, worker);
  }
  const config = load();
  const initial = activeConfig(config);
  const workers = workerCount(config.workers);
  if (workers > 1) {
    const logger = createLogger({ serviceName: SERVICE_NAME.gateway, level: config.logLevel });
    startupWarnings(config, logger);
    warnEnvShadowsFile(logger);
    // runPrimary listens for its own first, then the hold lets go: released before, the last listener went and Node
    // closed the signal's handle, and one caught while the modules loaded (no turn of the event loop since) was
    // dropped with it: the primary forked its workers and served on. One the hold took is raised again.
    runPrimary({ initial, count: workers, logger, load: readConfig, shadowedByEnv: readShadowedKeys });
    const heldWhileLoading = releaseStopSignals();
    if (heldWhileLoading) process.kill(process.pid, heldWhileLoading);
    return;
  }
  return serve(initial);
}

/** The one process without a cluster: reloads (SIGHUP, POST /admin/reload) are read, checked and applied here. */
function singleProcessControl(live: () => ReturnType<typeof createLiveGateway>, logger: Logger, reloadMetrics?: ReloadMetrics): ConfigControl & { reloadNow(): ReloadAnswer } {
  function reloadNow(): ReloadAnswer {
    const answer = reloadOnce();
    reloadMetrics?.reloaded(answer.ok);
    return answer;
  }
  function reloadOnce(): ReloadAnswer {
    const gateway = live();
    const previousVersion = gateway.active().version;
    const check = checkReload(gateway.active(), readConfig, logger, readShadowedKeys);
    if (!check.ok) return { ok: false, reason: check.reason };
    const unbuilt = gateway.apply(check.next);
    if (unbuilt !== undefined) return { ok: false, reason: `version ${check.next.version} could not be built: ${unbuilt}` };
    const { version, loadedAt, pendingRestart } = gateway.active();
    if (check.changed) {
      logger.info('config reloaded', { version, previousVersion });
      // What start-up warns of, a reload may bring about (trustProxy on without trustedProxies, allowedHosts dropped).
      startupWarnings(gateway.active().config, logger);
    }
    return { ok: true, status: check.changed ? 'reloaded' : 'unchanged', version, loadedAt, pendingRestart, shadowedByEnv: check.shadowedByEnv, workers: [{ id: 0, pid: process.pid, version, loadedAt }] };
  }
  return {
    reloadNow,
    reload: async () => reloadNow(),
    async status() {
      const { version, loadedAt, pendingRestart } = live().active();
      return { version, loadedAt, pendingRestart, servedBy: { worker: 0, pid: process.pid }, workers: [{ id: 0, pid: process.pid, version, loadedAt }] };
    },
  };
}

/** Serves the public port (and the internal listeners): the single process, or one cluster worker. */
async function serve(initial: ActiveConfig, worker?: WorkerLink): Promise<void> {
  const { config } = initial;
  // One process: SIGHUP is listened for from here on. Registered only once the apps were built, its handlers left
  // the start-up (the wait for Redis: up to 3 s) to Node's default action, and a reload signalled then (an
  // operator, a config watcher, `systemctl reload`) ended the gateway with exit 129. One arriving before they are
  // in place is held and answered once they are: the file may have changed after start-up read it.
  const hangupHandlers: (() => void)[] = [];
  const hangUp = () => hangupHandlers.forEach((handler) => handler());
  let starting = true;
  let hungUpWhileStarting = false;
  if (!worker) process.on('SIGHUP', () => (starting ? (hungUpWhileStarting = true) : hangUp()));
  // SIGTERM and SIGINT are held from the first moment (src/stop-signals-held.ts) until runServer listens for them.
  const logger = createLogger({ serviceName: SERVICE_NAME.gateway, level: config.logLevel });
  const { redisUrl, redisTimeoutMs } = config.rateLimit;
  const redis = redisUrl ? createRedisStore({ url: redisUrl, commandTimeoutMs: redisTimeoutMs, logger }) : undefined;
  if (redis && !(await waitForRedis(redis, 3000))) {
    logger.warn('rate-limit store not reachable yet; serving under the store-down policy until it is', { store: 'redis' });
  }
  // Without Redis, a cluster's workers count their windows in the primary, so limits hold across them. The
  // primary is on this machine and answers unless it is stuck, so a check waits longer for it than for Redis:
  // under a burst on a busy machine Redis's 200 ms would let requests through under the store-down policy.
  const primaryStore = redis ? undefined : worker?.primaryStore(Math.max(redisTimeoutMs, PRIMARY_STORE_TIMEOUT_MS));
  // Recorded only when someone reads them: the scrape listener (METRICS_PORT) or OTLP metric export
  // (OTEL_METRICS_EXPORTER=none or OTEL_SDK_DISABLED=true without METRICS_PORT: nothing is recorded). Built here
  // rather than defaulted by createGatewayApps: the scrape listener below serves its registry.
  const metrics = config.metrics.port !== undefined || metricExportEnabled() ? createGatewayMetrics() : undefined;
  // Pushed over OTLP too, with the bootstrap's metric exporter and OTEL_* settings.
  // Under the conventions' names (METRIC_OTLP), which Prometheus' OTLP translation makes the scraped names again.
  if (metrics) exportPromClientRegistry(metrics.registry, { startTimeMs: metrics.startedAtMs, names: METRIC_OTLP, attributes: METRIC_LABEL_OTLP });
  // A cluster's reloads are its primary's to count (src/workers.ts); a worker's registry is summed with the others'.
  const single = worker ? undefined : singleProcessControl(() => live, logger, metrics && createReloadMetrics(metrics.registry));
  const control = worker ? worker.control(() => live.active()) : single!;
  // Set as the drain begins; every build reads it (a reload during the drain too).
  let stopping = false;
  // The response cache's background fetches of every build: the shutdown waits for them once the clients' requests drained.
  const backgroundWork = createBackgroundWork();
  // Each config (the first and every reload) becomes a fresh pair of apps over the same collaborators.
  const live = createLiveGateway(
    initial,
    (active, kept) => {
      // A gateway that trusts its clients' trace context passes it on even with telemetry off (W3C Trace Context:
      // MUST propagate); the first config that trusts it, at start or at a reload, registers what that takes.
      // Without trust nothing is propagated, and telemetry off stays free of a context manager's cost.
      if (active.config.trustTraceparent) startPropagation();
      return createGatewayApps(active.config, { logger, redis, metrics: metrics ?? false, primaryStore, kept, configVersion: active.version, protoSources: active.protoSources, control, cachePeers: worker?.cachePeers, stopping: () => stopping, backgroundWork });
    },
    logger,
  );
  // SIGHUP reaches a cluster's primary only; it relays it to every worker (src/workers.ts).
  const onHangup = (handler: (certificates?: CertificatePems) => void) => (worker ? worker.onHangup(handler) : void hangupHandlers.push(() => handler()));
  if (single) onHangup(() => single.reloadNow());
  const timeouts = clientTimeouts(config.server);
  // Each public listener (HTTPS or plain, and the HTTPS redirect beside it) bounds its own connections alike.
  const publicConnections = () => {
    const perClient = createConnectionsPerClient({ maxPerClient: config.server.maxConnectionsPerClient, config: () => live.active().config, logger });
    return { maxConnections: config.server.maxConnections, admitConnection: perClient?.admitConnection, admitStream: perClient?.admitStream };
  };
  // Opened before the public listener, so a taken admin port stops startup rather than going unnoticed.
  const adminListener =
    config.admin.port === undefined
      ? undefined
      : await listening(LISTENER_KEYS.admin, config.admin.host, config.admin.port, listenAdmin({ callback: () => live.adminListener }, { port: config.admin.port, host: config.admin.host, timeouts, sendTimeoutMs: config.server.sendTimeoutMs }));
  if (adminListener) logger.info('admin listener started', { url: adminListener.url, endpoints: ['/health', '/ready', '/admin/config', '/admin/reload'] });
  // Also before the public listener, for the same reason; never on the public port (config refuses that).
  // In a cluster the primary serves the scrape, summing the workers' registries (src/workers.ts).
  if (worker && metrics && config.metrics.port !== undefined) shareMetricsWithPrimary(metrics);
  const metricsListener =
    config.metrics.port === undefined || metrics === undefined || worker
      ? undefined
      : await listening(LISTENER_KEYS.metrics, config.metrics.host, config.metrics.port, listenMetrics(metrics, { port: config.metrics.port, host: config.metrics.host, timeouts, sendTimeoutMs: config.server.sendTimeoutMs, logger }));
  if (metricsListener) logger.info('metrics listener started', { url: metricsListener.url, endpoints: ['/metrics'] });
  // HTTPS with HTTP/2 when `tls` is set (src/tls.ts); rotated certificates are read again on SIGHUP, open connections kept.
  // A cluster worker serves the pair its primary read and hands it at each SIGHUP (src/workers.ts); it never reads the files.
  const tlsServer = config.tls ? createTlsServer({ tls: config.tls, timeouts, sendTimeoutMs: config.server.sendTimeoutMs, logger, certificates: worker?.certificates }) : undefined;
  if (tlsServer) onHangup((certificates) => (worker ? certificates && tlsServer.reloadCertificates(certificates) : tlsServer.reloadCertificates()));
  starting = false;
  if (hungUpWhileStarting) hangUp();
  let redirectListener: RedirectListener | undefined;
  const running = await listening(LISTENER_KEYS.public, config.host, config.port, runServer({
    // Each request's pipeline runs after the turn of the event loop that parsed it (src/request-arrival.ts).
    app: { callback: () => handleAfterTurn(live.listener) },
    name: SERVICE_NAME.gateway,
    port: config.port,
    host: config.host,
    logger,
    timeouts,
    ...publicConnections(),
    sendTimeoutMs: config.server.sendTimeoutMs,
    createServer: tlsServer?.create,
    appChecksHost: true,
    // As the pipeline keeps a client's own id (src/middleware/request-id.ts).
    keepsInboundRequestId: true,
    // The answers runServer writes itself (parser refusals, CONNECT) carry the policy the pipeline's carry.
    strictTransportSecurity: config.tls?.hsts ? strictTransportSecurityValue(config.tls.hsts) : undefined,
    onRejected: metrics && rejectedRequestMetrics(metrics),
    onDrain: () => {
      stopping = true;
      worker?.draining();
    },
    async onShutdown() {
      // Before Redis and telemetry go: a fetch the cache began itself (stale-while-revalidate) stores its answer, ends
      // its span and writes its line. None starts once the drain began; one still under way at the bound is cut.
      const left = await backgroundWork.settled(BACKGROUND_FETCH_DRAIN_MS);
      if (left !== true) logger.warn('cache background fetches cut by the shutdown', { count: left, waitedMs: BACKGROUND_FETCH_DRAIN_MS });
      await redirectListener?.close();
      // Closed only now: operators can watch readiness while the public listener drains.
      await adminListener?.close();
      // After the drain, so the last scrape still sees the requests that finished during it.
      await metricsListener?.close();
      redis?.disconnect();
      await shutdownTelemetry();
    },
  }));
  const stopWhileStarting = releaseStopSignals();
  const { url } = running;
  const redirectHttpPort = config.tls?.redirectHttpPort;
  if (redirectHttpPort !== undefined) {
    redirectListener = await listening(
      LISTENER_KEYS.redirect,
      config.host,
      redirectHttpPort,
      listenHttpsRedirect({ port: redirectHttpPort, host: config.host, httpsPort: Number(new URL(url).port || 443), allowedHosts: () => live.active().config.allowedHosts, health: live.listener, timeouts, sendTimeoutMs: config.server.sendTimeoutMs, connections: publicConnections() }),
    );
    logger.info('https redirect listener started', { url: redirectListener.url, redirectsTo: url });
  }
  if (worker) {
    worker.serve((active) => live.apply(active), url, running.close);
    logger.info('worker listening', { url, worker: worker.id, pid: process.pid, version: initial.version });
    if (stopWhileStarting) process.kill(process.pid, stopWhileStarting);
    return;
  }
  startupWarnings(config, logger);
  warnEnvShadowsFile(logger);
  logger.info('gateway listening', {
    url,
    version: initial.version,
    rateLimitStore: redis ? 'redis' : 'memory',
    routes: config.routes.map((route) => `${route.prefix} -> ${route.service}${route.upstreamPath}`),
  });
  if (stopWhileStarting) process.kill(process.pid, stopWhileStarting);
}

main().catch((error: unknown) => {
  process.stderr.write(`gateway: failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});

