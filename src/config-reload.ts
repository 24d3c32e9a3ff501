import { createHash } from 'node:crypto';
import type http from 'node:http';
import type Koa from 'koa';
import { Agent } from 'undici';
import type { Logger } from '../otel/logger';
import { ConfigError, deepFreeze, type GatewayConfig } from './config';
import { RateLimitWindows } from './rate-limit-store';
import type { GrpcClientCache } from './grpc/grpc-clients';
import type { UpstreamPoolCache } from './upstream-pool';

/**
 * Configuration changes without a restart (SIGHUP, `POST /admin/reload`): the file and environment are read
 * and validated again with the one schema, and a new gateway app is built from the result and swapped in at
 * once. The listener delegates each request to the app current when it arrived, so requests in flight finish
 * under the old app and new ones see the new. An invalid file changes nothing.
 */

/**
 * Keys a reload cannot apply: they shape what start-up made once (listeners, processes, the logger, the Redis
 * client). A reload keeps their running values and names them as waiting for a restart.
 */
export const RESTART_ONLY_KEYS: readonly string[] = ['port', 'host', 'workers', 'tls', 'admin', 'metrics', 'server', 'logLevel', 'rateLimit.redisUrl', 'rateLimit.redisTimeoutMs'];

/**
 * The configuration's version: 12 hex digits of SHA-256 over the validated config. The JWT secret and the signing key are left out:
 * a generated one is random per start, and a configured one must not be guessable from a published hash.
 */
export function configVersion(config: GatewayConfig): string {
  const { secret: _secret, ...auth } = config.auth;
  const { signingKey: _signingKey, ...proxy } = config.proxy;
  return createHash('sha256').update(JSON.stringify({ ...config, auth, proxy })).digest('hex').slice(0, 12);
}

/** The configuration a gateway runs, with its version and when it was loaded (ISO time). */
export interface ActiveConfig {
  config: GatewayConfig;
  version: string;
  loadedAt: string;
  /** Restart-only keys whose file or environment value differs from the running one. */
  pendingRestart: string[];
}

export function activeConfig(config: GatewayConfig, pendingRestart: string[] = []): ActiveConfig {
  return { config, version: configVersion(config), loadedAt: new Date().toISOString(), pendingRestart };
}

function valueAt(config: unknown, dotted: string): unknown {
  return dotted.split('.').reduce<unknown>((node, key) => (typeof node === 'object' && node !== null ? (node as Record<string, unknown>)[key] : undefined), config);
}

/** `next` with the running values of the restart-only keys, and the keys whose values differed. */
export function keepRestartOnly(running: GatewayConfig, next: GatewayConfig): { config: GatewayConfig; pendingRestart: string[] } {
  const pendingRestart = RESTART_ONLY_KEYS.filter((key) => JSON.stringify(valueAt(running, key)) !== JSON.stringify(valueAt(next, key)));
  if (pendingRestart.length === 0) return { config: next, pendingRestart };
  const merged = structuredClone(next) as Record<string, unknown>;
  for (const key of pendingRestart) {
    const path = key.split('.');
    const parent = path.slice(0, -1).reduce((node, part) => node[part] as Record<string, unknown>, merged);
    const value = valueAt(running, key);
    if (value === undefined) delete parent[path.at(-1)!];
    else parent[path.at(-1)!] = structuredClone(value);
  }
  return { config: deepFreeze(merged) as unknown as GatewayConfig, pendingRestart };
}

export type ReloadCheck = { ok: true; next: ActiveConfig; changed: boolean } | { ok: false; reason: string };

/**
 * Reads and validates the configuration again (`load`) and keeps the restart-only keys. Logs a refusal (why),
 * no change, and the keys that wait for a restart; the caller logs `config reloaded` once the new version serves.
 * Builds nothing.
 */
export function checkReload(running: ActiveConfig, load: () => GatewayConfig, logger: Logger): ReloadCheck {
  let loaded: GatewayConfig;
  try {
    loaded = load();
  } catch (error) {
    if (!(error instanceof ConfigError)) {
      // Not the file's fault (a bug): still no reason to stop serving, but an error, not a refusal.
      const reason = `config reload failed: ${error instanceof Error ? error.message : String(error)}`;
      logger.error('config reload failed; the running config keeps serving', { reason, version: running.version });
      return { ok: false, reason };
    }
    logger.warn('config reload refused; the running config keeps serving', { reason: error.message, version: running.version });
    return { ok: false, reason: error.message };
  }
  const { config, pendingRestart } = keepRestartOnly(running.config, loaded);
  const next = activeConfig(config, pendingRestart);
  const changed = next.version !== running.version;
  if (pendingRestart.length > 0) logger.warn('config keys changed that apply only after a restart; running values kept', { keys: pendingRestart });
  if (!changed) logger.info('config reload: no change', { version: running.version });
  return { ok: true, next: changed ? next : { ...running, pendingRestart }, changed };
}

/**
 * What one build of the gateway hands to the next: pools of unchanged services (passive health), the
 * upstream connections (while `proxy.maxSockets` stays), and the memory windows of unchanged limits.
 */
export class KeptAcrossReloads {
  readonly pools: UpstreamPoolCache = new Map();
  readonly windows = new RateLimitWindows();
  /** gRPC channels by origin (src/grpc/grpc-clients.ts): each one made is never freed, so builds share them. */
  readonly grpcClients: GrpcClientCache = new Map();
  private agent?: { maxSockets: number; agent: Agent };

  upstreamAgent(maxSockets: number): Agent {
    if (this.agent?.maxSockets === maxSockets) return this.agent.agent;
    // undici closes it once the old app's exchanges on it have finished.
    void this.agent?.agent.close();
    this.agent = { maxSockets, agent: new Agent({ connections: maxSockets, pipelining: 1 }) };
    return this.agent.agent;
  }
}

export interface BuiltGateway {
  gateway: Koa;
  admin: Koa;
}

/** Builds the apps of one configuration (createGatewayApps with the process's collaborators). */
export type BuildGateway = (active: ActiveConfig, kept: KeptAcrossReloads) => BuiltGateway;

export interface LiveGateway {
  /** The public listener's request handler: the current app's. */
  readonly listener: http.RequestListener;
  /** The internal listener's request handler: the current admin app's. */
  readonly adminListener: http.RequestListener;
  active(): ActiveConfig;
  /**
   * Builds `next` and swaps it in (only its `pendingRestart` is taken when the version is the running one); on
   * a build failure logs it, keeps the running app and returns why (undefined once applied).
   */
  apply(next: ActiveConfig): string | undefined;
}

/** A gateway whose app can be replaced while it serves (the swap is one assignment, between requests). */
export function createLiveGateway(initial: ActiveConfig, build: BuildGateway, logger: Logger): LiveGateway {
  const kept = new KeptAcrossReloads();
  let active = initial;
  let built = build(initial, kept);
  kept.windows.sweep();
  let handle = built.gateway.callback();
  let handleAdmin = built.admin.callback();
  return {
    listener: (req, res) => void handle(req, res),
    adminListener: (req, res) => void handleAdmin(req, res),
    active: () => active,
    apply(next) {
      if (next.version === active.version) {
        active = next;
        return undefined;
      }
      try {
        built = build(next, kept);
      } catch (error) {
        const why = error instanceof Error ? error.message : String(error);
        logger.error('config reload failed while building the gateway; the running config keeps serving', { version: next.version, error: why });
        return why;
      }
      kept.windows.sweep();
      active = next;
      handle = built.gateway.callback();
      handleAdmin = built.admin.callback();
      return undefined;
    },
  };
}
