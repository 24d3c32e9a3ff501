import type Koa from 'koa';
import { createLogger, type Logger } from '../../otel/logger';
import { runServer } from '../../otel/lifecycle';
import { shutdownTelemetry } from '../../otel/telemetry';
import { loadServiceEnv, type ServiceEnv, type ServiceKey } from './service-config';

/** What each service's main.ts does: read its env, build its app, listen, stop gracefully. */
export async function startService<K extends ServiceKey>(service: K, serviceName: string, build: (env: ServiceEnv<K>, logger: Logger) => Promise<Koa> | Koa): Promise<void> {
  let env: ServiceEnv<K>;
  try {
    env = loadServiceEnv(service);
  } catch (error) {
    process.stderr.write(`${serviceName}: ${(error as Error).message}\n`);
    process.exit(1);
  }
  const logger = createLogger({ serviceName, level: env.LOG_LEVEL });
  const app = await build(env, logger);
  const { url } = await runServer({ app, name: serviceName, port: env.PORT, host: env.HOST, logger, onShutdown: shutdownTelemetry });
  logger.info(`${serviceName} listening`, { url });
}
