import type { Middleware } from 'koa';
import { HEADER } from '../../otel/wire-names';
import type { UpstreamPool } from '../upstream-pool';

export interface ReadinessOptions {
  /** Services to probe; each instance is asked for `GET /health`. */
  pools: ReadonlyMap<string, UpstreamPool>;
  /** How long one probe may take, ms. Default 2000. */
  timeoutMs?: number;
}

interface ProbeResult {
  status: 'up' | 'down';
  latencyMs: number;
  detail?: string;
}

/** `GET /health`: the gateway process itself is serving. Touches no dependency. */
export function createHealth(): Middleware {
  const startedAt = Date.now();
  return async function health(ctx) {
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { status: 'ok', service: 'gateway', uptimeSeconds: Math.round((Date.now() - startedAt) / 1000) };
  };
}

/**
 * `GET /ready`: the gateway and every instance of every service, probed in parallel, beside the passive
 * health the proxy keeps (ejected or not). A service is up when one of its instances answers; the gateway
 * is ready (200) when every service is up, 503 otherwise.
 */
export function createReadiness(options: ReadinessOptions): Middleware {
  const timeoutMs = options.timeoutMs ?? 2000;

  async function probe(origin: string, requestId: string): Promise<ProbeResult> {
    const started = performance.now();
    const latency = () => Math.round(performance.now() - started);
    try {
      const response = await fetch(`${origin}/health`, { headers: { [HEADER.requestId]: requestId }, signal: AbortSignal.timeout(timeoutMs) });
      await response.body?.cancel();
      return response.ok ? { status: 'up', latencyMs: latency() } : { status: 'down', latencyMs: latency(), detail: `HTTP ${response.status}` };
    } catch (error) {
      const cause = (error as { cause?: { code?: string } }).cause;
      return { status: 'down', latencyMs: latency(), detail: cause?.code ?? (error as Error).name };
    }
  }

  async function probeService(pool: UpstreamPool, requestId: string) {
    const instances = await Promise.all(pool.health().map(async (passive) => ({ ...passive, probe: await probe(passive.origin, requestId) })));
    const up = instances.some((instance) => instance.probe.status === 'up');
    // Single-instance services keep the short shape; the instance list appears when there are several.
    const first = instances[0]!.probe;
    return instances.length === 1 ? { ...first, passive: instances[0]!.state } : { status: up ? 'up' : 'down', instances };
  }

  return async function ready(ctx) {
    const results = await Promise.all([...options.pools].map(async ([name, pool]) => [name, await probeService(pool, ctx.state.requestId)] as const));
    const allUp = results.every(([, result]) => result.status === 'up');
    ctx.set('Cache-Control', 'no-store');
    ctx.status = allUp ? 200 : 503;
    ctx.body = { status: allUp ? 'ready' : 'degraded', services: Object.fromEntries(results) };
  };
}
