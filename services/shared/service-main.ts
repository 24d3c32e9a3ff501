import type Koa from 'koa';
import { createLogger, type Logger } from '../../otel/logger';
import { runServer } from '../../otel/lifecycle';
import { continueTraceContextOnlyWhen, shutdownTelemetry } from '../../otel/telemetry';
import { signedByGateway } from './service-app';
import { loadServiceEnv, type ServiceEnv, type ServiceKey } from './service-config';

/** A service with more to stop than its HTTP server (notification-service's gRPC interface). */
export interface BuiltService {
  app: Koa;
  /** Runs once the HTTP server drained, before telemetry is flushed. */
  onShutdown(): Promise<void>;
}

/** What each service's main.ts does: read its env, build its app, listen, stop gracefully. */
export async function startService<K extends ServiceKey>(service: K, serviceName: string, build: (env: ServiceEnv<K>, logger: Logger) => Promise<Koa | BuiltService> | Koa | BuiltService): Promise<void> {
  let env: ServiceEnv<K>;
  try {
    env = loadServiceEnv(service);
  } catch (error) {
    process.stderr.write(`${serviceName}: ${(error as Error).message}\n`);
    process.exit(1);
  }
  const logger = createLogger({ serviceName, level: env.LOG_LEVEL });
  if (env.GATEWAY_SIGNING_KEY === undefined) {
    logger.warn('GATEWAY_SIGNING_KEY is unset: identity headers are believed from any peer that reaches this service (development only; production refuses to start without it)');
  } else {
    // A request the gateway did not sign is refused (createServiceApp), and its span starts a trace of its own:
    // a peer's forged traceparent must not record a 401 inside someone else's trace.
    continueTraceContextOnlyWhen(signedByGateway(env.GATEWAY_SIGNING_KEY));
  }
  try {
    const built = await build(env, logger);
    const { app, onShutdown } = 'onShutdown' in built ? built : { app: built, onShutdown: undefined };
    const stop = async () => {
      await onShutdown?.();
      await shutdownTelemetry();
    };
    const { url } = await runServer({ app, name: serviceName, port: env.PORT, host: env.HOST, logger, onShutdown: stop });
    logger.info(`${serviceName} listening`, { url });
  } catch (error) {
    // A port in use, a host that does not resolve: one line, as the gateway says it, not a stack trace.
    process.stderr.write(`${serviceName}: failed to start: ${(error as Error).message}\n`);
    process.exit(1);
  }
}
