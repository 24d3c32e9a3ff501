import { createLogger } from '../otel/logger';
import { runServer } from '../otel/lifecycle';
import { SERVICE_NAME } from '../otel/wire-names';
import { ConfigError, loadConfig, type GatewayConfig } from './config';
import { createGateway } from './gateway';

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
  const app = createGateway(config, { logger });
  const { url } = await runServer({ app, name: SERVICE_NAME.gateway, port: config.port, host: config.host, logger });
  logger.info('gateway listening', { url, routes: config.routes.map((route) => `${route.prefix} -> ${route.service}${route.upstreamPath}`) });
}

main().catch((error: unknown) => {
  process.stderr.write(`gateway: failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
