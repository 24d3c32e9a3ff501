import { createLogger } from '../otel/logger';
import { runServer } from '../otel/lifecycle';
import { shutdownTelemetry } from '../otel/telemetry';
import { SERVICE_NAME } from '../otel/wire-names';
import { ConfigError, loadConfig, type GatewayConfig } from './config';
import { createGateway } from './gateway';
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
  const app = createGateway(config, { logger, redis });
  const { url } = await runServer({
    app,
    name: SERVICE_NAME.gateway,
    port: config.port,
    host: config.host,
    logger,
    timeouts: { headersMs: config.server.headersTimeoutMs, requestMs: config.server.requestTimeoutMs, keepAliveMs: config.server.keepAliveTimeoutMs },
    async onShutdown() {
      redis?.disconnect();
      await shutdownTelemetry();
    },
  });
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
