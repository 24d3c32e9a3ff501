import { trace } from '@opentelemetry/api';
import type { Context } from 'koa';
import Koa from 'koa';
import http from 'node:http';
import { Socket } from 'node:net';
import { createBackgroundFetches, createBackgroundWork } from '../../src/cache-background-fetch';
import { GatewayError } from '../../src/errors';
import { memoryLogger } from '../helpers/servers';

/** A Koa context for a GET, as the cache sees a triggering request. */
function triggerContext(): Context {
  const req = new http.IncomingMessage(new Socket());
  req.method = 'GET';
  req.url = '/api/thing';
  req.headers = { host: 'gateway.example', 'if-none-match': '"client"', range: 'bytes=0-1', accept: 'text/plain' };
  return new Koa().createContext(req, new http.ServerResponse(req));
}

describe('background fetches of the response cache', () => {
  it('runs at most maxConcurrent at once: past it none starts until one is over', async () => {
    const releases: (() => void)[] = [];
    const fetches = createBackgroundFetches({
      forward: () => new Promise<void>((resolve) => releases.push(resolve)),
      tracer: trace.getTracer('test'),
      logger: memoryLogger('gateway').logger,
      maxConcurrent: 2,
    });
    const first = fetches.start(triggerContext(), async () => ({}));
    const second = fetches.start(triggerContext(), async () => ({}));
    expect(first).toBeDefined();
    expect(second).toBeDefined();
    expect(fetches.start(triggerContext(), async () => ({}))).toBeUndefined();
    await new Promise<void>((resolve) => setImmediate(resolve));
    releases.shift()!();
    await first;
    const third = fetches.start(triggerContext(), async () => ({}));
    expect(third).toBeDefined();
    releases.forEach((release) => release());
    await new Promise<void>((resolve) => setImmediate(resolve));
    releases.forEach((release) => release());
    await Promise.all([second, third]);
  });

  it('sends a GET without the client\'s own conditions or range, and settles with the gateway\'s error code when the fetch fails', async () => {
    let seen: Context | undefined;
    const fetches = createBackgroundFetches({
      forward: async (ctx) => {
        seen = ctx;
        throw new GatewayError('upstream_unavailable', 'down');
      },
      tracer: trace.getTracer('test'),
      logger: memoryLogger('gateway').logger,
    });
    const trigger = triggerContext();
    trigger.req.method = 'HEAD';
    const outcome = await fetches.start(trigger, async () => ({}));
    expect(seen!.req.method).toBe('GET');
    expect(seen!.req.headers).toEqual({ host: 'gateway.example', accept: 'text/plain' });
    expect(outcome).toEqual({ ok: false, errorCode: 'upstream_unavailable' });
  });

  it('counts a fetch as under way until what its caller does with the answer is over, and starts none once the process is stopping', async () => {
    const work = createBackgroundWork();
    let stopping = false;
    let release!: () => void;
    const fetches = createBackgroundFetches({ forward: async () => {}, tracer: trace.getTracer('test'), logger: memoryLogger('gateway').logger, work, stopping: () => stopping });
    let settled = false;
    const outcome = fetches.start(triggerContext(), async () => ({}), () => new Promise<void>((resolve) => (release = resolve)).then(() => void (settled = true)));
    await expect(outcome).resolves.toEqual({ ok: true });
    expect(await work.settled(50)).toBe(1);
    release();
    expect(await work.settled(1_000)).toBe(true);
    expect(settled).toBe(true);
    stopping = true;
    expect(fetches.start(triggerContext(), async () => ({}))).toBeUndefined();
  });

  it('settles a fetch whose preparation failed as a failure and gives its place back, never rejecting', async () => {
    const forwarded: Context[] = [];
    const fetches = createBackgroundFetches({
      forward: async (ctx) => void forwarded.push(ctx),
      tracer: trace.getTracer('test'),
      logger: memoryLogger('gateway').logger,
      maxConcurrent: 1,
    });
    const failed = fetches.start(triggerContext(), () => Promise.reject(new Error('store gone')));
    await expect(failed).resolves.toEqual({ ok: false, errorCode: 'internal' });
    expect(forwarded).toHaveLength(0);
    await expect(fetches.start(triggerContext(), async () => ({}))).resolves.toEqual({ ok: true });
    expect(forwarded).toHaveLength(1);
  });
});
