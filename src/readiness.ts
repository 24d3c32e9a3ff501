import { request } from 'undici';
import { HEADER } from '../otel/wire-names';
import type { UpstreamPool } from './upstream-pool';

/** One instance's answer to `GET /health`. */
export interface InstanceProbe {
  status: 'up' | 'down';
  latencyMs: number;
  /** Why it is down: `HTTP 500`, `ECONNREFUSED`, `TimeoutError`. Internal only (it names the failure). */
  detail?: string;
}

/** One probe of every instance of every service. */
export interface ProbeRound {
  /** When the round began (ISO time). */
  startedAt: string;
  /** Per service, each instance's probe keyed by its origin. */
  services: ReadonlyMap<string, ReadonlyMap<string, InstanceProbe>>;
}

export interface ReadinessCheck {
  /** How long a round's answer is reused, ms. */
  readonly cacheMs: number;
  /**
   * The latest round: reused while younger than `cacheMs`, shared by every caller while it is in flight,
   * otherwise started now (carrying `requestId`, so the services' logs of the probes lead back to the call).
   */
  current(requestId: string): Promise<ProbeRound>;
}

export interface ReadinessCheckOptions {
  /** Services to probe; each instance is asked for `GET /health`. */
  pools: ReadonlyMap<string, UpstreamPool>;
  /** How long a round's answer is reused, ms (`readinessCacheMs`). Default 1000; 0 = only calls that overlap a round share it. */
  cacheMs?: number;
  /** How long one probe may take, ms. Default 2000. */
  timeoutMs?: number;
  /** Monotonic clock, ms; tests pass their own. Default `performance.now`. */
  now?: () => number;
}

/** Bytes of a `/health` answer's body a probe reads before it takes the answer as given (the rest is not read). */
const HEALTH_BODY_READ_BYTES = 64 * 1024;

/** A service is up when at least one of its instances answers. */
export function isServiceUp(probes: ReadonlyMap<string, InstanceProbe>): boolean {
  return [...probes.values()].some((probe) => probe.status === 'up');
}

/**
 * Active readiness of the upstreams, behind a cache and a single flight: `/ready` is unauthenticated, and
 * each round costs one request per instance, so callers must not be able to multiply that traffic. However
 * many calls arrive, at most one round runs per `cacheMs`.
 */
export function createReadinessCheck(options: ReadinessCheckOptions): ReadinessCheck {
  const { pools } = options;
  const cacheMs = options.cacheMs ?? 1000;
  const timeoutMs = options.timeoutMs ?? 2000;
  // Monotonic: a wall-clock step must not pin a stale answer or defeat the cache.
  const now = options.now ?? (() => performance.now());
  let latest: { round: ProbeRound; completedAt: number } | undefined;
  let inFlight: Promise<ProbeRound> | undefined;

  async function probe(origin: string, requestId: string): Promise<InstanceProbe> {
    const started = performance.now();
    const latency = () => Math.round(performance.now() - started);
    try {
      // undici's request API, as the proxy's: fetch refuses the Fetch standard's "bad ports" (6000, 6665-6669,
      // 10080, ...), and an instance the proxy reaches on one was reported down.
      const { statusCode, body } = await request(`${origin}/health`, { headers: { [HEADER.requestId]: requestId }, signal: AbortSignal.timeout(timeoutMs) });
      if (statusCode < 200 || statusCode >= 300) {
        await body.dump();
        return { status: 'down', latencyMs: latency(), detail: `HTTP ${statusCode}` };
      }
      // Read to its end (or HEALTH_BODY_READ_BYTES) within the timeout: undici's `dump()` resolved on a body cut by
      // the timeout or a reset as on a whole one, and a service whose answers never finished was reported up.
      let read = 0;
      for await (const chunk of body as AsyncIterable<Buffer>) if ((read += chunk.length) > HEALTH_BODY_READ_BYTES) break;
      return { status: 'up', latencyMs: latency() };
    } catch (error) {
      // A socket's errno (`ECONNREFUSED`), else the error's name (`TimeoutError`: a DOMException's `code` is a number).
      const { code, name } = error as { code?: unknown; name?: string };
      return { status: 'down', latencyMs: latency(), detail: typeof code === 'string' ? code : (name ?? 'Error') };
    }
  }

  async function probeAll(requestId: string): Promise<ProbeRound> {
    const startedAt = new Date().toISOString();
    const services = await Promise.all(
      [...pools].map(async ([name, pool]) => {
        const probes = await Promise.all(pool.health().map(async ({ origin }) => [origin, await probe(origin, requestId)] as const));
        return [name, new Map(probes)] as const;
      }),
    );
    return { startedAt, services: new Map(services) };
  }

  return {
    cacheMs,
    current(requestId) {
      // Freshness counts from the end of a round, so rounds never run back to back however slow they are.
      if (latest && now() - latest.completedAt < cacheMs) return Promise.resolve(latest.round);
      inFlight ??= probeAll(requestId)
        .then((round) => {
          latest = { round, completedAt: now() };
          return round;
        })
        .finally(() => {
          inFlight = undefined;
        });
      return inFlight;
    },
  };
}
