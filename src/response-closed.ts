import type { Context } from 'koa';

/**
 * Runs `callback` once the response is really over (finished, or aborted by the client), after the callbacks
 * registered before it. Tracing, the access log and the metrics each wait for that moment on every request;
 * sharing one 'close' listener per response instead of adding one each keeps that per-request cost flat.
 */
export function onResponseClosed(ctx: Context, callback: () => void): void {
  const callbacks = ctx.state.onResponseClosed;
  if (callbacks !== undefined) {
    callbacks.push(callback);
    return;
  }
  const registered = [callback];
  ctx.state.onResponseClosed = registered;
  ctx.res.once('close', () => {
    for (const each of registered) each();
  });
}
