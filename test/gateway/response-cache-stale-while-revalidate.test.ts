import type http from 'node:http';
import { SpanKind } from '@opentelemetry/api';
import { ATTR } from '../../otel/wire-names';
import { BACKGROUND_FETCH_MESSAGE, BACKGROUND_FETCH_SPAN } from '../../src/cache-background-fetch';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { listen, sendRaw, type RawReply, type TestServer } from '../helpers/servers';
import { startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';

/**
 * stale-while-revalidate (RFC 5861 3) as the response cache acts on it: a stale copy within the window answers
 * at once, and one fetch of the cache's own, through the proxy, gets the next copy.
 */

interface Answer {
  status?: number;
  headers?: Record<string, string>;
  body?: string;
}

interface HeldOrigin extends TestServer {
  seen: { url: string; headers: http.IncomingHttpHeaders }[];
  /** Answers for a path in turn (the last repeats); one returning a promise holds the request until it settles. */
  script(path: string, ...answers: ((request: http.IncomingMessage) => Answer | Promise<Answer>)[]): void;
}

async function heldOrigin(): Promise<HeldOrigin> {
  const seen: HeldOrigin['seen'] = [];
  const scripts = new Map<string, ((request: http.IncomingMessage) => Answer | Promise<Answer>)[]>();
  const server = await listen((req, res) => {
    seen.push({ url: req.url ?? '', headers: { ...req.headers } });
    req.resume();
    req.on('end', async () => {
      const answers = scripts.get(req.url ?? '') ?? [(): Answer => ({ status: 404 })];
      const answer = await (answers.length > 1 ? answers.shift()! : answers[0]!)(req);
      res.writeHead(answer.status ?? 200, { 'content-type': 'text/plain', ...answer.headers });
      res.end(answer.status === 304 ? undefined : (answer.body ?? ''));
    });
  });
  return Object.assign(server, { seen, script: (path: string, ...answers: ((request: http.IncomingMessage) => Answer | Promise<Answer>)[]) => void scripts.set(`/swr${path}`, answers) });
}

/** A promise and what settles it. */
function gate(): { opened: Promise<void>; open: () => void } {
  let open!: () => void;
  return { opened: new Promise<void>((resolve) => (open = resolve)), open };
}

let unique = 0;
const fresh = () => `/item-${++unique}`;

describe('response cache under stale-while-revalidate (RFC 5861 3)', () => {
  let origin: HeldOrigin;
  let stack: TestStack;
  let tracing: InMemoryTracing;
  const get = (path: string, headers: http.OutgoingHttpHeaders = {}, method = 'GET'): Promise<RawReply> => sendRaw(stack.gateway.url, `/api/swr${path}`, headers, method);
  const seenFor = (path: string) => origin.seen.filter((each) => each.url === `/swr${path}`);
  /** Stale as it arrives (Age past max-age), so the next request meets a stale copy without waiting for the clock. */
  const staleOnArrival = (more: Record<string, string> = {}): Answer => ({ headers: { 'cache-control': 'max-age=1, stale-while-revalidate=600', age: '5', ...more }, body: 'the stale body' });

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    origin = await heldOrigin();
    stack = await startStack({
      serviceUrls: { notifications: origin.url },
      overrides: {
        routes: [...(shippedConfigFile().routes as unknown[]), { name: 'swr', prefix: '/api/swr', service: 'notifications', upstreamPath: '/swr', auth: 'public', cache: { ttlSeconds: 60, scope: 'public' } }],
        rateLimit: { max: 10_000, windowMs: 60_000 },
      },
      tracer: tracing.tracer,
    });
  });
  afterAll(async () => {
    await stack.close();
    await origin.close();
    await tracing.shutdown();
  });

  it('answers concurrent requests from the stale copy at once (STALE, with Age, no Warning) while one background fetch gets the next copy', async () => {
    const path = fresh();
    const held = gate();
    origin.script(path, () => staleOnArrival(), async () => {
      await held.opened;
      return { headers: { 'cache-control': 'max-age=600' }, body: 'the new body' };
    });
    expect((await get(path)).headers['x-cache']).toBe('MISS');
    // Answered while the service still holds the background fetch: none of them waited for it.
    const answers = await Promise.all([1, 2, 3, 4, 5].map(() => get(path)));
    for (const answer of answers) {
      expect([answer.status, answer.headers['x-cache'], answer.text, answer.headers.warning]).toEqual([200, 'STALE', 'the stale body', undefined]);
      expect(Number(answer.headers.age)).toBeGreaterThanOrEqual(5);
    }
    expect(seenFor(path)).toHaveLength(2);
    held.open();
    await waitFor(async () => (await get(path)).text === 'the new body', 'the background fetch\'s copy');
    const next = await get(path);
    expect([next.headers['x-cache'], next.text]).toEqual(['HIT', 'the new body']);
    expect(seenFor(path)).toHaveLength(2);
  });

  // The service took longer than the answer's max-age: the copy was stale as it was stored, and each request that had
  // waited for that fetch went to the service again (MISS), twice the wait for a copy stale-while-revalidate allows.
  it('answers a request that waited for a fetch from its copy, stale on arrival, within stale-while-revalidate', async () => {
    const path = fresh();
    const held = gate();
    origin.script(
      path,
      async () => {
        await held.opened;
        return staleOnArrival();
      },
      () => ({ headers: { 'cache-control': 'max-age=600' }, body: 'the new body' }),
    );
    const waits = () => stack.gatewayLogs.filter((line) => line.message === 'response cache: waiting for a fetch in flight').length;
    const before = waits();
    const first = get(path);
    await waitFor(() => seenFor(path).length === 1, 'the first fetch at the service');
    const waiter = get(path);
    await waitFor(() => waits() === before + 1, 'the second request to wait for the first fetch');
    held.open();
    expect((await first).headers['x-cache']).toBe('MISS');
    const waited = await waiter;
    expect([waited.status, waited.headers['x-cache'], waited.text]).toEqual([200, 'STALE', 'the stale body']);
  });

  it('revalidates in the background with the stale copy\'s validators, and a 304 refreshes it', async () => {
    const path = fresh();
    origin.script(path, () => staleOnArrival({ etag: '"v1"', 'x-version': 'first' }), () => ({ status: 304, headers: { etag: '"v1"', 'cache-control': 'max-age=600', 'x-version': 'refreshed' } }));
    await get(path);
    expect((await get(path)).headers['x-cache']).toBe('STALE');
    await waitFor(async () => (await get(path)).headers['x-cache'] === 'HIT', 'the refreshed copy');
    const refreshed = await get(path);
    expect([refreshed.text, refreshed.headers['x-version'], refreshed.headers['cache-control']]).toEqual(['the stale body', 'refreshed', 'max-age=600']);
    const asked = seenFor(path);
    expect(asked).toHaveLength(2);
    expect(asked[1]!.headers['if-none-match']).toBe('"v1"');
  });

  // The fetch is the cache's own request. Sent with the trigger's `no-store`, the service was told not to have its
  // answer stored, and the cache stored it all the same (RFC 9111 5.2.1.5); with `only-if-cached`, a cache in front
  // of the service answered the fetch 504.
  it.each([
    { directive: 'no-store', headers: { 'cache-control': 'no-store', pragma: 'no-cache' } },
    { directive: 'only-if-cached', headers: { 'cache-control': 'only-if-cached' } },
  ])("sends the background fetch without the triggering request's cache directives ($directive)", async ({ headers }) => {
    const path = fresh();
    origin.script(path, () => staleOnArrival(), () => ({ headers: { 'cache-control': 'max-age=600' }, body: 'the new body' }));
    await get(path);
    expect((await get(path, headers)).headers['x-cache']).toBe('STALE');
    await waitFor(() => seenFor(path).length === 2, 'the background fetch');
    const fetched = seenFor(path)[1]!.headers;
    expect({ cacheControl: fetched['cache-control'], pragma: fetched.pragma }).toEqual({ cacheControl: undefined, pragma: undefined });
    await waitFor(async () => (await get(path)).text === 'the new body', "the background fetch's copy");
  });

  it('keeps answering from the copy when the background fetch fails, and traces and logs that fetch on its own, linked to the request that caused it', async () => {
    const path = fresh();
    origin.script(path, () => staleOnArrival(), () => ({ status: 503, body: 'down' }));
    await get(path);
    const trigger = await get(path, { 'x-request-id': 'swr-trigger-1' });
    expect(trigger.headers['x-cache']).toBe('STALE');
    const line = () => stack.gatewayLogs.find((each) => each.message === BACKGROUND_FETCH_MESSAGE && each.url === `/api/swr${path}`);
    await waitFor(() => line() !== undefined, 'the background fetch\'s log line');
    expect(line()).toMatchObject({ method: 'GET', status: 503, route: 'swr' });
    // Its failure left the copy: the next request is still answered from it (and starts one more fetch).
    const after = await get(path);
    expect([after.status, after.headers['x-cache'], after.text]).toEqual([200, 'STALE', 'the stale body']);

    const triggerServer = () => tracing.spans().find((span) => span.kind === SpanKind.SERVER && span.attributes[ATTR.requestId] === 'swr-trigger-1');
    const background = () => tracing.spans().find((span) => span.name === BACKGROUND_FETCH_SPAN && span.links.some((link) => link.context.spanId === triggerServer()?.spanContext().spanId));
    await waitFor(() => background() !== undefined, 'the background fetch\'s span');
    const own = background()!.spanContext();
    // A trace of its own, not the client's (whose request was over before it), with the proxy's CLIENT span under it.
    expect(own.traceId).not.toBe(triggerServer()!.spanContext().traceId);
    expect(tracing.spans().some((span) => span.kind === SpanKind.CLIENT && span.parentSpanContext?.spanId === own.spanId)).toBe(true);
    expect(stack.gatewayLogs.some((each) => each.message === BACKGROUND_FETCH_MESSAGE && each.trace_id === own.traceId)).toBe(true);
    // From the client's trace to the fetch's: the triggering span names the trace the fetch went on in.
    expect(triggerServer()!.events.find((event) => event.name === BACKGROUND_FETCH_SPAN)?.attributes).toEqual({ [ATTR.cacheBackgroundFetchTraceId]: own.traceId });
  });

  // Its log line wrote the trigger's URL as sent, a query's secrets included (the access line redacts them), and its
  // spans and the service's had no request id: no baggage went with it.
  it("logs the fetch's URL with its secrets redacted, and carries its request id on its spans and to the service", async () => {
    const path = fresh();
    origin.script(`${path}?api_key=SECRET1&x=1`, () => staleOnArrival(), () => ({ headers: { 'cache-control': 'max-age=600' }, body: 'the new body' }));
    await get(`${path}?api_key=SECRET1&x=1`);
    expect((await get(`${path}?api_key=SECRET1&x=1`)).headers['x-cache']).toBe('STALE');
    const line = () => stack.gatewayLogs.find((each) => each.message === BACKGROUND_FETCH_MESSAGE && String(each.url).startsWith(`/api/swr${path}?`));
    await waitFor(() => line() !== undefined, "the background fetch's log line");
    expect(line()!.url).toBe(`/api/swr${path}?api_key=REDACTED&x=1`);
    const requestId = String(line()!.request_id);
    const fetchSpan = () => tracing.spans().find((span) => span.name === BACKGROUND_FETCH_SPAN && span.spanContext().traceId === requestId);
    await waitFor(() => fetchSpan() !== undefined, "the fetch's span");
    expect(fetchSpan()!.attributes[ATTR.requestId]).toBe(requestId);
    // As baggage, as a request's id travels: the SDK's RequestIdSpanProcessor puts it on the CLIENT span and the
    // service's spans, and the service's log lines carry it.
    const asked = origin.seen.filter((each) => each.url.startsWith(`/swr${path}?`));
    expect(asked.at(-1)!.headers.baggage).toBe(`request.id=${requestId}`);
  });

  it('answers a HEAD from the stale copy and fetches the GET in the background', async () => {
    const path = fresh();
    origin.script(path, () => staleOnArrival(), () => ({ headers: { 'cache-control': 'max-age=600' }, body: 'the new body' }));
    await get(path);
    const head = await get(path, {}, 'HEAD');
    expect([head.status, head.headers['x-cache'], head.text]).toEqual([200, 'STALE', '']);
    await waitFor(async () => (await get(path)).text === 'the new body', 'the background fetch\'s copy');
    expect(seenFor(path).map((each) => each.url)).toHaveLength(2);
  });

  it('fetches in the foreground once the window is over, as for any stale copy', async () => {
    const path = fresh();
    origin.script(path, () => ({ headers: { 'cache-control': 'max-age=1, stale-while-revalidate=10', age: '5', etag: '"old"' }, body: 'old' }), () => ({ headers: { 'cache-control': 'max-age=600' }, body: 'new' }));
    await get(path);
    // Age 5 of max-age 1 and a 10 s window: within it. With `age: 15` it would be over; shown with the next path.
    expect((await get(path)).headers['x-cache']).toBe('STALE');
    const over = fresh();
    origin.script(over, () => ({ headers: { 'cache-control': 'max-age=1, stale-while-revalidate=10', age: '15', etag: '"old"' }, body: 'old' }), () => ({ headers: { 'cache-control': 'max-age=600' }, body: 'new' }));
    await get(over);
    const foreground = await get(over);
    expect([foreground.headers['x-cache'], foreground.text]).toEqual(['MISS', 'new']);
  });

  it.each([
    { desc: 'must-revalidate', cc: 'max-age=1, must-revalidate, stale-while-revalidate=600' },
    { desc: 's-maxage (proxy-revalidate for a shared cache)', cc: 's-maxage=1, stale-while-revalidate=600' },
    { desc: 'no-cache', cc: 'no-cache, stale-while-revalidate=600' },
  ])('never answers stale under stale-while-revalidate with $desc (RFC 9111 4.2.4)', async ({ cc }) => {
    const path = fresh();
    origin.script(path, () => ({ headers: { 'cache-control': cc, age: '5', etag: '"e"' }, body: 'old' }), () => ({ headers: { 'cache-control': 'max-age=600', etag: '"f"' }, body: 'new' }));
    await get(path);
    const next = await get(path);
    expect([next.headers['x-cache'], next.text]).toEqual(['MISS', 'new']);
  });
});
