import type { Middleware } from 'koa';
import { HEADER } from '../../otel/wire-names';

export interface ReadinessOptions {
  /** Services to probe, by name, as origins; each is asked for `GET /health`. */
  services: Readonly<Record<string, string>>;
  /** How long one probe may take, ms. Default 2000. */
  timeoutMs?: number;
}

interface ServiceReadiness {
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

/** `GET /ready`: the gateway and each upstream's `/health`, probed in parallel; 503 when any is down. */
export function createReadiness(options: ReadinessOptions): Middleware {
  const timeoutMs = options.timeoutMs ?? 2000;
  const probes = Object.entries(options.services).map(([name, origin]) => ({ name, url: new URL('/health', origin).href }));

  async function probe(url: string, requestId: string): Promise<ServiceReadiness> {
    const started = performance.now();
    const latency = () => Math.round(performance.now() - started);
    try {
      const response = await fetch(url, { headers: { [HEADER.requestId]: requestId }, signal: AbortSignal.timeout(timeoutMs) });
      await response.body?.cancel();
      return response.ok ? { status: 'up', latencyMs: latency() } : { status: 'down', latencyMs: latency(), detail: `HTTP ${response.status}` };
    } catch (error) {
      const cause = (error as { cause?: { code?: string } }).cause;
      return { status: 'down', latencyMs: latency(), detail: cause?.code ?? (error as Error).name };
    }
  }

  return async function ready(ctx) {
    const results = await Promise.all(probes.map(async ({ name, url }) => [name, await probe(url, ctx.state.requestId)] as const));
    const services = Object.fromEntries(results);
    const allUp = results.every(([, result]) => result.status === 'up');
    ctx.set('Cache-Control', 'no-store');
    ctx.status = allUp ? 200 : 503;
    ctx.body = { status: allUp ? 'ready' : 'degraded', services };
  };
}
