import Router from '@koa/router';
import Koa from 'koa';
import { listenInternal, type InternalListener, type InternalListenerOptions } from '../otel/lifecycle';
import type { Logger } from '../otel/logger';
import './context';
import { GatewayError } from './errors';
import { createErrorHandler } from './middleware/errors';
import { createHealth, createReadinessDetails } from './middleware/health';
import { createRequestId } from './middleware/request-id';
import type { ReadinessCheck } from './readiness';
import type { UpstreamPool } from './upstream-pool';

export interface AdminOptions {
  /** The public gateway's readiness check, so both listeners share one cache and one probe round. */
  readiness: ReadinessCheck;
  /** The public gateway's pools: the passive health shown is the one the proxy acts on. */
  pools: ReadonlyMap<string, UpstreamPool>;
  logger: Logger;
}

/**
 * The internal listener's app (`admin.port`, loopback by default): what operators may see and the public
 * must not, such as instance addresses and why an instance is failing. It has no authentication; being
 * reachable only from inside is its protection, so it never shares the public listener.
 */
export function createAdminApp(options: AdminOptions): Koa {
  const { logger } = options;
  const app = new Koa();
  const endpoints = new Router({ sensitive: true, strict: true })
    .get('/health', createHealth())
    .get('/ready', createReadinessDetails({ check: options.readiness, pools: options.pools }));

  app.use(createRequestId());
  app.use(createErrorHandler({ logger }));
  app.use(endpoints.routes());
  app.use(async function adminNotFound() {
    throw new GatewayError('route_not_found', 'No admin endpoint at this path.');
  });

  app.on('error', (error: Error) => logger.error('unhandled admin error', { error: error.message }));
  return app;
}

/** The admin app on its internal listener (`admin.port`, loopback by default). */
export function listenAdmin(app: Koa, options: InternalListenerOptions): Promise<InternalListener> {
  return listenInternal(app.callback(), options);
}
