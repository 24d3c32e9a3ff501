import { createLogger } from '../otel/logger';
import { runServer } from '../otel/lifecycle';
import { exportPromClientRegistry, metricExportEnabled, shutdownTelemetry } from '../otel/telemetry';
import { SERVICE_NAME } from '../otel/wire-names';
import { ConfigError, loadConfig, type GatewayConfig } from './config';
import { listenAdmin } from './admin';
import { createGatewayApps } from './gateway';
import { createGatewayMetrics, listenMetrics } from './metrics';
import { createRedisStore, waitForRedis } from './rate-limit-store';

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

async function main(): Promise<void> {
  const config = load();
  const logger = createLogger({ serviceName: SERVICE_NAME.gateway, level: config.logLevel });
  const { redisUrl, redisTimeoutMs } = config.rateLimit;
  const redis = redisUrl ? createRedisStore({ url: redisUrl, commandTimeoutMs: redisTimeoutMs, logger }) : undefined;
  if (redis && !(await waitForRedis(redis, 3000))) {
    logger.warn('rate-limit store not reachable yet; serving under the store-down policy until it is', { store: 'redis' });
  }
  // Recorded only when someone reads them: the scrape listener (METRICS_PORT) or OTLP metric export
  // (OTEL_METRICS_EXPORTER=none or OTEL_SDK_DISABLED=true without METRICS_PORT: nothing is recorded). Built here
  // rather than defaulted by createGatewayApps: the scrape listener below serves its registry.
  const metrics = config.metrics.port !== undefined || metricExportEnabled() ? createGatewayMetrics() : undefined;
  // Pushed over OTLP too, with the bootstrap's metric exporter and OTEL_* settings.
  if (metrics) exportPromClientRegistry(metrics.registry);
  const { gateway: app, admin } = createGatewayApps(config, { logger, redis, metrics: metrics ?? false });
  // Opened before the public listener, so a taken admin port stops startup rather than going unnoticed.
  const adminListener =
    config.admin.port === undefined
      ? undefined
      : await listenAdmin(admin, {
          port: config.admin.port,
          host: config.admin.host,
          timeouts: { headersMs: config.server.headersTimeoutMs, requestMs: config.server.requestTimeoutMs, keepAliveMs: config.server.keepAliveTimeoutMs },
        });
  if (adminListener) logger.info('admin listener started', { url: adminListener.url, endpoints: ['/health', '/ready'] });
  // Also before the public listener, for the same reason; never on the public port (config refuses that).
  const metricsListener =
    config.metrics.port === undefined || metrics === undefined
      ? undefined
      : await listenMetrics(metrics, {
          port: config.metrics.port,
          host: config.metrics.host,
          timeouts: { headersMs: config.server.headersTimeoutMs, requestMs: config.server.requestTimeoutMs, keepAliveMs: config.server.keepAliveTimeoutMs },
          logger,
        });
  if (metricsListener) logger.info('metrics listener started', { url: metricsListener.url, endpoints: ['/metrics'] });
  const { url } = await runServer({
    app,
    name: SERVICE_NAME.gateway,
    port: config.port,
    host: config.host,
    logger,
    timeouts: { headersMs: config.server.headersTimeoutMs, requestMs: config.server.requestTimeoutMs, keepAliveMs: config.server.keepAliveTimeoutMs },
    maxConnections: config.server.maxConnections,
    async onShutdown() {
      // Closed only now: operators can watch readiness while the public listener drains.
      await adminListener?.close();
      // After the drain, so the last scrape still sees the requests that finished during it.
      await metricsListener?.close();
      redis?.disconnect();
      await shutdownTelemetry();
    },
  });
  if (config.auth.secretSource === 'generated') {
    logger.warn('JWT_SECRET is not set: tokens are signed with a random secret of this process; they stop working when it restarts and are not accepted by other replicas. Set JWT_SECRET (32+ characters) to keep them.', { environment: config.environment });
  }
  if (config.environment === 'production' && config.allowedHosts === undefined) {
    logger.warn('allowedHosts is not set: any Host a client sends reaches the services as X-Forwarded-Host. Set ALLOWED_HOSTS to the names this gateway serves.');
  }
  logger.info('gateway listening', {
    url,
    rateLimitStore: redis ? 'redis' : 'memory',
    routes: config.routes.map((route) => `${route.prefix} -> ${route.service}${route.upstreamPath}`),
  });
}

main().catch((error: unknown) => {
  process.stderr.write(`gateway: failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
