import { createHash } from 'node:crypto';
import type http from 'node:http';
import type Koa from 'koa';
import type { Agent } from 'undici';
import { createUpstreamAgent } from './middleware/proxy';
import type { Logger } from '../otel/logger';
import { checkCrossFieldRules, ConfigError, deepFreeze, valueAt, type GatewayConfig } from './config';
import { RateLimitWindows } from './rate-limit-store';
import { NewestMemoryStore } from './response-store';
import type { GrpcClientCache } from './grpc/grpc-clients';
import { protoSourcesDigest, readProtoSources, type ProtoSources } from './grpc/proto-sources';
import type { TokenService } from './tokens';
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
// `rateLimit.maxTrackedClients` bounds the memory windows a reload keeps (and the cluster primary's ledger and the
// workers' lease tables): taken as reloaded, it answered `reloaded` with nothing pending while the old bound stayed.
export const RESTART_ONLY_KEYS: readonly string[] = ['port', 'host', 'workers', 'tls', 'admin', 'metrics', 'server', 'logLevel', 'rateLimit.redisUrl', 'rateLimit.redisTimeoutMs', 'rateLimit.maxTrackedClients'];

/**
 * The configuration's version: 12 hex digits of SHA-256 over the validated config. The JWT secret, the signing key,
 * the Redis URL's password and the values routes' header rules set or add are left out (their names stay): a
 * generated secret is random per start, and a configured one must not be guessable from a published hash (the rest
 * of a config is often public: its file, its manifests; the version is in every span, log line and /admin/config).
 * A header rule's value is often an upstream's credential (config.ts SECRET_KEY_PATHS): with the rest of the file
 * known, a six-digit one was found from the version in 3.5 s (an outside review). A change of any of them alone is a
 * change all the same (sameSecrets), applied under the same version.
 */
export function configVersion(config: GatewayConfig, sources: ProtoSources | undefined = grpcProtoSources(config)): string {
  const { secret: _secret, ...auth } = config.auth;
  const { signingKey: _signingKey, ...proxy } = config.proxy;
  const rateLimit = config.rateLimit.redisUrl === undefined ? config.rateLimit : { ...config.rateLimit, redisUrl: withoutPassword(config.rateLimit.redisUrl) };
  const routes = config.routes.map((route) => (route.headers === undefined ? route : { ...route, headers: headerRuleNames(route.headers) }));
  // The proto sources of its gRPC routes are part of it: an edit of a .proto alone is a new config to reload.
  const protoSources = sources === undefined ? undefined : protoSourcesDigest(sources);
  return createHash('sha256').update(JSON.stringify({ ...config, auth, proxy, rateLimit, routes, protoSources })).digest('hex').slice(0, 12);
}

type HeaderRules = NonNullable<GatewayConfig['routes'][number]['headers']>;

/** A route's header rules with the values they set and add left out (configVersion), the names kept. */
function headerRuleNames(headers: HeaderRules): unknown {
  const names = (values: Readonly<Record<string, string>> | undefined) => (values === undefined ? undefined : Object.keys(values));
  const rule = (each: HeaderRules['request']) => each && { ...each, add: names(each.add), set: names(each.set) };
  return { request: rule(headers.request), response: rule(headers.response) };
}

/** The values routes' header rules set and add, in route order: what configVersion leaves out of the header rules. */
function headerRuleValues(config: GatewayConfig): string {
  return JSON.stringify(config.routes.map((route) => [route.headers?.request?.set, route.headers?.request?.add, route.headers?.response?.set, route.headers?.response?.add]));
}

/** The proto sources the config's gRPC routes load, read now (readProtoSources); none without a gRPC route. */
function grpcProtoSources(config: GatewayConfig): ProtoSources | undefined {
  const protos = config.routes.flatMap((route) => (route.grpc ? [route.grpc.proto] : []));
  return protos.length === 0 ? undefined : readProtoSources(protos);
}

function withoutPassword(url: string): string {
  const parsed = new URL(url);
  parsed.password = '';
  return parsed.href;
}

/**
 * Whether two configs hold the same secrets the version leaves out: the JWT secret, the signing key and the header
 * rules' values (the Redis URL's password is restart-only). A reload that changes only one of them (a leaked secret
 * rotated in the file) is a change all the same: it was answered `unchanged` and not applied, and the old secret went
 * on minting tokens that verified.
 */
export function sameSecrets(a: GatewayConfig, b: GatewayConfig): boolean {
  return a.auth.secret === b.auth.secret && a.proxy.signingKey === b.proxy.signingKey && headerRuleValues(a) === headerRuleValues(b);
}

/** The configuration a gateway runs, with its version and when it was loaded (ISO time). */
export interface ActiveConfig {
  config: GatewayConfig;
  /** What its gRPC routes' protos held when it was read, the version's and the builds' (a worker's too): ProtoSources. */
  protoSources?: ProtoSources;
  version: string;
  loadedAt: string;
  /** Restart-only keys whose file or environment value differs from the running one. */
  pendingRestart: string[];
}

export function activeConfig(config: GatewayConfig, pendingRestart: string[] = []): ActiveConfig {
  const protoSources = grpcProtoSources(config);
  return { config, ...(protoSources && { protoSources }), version: configVersion(config, protoSources), loadedAt: new Date().toISOString(), pendingRestart };
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

/** The warning, at start-up and on each reload, naming the file's keys whose values the environment overrides. */
export const ENV_SHADOWS_FILE = 'config keys set in the environment override the file; its values for them are not applied';

export type ReloadCheck = { ok: true; next: ActiveConfig; changed: boolean; shadowedByEnv: string[] } | { ok: false; reason: string };

/**
 * Reads and validates the configuration again (`load`) and keeps the restart-only keys. Logs a refusal (why),
 * no change, the keys that wait for a restart, and the file's keys the environment overrides (`shadowedByEnv`,
 * envShadowedKeys: they never apply); the caller logs `config reloaded` once the new version serves. Builds nothing.
 */
export function checkReload(running: ActiveConfig, load: () => GatewayConfig, logger: Logger, shadowedByEnv: () => string[] = () => []): ReloadCheck {
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
  // A generated secret is this process's own: while none is configured a reload keeps the running one (its tokens
  // stay valid), whichever secret the read made up. After a configured one, the read's fresh one: never the
  // start's again (its tokens, ended by the configured secret, would verify once more).
  if (loaded.auth.secretSource === 'generated' && running.config.auth.secretSource === 'generated' && loaded.auth.secret !== running.config.auth.secret) {
    loaded = deepFreeze({ ...loaded, auth: { ...loaded.auth, secret: running.config.auth.secret } }) as unknown as GatewayConfig;
  }
  const { config, pendingRestart } = keepRestartOnly(running.config, loaded);
  if (pendingRestart.length > 0) {
    try {
      checkCrossFieldRules(config);
    } catch (error) {
      const reason = `${(error as ConfigError).message} (with the running ${pendingRestart.join(', ')}, which apply only after a restart)`;
      logger.warn('config reload refused; the running config keeps serving', { reason, version: running.version });
      return { ok: false, reason };
    }
  }
  const next = activeConfig(config, pendingRestart);
  // The version leaves the secrets out (configVersion), so a change of secrets alone keeps it: applied under the same version.
  const changed = next.version !== running.version || !sameSecrets(running.config, next.config);
  if (pendingRestart.length > 0) logger.warn('config keys changed that apply only after a restart; running values kept', { keys: pendingRestart });
  const shadowed = shadowedByEnv();
  if (shadowed.length > 0) logger.warn(ENV_SHADOWS_FILE, { keys: shadowed });
  if (!changed) logger.info('config reload: no change', { version: running.version });
  return { ok: true, next: changed ? next : { ...running, pendingRestart }, changed, shadowedByEnv: shadowed };
}

/**
 * What one build of the gateway hands to the next: pools of unchanged services (passive health), the
 * upstream connections (while `proxy.maxSockets` stays), and the memory windows of unchanged limits.
 */
export class KeptAcrossReloads {
  readonly pools: UpstreamPoolCache = new Map();
  /** The pools of the services' gRPC interfaces (src/grpc/route-mappings.ts), kept as `pools` are. */
  readonly grpcPools: UpstreamPoolCache = new Map();
  readonly windows = new RateLimitWindows();
  /** The response cache's memory store of the newest build: earlier builds' writes drop its copies too. */
  readonly newestCacheStore = new NewestMemoryStore();
  /** gRPC channels by origin (src/grpc/grpc-clients.ts): each one made is never freed, so builds share them. */
  readonly grpcClients: GrpcClientCache = new Map();
  private agent?: { maxSockets: number; agent: Agent };
  /**
   * The token services of the last two builds' token settings, newest first (the running build's, and the one before
   * it or a failed build's): a build whose settings are one of them takes it up again.
   */
  private tokenServices: { settings: string; service: TokenService }[] = [];
  /** Connections a newer build no longer uses, which the running one may still: closed by retireReplaced. */
  private replaced: Agent[] = [];
  /** gRPC channels no route of a newer build calls (keepalive changed, instance or route gone): closed by retireReplaced. */
  private replacedChannels: { close(): void }[] = [];

  /**
   * Returns what puts the pool caches and the token services back as they are now: a build updates them as it goes (a
   * changed service's new pool, a removed one's entry deleted, a token service of other settings first), and one
   * that then fails left them holding what no running build uses: the next reload made fresh pools where the running
   * ones (their ejections) should have been kept, and two failed builds pushed the running token service out.
   */
  remember(): () => void {
    const pools = new Map(this.pools);
    const grpcPools = new Map(this.grpcPools);
    const tokenServices = this.tokenServices;
    return () => {
      for (const [cache, saved] of [[this.pools, pools], [this.grpcPools, grpcPools]] as const) {
        cache.clear();
        for (const [service, entry] of saved) cache.set(service, entry);
      }
      this.tokenServices = tokenServices;
    };
  }

  /**
   * The token service for these token settings (`settings`: what createTokenService is made from, written out):
   * the one an earlier build made from the same, else `make()`'s. Made anew by every build, a reload dropped the
   * provider's key set, the verified tokens and the fetch back-off whatever it changed: one that changed a rate limit
   * during a provider outage turned every provider token from accepted to 503 (in a cluster, in every worker).
   */
  tokenService(settings: string, make: () => TokenService): TokenService {
    const kept = this.tokenServices.find((each) => each.settings === settings);
    const service = kept?.service ?? make();
    this.tokenServices = [{ settings, service }, ...this.tokenServices.filter((each) => each !== kept)].slice(0, 2);
    return service;
  }

  upstreamAgent(maxSockets: number): Agent {
    if (this.agent?.maxSockets === maxSockets) return this.agent.agent;
    // Not closed here: the running app still dispatches on it (and keeps doing so if this build fails).
    if (this.agent) this.replaced.push(this.agent.agent);
    this.agent = { maxSockets, agent: createUpstreamAgent(maxSockets) };
    return this.agent.agent;
  }

  /**
   * Takes the channels that no route of the build being made calls (`used`: src/grpc/route-mappings.ts
   * grpcChannelKeys) out of the cache, to be closed by retireReplaced: a reload that changed a service's keepalive
   * made channels of the new setting and left the old ones open for good (grpc-js keeps every channel until
   * `close()`). A build that fails after this leaves the running one to make a channel again on its next call.
   */
  keepOnlyGrpcChannels(used: ReadonlySet<string>): void {
    for (const [key, client] of this.grpcClients) {
      if (used.has(key)) continue;
      this.grpcClients.delete(key);
      this.replacedChannels.push(client);
    }
  }

  /**
   * Closes the connections (and gRPC channels) the build just swapped in replaced, once the build before it has no request left
   * (`drained`) or after `boundMs`. Closed at the swap, they failed the old build's requests that had not
   * dispatched yet (waiting on Redis, a JWKS fetch, a coalesced cache miss): undici refuses every dispatch after
   * `close()`. After the bound, `close()` still lets exchanges under way finish; only a request that has not
   * dispatched by then is refused (503, not counted against the instance: src/middleware/proxy.ts).
   */
  retireReplaced(drained: Promise<void>, boundMs: number): void {
    const replaced = this.replaced.splice(0);
    const channels = this.replacedChannels.splice(0);
    if (replaced.length === 0 && channels.length === 0) return;
    let bound: NodeJS.Timeout | undefined;
    const outlived = new Promise<void>((resolve) => (bound = setTimeout(resolve, boundMs).unref()));
    void Promise.race([drained, outlived]).then(() => {
      clearTimeout(bound);
      for (const agent of replaced) void agent.close();
      // grpc-js refuses new calls on a closed channel and lets the ones under way finish before the connection goes.
      for (const channel of channels) channel.close();
    });
  }
}

/**
 * The longest an upstream exchange of `config` may last, ms: how long a replaced build's connections are kept
 * for requests of it still under way.
 */
export function longestExchangeMs(config: GatewayConfig): number {
  return Math.max(config.proxy.deadlineMs, ...config.routes.map((route) => route.deadlineMs ?? 0));
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
   * Builds `next` and swaps it in (only its `pendingRestart` is taken when the version and keys are the running ones); on
   * a build failure logs it, keeps the running app and returns why (undefined once applied).
   */
  apply(next: ActiveConfig): string | undefined;
}

/** A built gateway's request handlers, counting the public listener's requests until each is handled. */
interface ServingBuild {
  listener: http.RequestListener;
  adminListener: http.RequestListener;
  /** Settles once no public request that this build started is still being handled. */
  drained(): Promise<void>;
}

function serve(built: BuiltGateway): ServingBuild {
  const handle = built.gateway.callback();
  const handleAdmin = built.admin.callback();
  let handling = 0;
  let onDrained: (() => void) | undefined;
  // Koa's promise settles once the pipeline is through, the proxy's exchange included (never rejects).
  const handled = () => {
    if (--handling === 0) onDrained?.();
  };
  return {
    listener: (req, res) => {
      handling++;
      void handle(req, res).then(handled);
    },
    adminListener: (req, res) => void handleAdmin(req, res),
    drained: () => (handling === 0 ? Promise.resolve() : new Promise((resolve) => (onDrained = resolve))),
  };
}

/** A gateway whose app can be replaced while it serves (the swap is one assignment, between requests). */
export function createLiveGateway(initial: ActiveConfig, build: BuildGateway, logger: Logger): LiveGateway {
  const kept = new KeptAcrossReloads();
  let active = initial;
  /** The version the running build replaced, and what puts the pool caches back as they were under it. */
  let replaced: { version: string; restoreKept: () => void } | undefined;
  let serving = serve(build(initial, kept));
  kept.windows.sweep();
  return {
    listener: (req, res) => serving.listener(req, res),
    adminListener: (req, res) => serving.adminListener(req, res),
    active: () => active,
    apply(next) {
      if (next.version === active.version && sameSecrets(next.config, active.config)) {
        active = next;
        return undefined;
      }
      let built: BuiltGateway;
      const restoreKept = kept.remember();
      // Back to the version the running one replaced (a cluster's reload another worker refused, an operator's revert):
      // its pools, with their ejections, where the running build had made pools of other settings.
      if (replaced?.version === next.version) replaced.restoreKept();
      try {
        built = build(next, kept);
      } catch (error) {
        restoreKept();
        kept.windows.forgetAsked();
        const why = error instanceof Error ? error.message : String(error);
        logger.error('config reload failed while building the gateway; the running config keeps serving', { version: next.version, error: why });
        return why;
      }
      kept.windows.sweep();
      const previous = serving;
      serving = serve(built);
      // Requests that started under the previous build finish on its connections.
      kept.retireReplaced(previous.drained(), longestExchangeMs(active.config));
      replaced = { version: active.version, restoreKept };
      active = next;
      return undefined;
    },
  };
}
