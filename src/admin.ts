import type http from 'node:http';
import Router from '@koa/router';
import Koa from 'koa';
import { isLocalHost, listenInternal, type InternalListener, type InternalListenerOptions, type ServedHosts } from '../otel/lifecycle';
import type { Logger } from '../otel/logger';
import './context';
import { GatewayError } from './errors';
import { createErrorHandler } from './middleware/errors';
import { ALLOWED_PROBE_METHODS, createHealth, createReadinessDetails } from './middleware/health';
import { createRequestId } from './middleware/request-id';
import type { ReadinessCheck } from './readiness';
import type { UpstreamPool } from './upstream-pool';

/** One process serving the public port, with the config it runs (`version` null until it has one). */
export interface WorkerConfigStatus {
  /** Cluster worker id (1, 2, ...); 0 for the single process without a cluster. */
  id: number;
  pid: number;
  version: string | null;
  loadedAt?: string;
}

/** `GET /admin/config`. */
export interface ConfigStatus {
  version: string;
  loadedAt: string;
  /** Restart-only keys whose file or environment value differs from the running one. */
  pendingRestart: string[];
  /** The process that answered. */
  servedBy: { worker: number; pid: number };
  workers: WorkerConfigStatus[];
}

/** `POST /admin/reload`: once every worker runs `version`, or why nothing changed. */
export type ReloadAnswer =
  | { ok: true; status: 'reloaded' | 'unchanged'; version: string; loadedAt: string; pendingRestart: string[]; shadowedByEnv: string[]; workers: WorkerConfigStatus[] }
  | { ok: false; reason: string };

/** The running config's state and its reload, single process (src/main.ts) or cluster (src/workers.ts). */
export interface ConfigControl {
  status(): Promise<ConfigStatus>;
  reload(): Promise<ReloadAnswer>;
}

export interface AdminOptions {
  /** The public gateway's readiness check, so both listeners share one cache and one probe round. */
  readiness: ReadinessCheck;
  /** The public gateway's pools: the passive health shown is the one the proxy acts on. */
  pools: ReadonlyMap<string, UpstreamPool>;
  /** The pools of the services' gRPC interfaces, by service: the passive health gRPC translation acts on. */
  grpcPools?: ReadonlyMap<string, UpstreamPool>;
  logger: Logger;
  /** `GET /admin/config` and `POST /admin/reload`; without it neither endpoint exists. */
  control?: ConfigControl;
  /** Whether the process is draining: `/ready` answers 503 `stopping` (src/middleware/health.ts). */
  stopping?: () => boolean;
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
    .get('/ready', createReadinessDetails({ check: options.readiness, pools: options.pools, grpcPools: options.grpcPools, stopping: options.stopping }))
    // As on the public listener: the probes exist, so another method is 405 with Allow (RFC 9110 15.5.6), not 404.
    .all(['/health', '/ready'], allowOnly(ALLOWED_PROBE_METHODS));
  const { control } = options;
  if (control) {
    endpoints
      .get('/admin/config', async function configStatus(ctx) {
        ctx.body = await control.status();
      })
      .post('/admin/reload', async function reloadConfig(ctx) {
        // A web page the operator has open could POST here cross-origin (no preflight for a bodiless POST); browsers
        // always send Origin then, operators' tools do not.
        if (ctx.get('origin')) throw new GatewayError('forbidden', 'Reload is not accepted from browsers.');
        const answer = await control.reload();
        if (!answer.ok) throw new GatewayError('config_invalid', answer.reason);
        const { ok: _ok, ...body } = answer;
        ctx.body = body;
      })
      .all('/admin/reload', allowOnly('POST'))
      .all('/admin/config', allowOnly(ALLOWED_PROBE_METHODS));
  }

  app.use(createRequestId());
  app.use(createErrorHandler({ logger }));
  app.use(async function adminAnswersNotStored(ctx, next) {
    // Live state of this process (RFC 9111 5.2.2.5): a 200 without it is heuristically cacheable by whatever sits
    // between an operator and this listener. Probes and errors set it themselves; this covers /admin/*.
    ctx.set('Cache-Control', 'no-store');
    await next();
  });
  app.use(endpoints.routes());
  app.use(async function adminNotFound() {
    throw new GatewayError('route_not_found', 'No admin endpoint at this path.');
  });

  app.on('error', (error: Error) => logger.error('unhandled admin error', { error: error.message }));
  return app;
}

/** An endpoint's answer to the methods its other handlers do not take: 405 naming the ones it does. */
function allowOnly(allow: string): () => never {
  return () => {
    throw new GatewayError('method_not_allowed', 'Method not allowed here.', { headers: { Allow: allow } });
  };
}

/**
 * DNS rebinding: a page from attacker.example, its name re-pointed at 127.0.0.1, reads this listener as its own
 * origin (same-origin, no CORS, no Origin on a GET) and sees instance addresses and failures, or reloads. Its
 * requests carry the attacker's name in Host (or in an absolute-form target); operators' tools, probes and
 * `kubectl port-forward` use an address or localhost.
 */
const ADMIN_HOSTS: ServedHosts = { allows: isLocalHost, description: 'an IP address or localhost' };

/**
 * The admin app on its internal listener (`admin.port`, loopback by default), which holds the request head to one
 * Host line and one authority, and answers only ADMIN_HOSTS (listenInternal, as the metrics listener).
 */
export function listenAdmin(app: { callback(): http.RequestListener }, options: InternalListenerOptions): Promise<InternalListener> {
  return listenInternal(app.callback(), { ...options, servedHosts: ADMIN_HOSTS });
}
