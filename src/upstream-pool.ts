import { METRIC_LABEL } from '../otel/wire-names';
import type { GatewayMetrics } from './metrics';

/**
 * The instances of one service, chosen round robin, with passive health: an instance whose connection
 * fails (refused, reset before answering, timed out) `ejectAfterFailures` times in a row gets no traffic for
 * `ejectMs`, then is tried again. Any response (whatever its status) proves it alive. While every instance is out,
 * one request per EJECTED_TRIAL_INTERVAL_MS goes to each as a trial (a circuit breaker's half-open state): a service
 * with one instance, restarted within a second, answered 503 for the whole ejectMs after it was back; the requests
 * between trials are still answered 503 at once, so a dead service does not hold every request for its timeout.
 */
export interface UpstreamInstance {
  /** Origin, e.g. `http://10.0.0.7:4001`. */
  readonly origin: string;
  // The origin's parts, parsed once here rather than on every proxied request.
  readonly secure: boolean;
  readonly hostname: string;
  readonly port: number;
  /** `host[:port]` as the Host header names it. */
  readonly host: string;
}

export interface InstanceHealth {
  origin: string;
  state: 'healthy' | 'ejected';
  consecutiveFailures: number;
  /** While ejected: when traffic resumes (ISO time). */
  ejectedUntil?: string;
  lastFailure?: string;
}

export interface UpstreamPool {
  readonly service: string;
  readonly size: number;
  /**
   * The next healthy instance not in `exclude`, the first that `prefer` takes if any does; while none is healthy, an
   * ejected one whose trial is due; otherwise undefined (-> 503).
   */
  pick(exclude?: ReadonlySet<UpstreamInstance>, prefer?: (instance: UpstreamInstance) => boolean): UpstreamInstance | undefined;
  /** Whether `pick(exclude)` would give an instance, without taking it (a trial stays due). */
  canPick(exclude?: ReadonlySet<UpstreamInstance>): boolean;
  reportFailure(instance: UpstreamInstance, reason: string): void;
  reportSuccess(instance: UpstreamInstance): void;
  health(): InstanceHealth[];
}

/**
 * The next healthy instance not in `tried` that has room for one more exchange; `busy` when healthy ones exist but
 * all are full, undefined when none is healthy. The HTTP proxy and the gRPC transcoder both pick this way: checking
 * only the instance round robin names answered every other request 503 while a second instance sat idle. With
 * `hasFreeConnection`, one whose connections are all busy is passed over while another's are not: round robin gave
 * a slow instance its share all the same, queued behind its busy connections until they timed out (503), while the
 * other instance answered in milliseconds (nginx's max_conns moves on the same way).
 */
export function pickWithRoom(pool: UpstreamPool, tried: ReadonlySet<UpstreamInstance>, hasRoom: (instance: UpstreamInstance) => boolean, hasFreeConnection?: (instance: UpstreamInstance) => boolean): UpstreamInstance | 'busy' | undefined {
  const full = new Set(tried);
  let sawFull = false;
  for (let instance = pool.pick(full, hasFreeConnection); instance; instance = pool.pick(full, hasFreeConnection)) {
    if (hasRoom(instance)) return instance;
    sawFull = true;
    full.add(instance);
  }
  return sawFull ? 'busy' : undefined;
}

export interface UpstreamPoolOptions {
  service: string;
  origins: readonly string[];
  ejectAfterFailures: number;
  /** ms */
  ejectMs: number;
  /** Monotonic clock, ms (default performance.now()); tests pass their own. */
  now?: () => number;
  /** Counts ejections (`gateway_upstream_ejections_total`); none without. */
  metrics?: GatewayMetrics;
}

/** While every instance of a service is ejected, how often each is tried with one request, ms (at most ejectMs). */
export const EJECTED_TRIAL_INTERVAL_MS = 1000;

interface InstanceState extends UpstreamInstance {
  consecutiveFailures: number;
  /** On the pool's monotonic clock (`now`), not the wall clock. */
  ejectedUntil: number;
  /** While ejected: from when the next trial may go to it (pool's clock). */
  nextTrialAt: number;
  lastFailure?: string;
  /** This instance's ejection counter, made once. */
  ejections?: { inc(): void };
}

export function createUpstreamPool(options: UpstreamPoolOptions): UpstreamPool {
  // Monotonic, as src/readiness.ts: on Date.now() a wall-clock step back (NTP) kept an ejected instance out for the
  // size of the step, and a recovered service with one instance answered 503 for an hour although ejectMs was 1 s.
  const now = options.now ?? (() => performance.now());
  const instances: InstanceState[] = options.origins.map((origin) => ({ ...parseOrigin(origin), consecutiveFailures: 0, ejectedUntil: 0, nextTrialAt: 0 }));
  const trialIntervalMs = Math.min(EJECTED_TRIAL_INTERVAL_MS, options.ejectMs);
  if (options.metrics) {
    // Known from the start, as the ejections below: rate() and increase() need a sample from before the first retry.
    options.metrics.upstreamRetries.inc({ [METRIC_LABEL.upstreamService]: options.service }, 0);
    const ejections = options.metrics.upstreamEjections;
    for (const instance of instances) {
      // Host and port apart, as the CLIENT span's server.address and server.port; bounded by the config. The
      // series exists (at 0) before the first ejection.
      const labels = { [METRIC_LABEL.upstreamService]: options.service, [METRIC_LABEL.serverAddress]: instance.hostname, [METRIC_LABEL.serverPort]: instance.port };
      ejections.inc(labels, 0);
      instance.ejections = ejections.labels(labels);
    }
  }
  let cursor = 0;

  /** While every instance is out, the index of the first (from the cursor) not in `exclude` whose trial is due. */
  const dueTrial = (time: number, exclude: ReadonlySet<UpstreamInstance> | undefined): number | undefined => {
    if (instances.some((instance) => instance.ejectedUntil <= time)) return undefined;
    for (let step = 0; step < instances.length; step++) {
      const index = (cursor + step) % instances.length;
      const instance = instances[index]!;
      if (instance.nextTrialAt <= time && !exclude?.has(instance)) return index;
    }
    return undefined;
  };

  return {
    service: options.service,
    size: instances.length,
    pick(exclude, prefer) {
      const time = now();
      let healthy: number | undefined;
      for (let step = 0; step < instances.length; step++) {
        const index = (cursor + step) % instances.length;
        const instance = instances[index]!;
        if (instance.ejectedUntil > time || exclude?.has(instance)) continue;
        healthy ??= index;
        if (prefer && !prefer(instance)) continue;
        cursor = (index + 1) % instances.length;
        return instance;
      }
      if (healthy !== undefined) {
        cursor = (healthy + 1) % instances.length;
        return instances[healthy];
      }
      const trial = dueTrial(time, exclude);
      if (trial === undefined) return undefined;
      // Every instance is out: the first whose trial is due gets this request, and the next trial starts after it.
      const instance = instances[trial]!;
      instance.nextTrialAt = time + trialIntervalMs;
      cursor = (trial + 1) % instances.length;
      return instance;
    },
    canPick(exclude) {
      const time = now();
      return instances.some((instance) => instance.ejectedUntil <= time && !exclude?.has(instance)) || dueTrial(time, exclude) !== undefined;
    },
    reportFailure(instance, reason) {
      const state = instance as InstanceState;
      state.consecutiveFailures += 1;
      state.lastFailure = reason;
      if (state.consecutiveFailures >= options.ejectAfterFailures) {
        const time = now();
        // Failures of requests still in flight while it is out extend the ejection; they are not new ones.
        if (state.ejectedUntil <= time) {
          state.ejections?.inc();
          // Its first trial (should every instance be out) a full interval after the failure that ejected it.
          state.nextTrialAt = time + trialIntervalMs;
        }
        state.ejectedUntil = time + options.ejectMs;
      }
    },
    reportSuccess(instance) {
      const state = instance as InstanceState;
      state.consecutiveFailures = 0;
      state.ejectedUntil = 0;
    },
    health() {
      const time = now();
      // Shown on the wall clock (the reader compares it with theirs): now plus what is left of the ejection.
      const wallTime = Date.now();
      return instances.map((instance) => ({
        origin: instance.origin,
        state: instance.ejectedUntil > time ? 'ejected' : 'healthy',
        consecutiveFailures: instance.consecutiveFailures,
        ...(instance.ejectedUntil > time ? { ejectedUntil: new Date(wallTime + (instance.ejectedUntil - time)).toISOString() } : {}),
        ...(instance.lastFailure ? { lastFailure: instance.lastFailure } : {}),
      }));
    },
  };
}

function parseOrigin(origin: string): UpstreamInstance {
  const url = new URL(origin);
  const secure = url.protocol === 'https:';
  // URL drops a default port, so an empty one means 80 or 443.
  const port = url.port === '' ? (secure ? 443 : 80) : Number(url.port);
  // A bracketed IPv6 hostname must lose its brackets for http.request.
  const hostname = url.hostname.replace(/^\[(.*)\]$/, '$1');
  return { origin: url.origin, secure, hostname, port, host: url.host };
}

/**
 * Pools kept from one build of the gateway to the next (a config reload, src/config-reload.ts), by service
 * name with the settings they were made from: a service whose settings did not change keeps its pool, so its
 * passive health (ejections, failure counts) and round-robin position carry over.
 */
export type UpstreamPoolCache = Map<string, { settings: string; pool: UpstreamPool }>;

/** One pool per configured service, keyed by the service name routes use; reused from `cache` when unchanged. */
export function createUpstreamPools(
  services: Readonly<Record<string, { url: string | readonly string[]; ejectAfterFailures: number; ejectMs: number }>>,
  metrics?: GatewayMetrics,
  cache?: UpstreamPoolCache,
): ReadonlyMap<string, UpstreamPool> {
  const pools = new Map(
    Object.entries(services).map(([service, { url, ejectAfterFailures, ejectMs }]) => {
      const settings = JSON.stringify({ url, ejectAfterFailures, ejectMs });
      const kept = cache?.get(service);
      if (kept?.settings === settings) return [service, kept.pool] as const;
      const origins = (typeof url === 'string' ? [url] : url).map((each) => new URL(each).origin);
      const pool = createUpstreamPool({ service, origins, ejectAfterFailures, ejectMs, metrics });
      cache?.set(service, { settings, pool });
      return [service, pool] as const;
    }),
  );
  if (cache) for (const service of cache.keys()) if (!pools.has(service)) cache.delete(service);
  return pools;
}
