import net from 'node:net';
import { SpanKind } from '@opentelemetry/api';
import { ATTR_HTTP_REQUEST_RESEND_COUNT } from '@opentelemetry/semantic-conventions';
import { ATTR } from '../../otel/wire-names';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { listen, refusedOrigin as deadOrigin, type TestServer } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';
import { waitFor } from '../helpers/wait';

/** An order-service stand-in that says which instance answered. */
async function instance(name: string): Promise<TestServer & { hits: number }> {
  const server = await listen((req, res) => {
    counter.hits++;
    req.resume();
    req.on('end', () => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ instance: name }));
    });
  });
  const counter = Object.assign(server, { hits: 0 });
  return counter;
}


describe('load balancing with passive health', () => {
  let tracing: InMemoryTracing;
  let a: Awaited<ReturnType<typeof instance>>;
  let b: Awaited<ReturnType<typeof instance>>;
  let dead: string;
  let stack: TestStack;
  let token: string;

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    a = await instance('a');
    b = await instance('b');
    dead = await deadOrigin();
    stack = await startStack({
      tracer: tracing.tracer,
      env: { RATE_LIMIT_MAX: '100000' },
      overrides: {
        services: {
          users: { url: 'http://placeholder' },
          notifications: { url: 'http://placeholder' },
          // orders: two live instances; notifications: one live (real service) and one dead.
          orders: { url: 'http://placeholder' },
        },
      },
      serviceUrls: { orders: `${a.url},${b.url}` },
    });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await Promise.all([a.close(), b.close()]);
    await tracing.shutdown();
  });

  const get = async (gatewayUrl: string, path: string, init: RequestInit = {}) => {
    const response = await fetch(`${gatewayUrl}${path}`, { ...init, headers: { authorization: `Bearer ${token}`, ...init.headers } });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  };

  it('spreads requests round robin over the instances of a service', async () => {
    const answers = [];
    for (let i = 0; i < 6; i++) answers.push((await get(stack.gateway.url, '/api/orders')).body.instance);
    expect(answers).toEqual(['a', 'b', 'a', 'b', 'a', 'b']);
  });

  describe('with one instance dead', () => {
    let withDead: TestStack;
    beforeAll(async () => {
      withDead = await startStack({
        tracer: tracing.tracer,
        env: { RATE_LIMIT_MAX: '100000' },
        overrides: { services: { users: { url: 'http://placeholder' }, orders: { url: 'http://placeholder', ejectAfterFailures: 2, ejectMs: 60_000 }, notifications: { url: 'http://placeholder' } } },
        serviceUrls: { orders: `${dead},${a.url}` },
      });
    });
    afterAll(() => withDead.close());

    it('retries an idempotent request on the next instance, visibly on the trace, and ejects the dead one', async () => {
      tracing.reset();
      const first = await get(withDead.gateway.url, '/api/orders');
      expect(first).toEqual({ status: 200, body: { instance: 'a' } });
      const clientSpans = tracing.spans().filter((span) => span.kind === SpanKind.CLIENT);
      // The retry's span is marked as the conventions' resend (`http.request.resend_count`, conditionally required
      // when the request was retried); the first attempt carries none.
      expect(clientSpans.map((span) => [span.attributes[ATTR.upstreamAttempts], span.attributes[ATTR.upstreamOutcome], span.attributes[ATTR_HTTP_REQUEST_RESEND_COUNT]])).toEqual([
        [1, 'refused', undefined],
        [2, 'ok', 1],
      ]);
      const server = tracing.spans().find((span) => span.kind === SpanKind.SERVER)!;
      expect(server.events.map((event) => event.name)).toEqual(['upstream retry']);
      expect(server.attributes[ATTR.upstreamAttempts]).toBe(2);

      // Second failure ejects it: later requests go straight to the live instance.
      await get(withDead.gateway.url, '/api/orders');
      await get(withDead.gateway.url, '/api/orders');
      tracing.reset();
      expect((await get(withDead.gateway.url, '/api/orders')).status).toBe(200);
      expect(tracing.spans().filter((span) => span.kind === SpanKind.CLIENT)).toHaveLength(1);

      // Instance details are on the internal listener only.
      const ready = await fetch(`${withDead.admin.url}/ready`);
      const body = (await ready.json()) as { services: { orders: { status: string; instances: { origin: string; state: string; probe: { status: string } }[] } } };
      expect(ready.status).toBe(200);
      expect(body.services.orders.status).toBe('up');
      expect(body.services.orders.instances).toEqual([
        expect.objectContaining({ origin: dead, state: 'ejected', probe: expect.objectContaining({ status: 'down' }) }),
        expect.objectContaining({ origin: a.url, state: 'healthy', probe: expect.objectContaining({ status: 'up' }) }),
      ]);
    });

    /** The dead instance and `a`, the dead one never ejected: every other request meets it. */
    const deadThenLive = (proxy: Record<string, unknown> = {}) =>
      startStack({
        env: { RATE_LIMIT_MAX: '100000' },
        overrides: { proxy, services: { users: { url: 'http://placeholder' }, orders: { url: 'http://placeholder', ejectAfterFailures: 100 }, notifications: { url: 'http://placeholder' } } },
        serviceUrls: { orders: `${dead},${a.url}` },
      });

    // Nothing of a request whose connection was refused reached any service: nginx moves it on too, whatever its method.
    // It alternated 502 upstream_refused and 200 while the dead instance was still counted healthy.
    it('moves a request without a body on to the next instance when its connection was refused, whatever its method', async () => {
      const fresh = await deadThenLive();
      try {
        const before = a.hits;
        for (const method of ['POST', 'PATCH', 'POST', 'PATCH']) expect(await get(fresh.gateway.url, '/api/orders', { method })).toEqual({ status: 200, body: { instance: 'a' } });
        expect(a.hits - before).toBe(4);
      } finally {
        await fresh.close();
      }
    });

    // The gateway holds the whole body (proxy.requestBufferBytes), so it can send it again, as nginx does with a
    // buffered body; the client got 502 upstream_refused for a request the other instance would have taken.
    it('moves a request whose body it read whole on to the next instance when its connection was refused', async () => {
      const fresh = await deadThenLive({ requestBufferBytes: 64 });
      try {
        const before = a.hits;
        const bodies = ['{"items":[]}', 'x'.repeat(64)];
        for (const body of [...bodies, ...bodies]) expect(await get(fresh.gateway.url, '/api/orders', { method: 'POST', headers: { 'content-type': 'application/json' }, body })).toEqual({ status: 200, body: { instance: 'a' } });
        expect(a.hits - before).toBe(4);
      } finally {
        await fresh.close();
      }
    });

    it.each([
      ['longer than proxy.requestBufferBytes', 64, 'x'.repeat(65)],
      ['with no body read ahead (proxy.requestBufferBytes 0)', 0, '{"items":[]}'],
    ])('never retries a request whose body streams (%s)', async (_name, requestBufferBytes, body) => {
      const fresh = await deadThenLive({ requestBufferBytes });
      try {
        const before = a.hits;
        // Round robin alternates over the two instances, so whichever it starts at, one of two POSTs goes to the
        // dead one first; retried, it would reach `a` too and both would answer 200 from `a`.
        const posts = [];
        for (let i = 0; i < 2; i++) posts.push(await get(fresh.gateway.url, '/api/orders', { method: 'POST', headers: { 'content-type': 'application/json' }, body }));
        const answeredByA = posts.filter((each) => each.status === 200 && each.body.instance === 'a');
        expect(answeredByA).toHaveLength(1);
        const post = posts.find((each) => !answeredByA.includes(each))!;
        expect(post.status).toBe(502);
        expect(post.body.code).toBe('upstream_refused');
        expect(a.hits).toBe(before + answeredByA.length);
      } finally {
        await fresh.close();
      }
    });
  });

  // Round robin gave a slow instance its share all the same: queued behind its busy connections until they timed out
  // (503 upstream_busy), while the other instance answered in milliseconds.
  it('passes over an instance whose connections are all busy while another has a free one', async () => {
    const held: (() => void)[] = [];
    let slowReceived = 0;
    const slow = await listen((req, res) => {
      slowReceived++;
      req.resume();
      held.push(() => res.end(JSON.stringify({ instance: 'slow' })));
    });
    const busy = await startStack({
      env: { RATE_LIMIT_MAX: '100000' },
      overrides: { proxy: { timeoutMs: 3000, maxSockets: 2 }, services: { users: { url: 'http://placeholder' }, orders: { url: 'http://placeholder' }, notifications: { url: 'http://placeholder' } } },
      serviceUrls: { orders: `${slow.url},${b.url}` },
    });
    try {
      // Round robin: the slow instance takes every other request until its two connections are held.
      const pending: Promise<unknown>[] = [];
      while (slowReceived < 2) {
        const seen = slowReceived + b.hits;
        pending.push(fetch(`${busy.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } }));
        await waitFor(() => slowReceived + b.hits > seen, 'the request to reach an instance');
      }
      const before = b.hits;
      for (let i = 0; i < 4; i++) expect(await get(busy.gateway.url, '/api/orders')).toEqual({ status: 200, body: { instance: 'b' } });
      expect(b.hits - before).toBe(4);
      expect(slowReceived).toBe(2);
      held.forEach((release) => release());
      await Promise.all(pending);
    } finally {
      held.forEach((release) => release());
      await busy.close();
      await slow.close();
    }
  });

  // A service with one instance, restarted, answered 503 for the whole ejectMs (here a minute) after it was back.
  it('tries an ejected instance again a second later while no instance is healthy, and takes it back when it answers', async () => {
    const port = await new Promise<number>((resolve) => {
      const probe = net.createServer().listen(0, '127.0.0.1', () => {
        const { port: free } = probe.address() as net.AddressInfo;
        probe.close(() => resolve(free));
      });
    });
    const restarted = await startStack({
      env: { RATE_LIMIT_MAX: '100000' },
      overrides: { services: { users: { url: 'http://placeholder' }, orders: { url: 'http://placeholder', ejectAfterFailures: 1, ejectMs: 60_000 }, notifications: { url: 'http://placeholder' } } },
      serviceUrls: { orders: `http://127.0.0.1:${port}` },
    });
    let back: TestServer | undefined;
    try {
      expect((await get(restarted.gateway.url, '/api/orders')).status).toBe(502);
      // Ejected: the next requests are answered at once, without a try.
      expect((await get(restarted.gateway.url, '/api/orders')).body).toMatchObject({ code: 'upstream_unavailable' });
      back = await listen((req, res) => {
        req.resume();
        res.end(JSON.stringify({ instance: 'back' }));
      }, port);
      let answer: Awaited<ReturnType<typeof get>> | undefined;
      await waitFor(async () => (answer = await get(restarted.gateway.url, '/api/orders')).status === 200, 'the instance to be tried and taken back', 5000);
      expect(answer!.body).toEqual({ instance: 'back' });
      // Taken back whole: every request goes to it now.
      for (let i = 0; i < 3; i++) expect((await get(restarted.gateway.url, '/api/orders')).status).toBe(200);
    } finally {
      await restarted.close();
      await back?.close();
    }
  });

  it('answers 503 only once no instance is healthy', async () => {
    const allDead = await startStack({
      env: { RATE_LIMIT_MAX: '100000' },
      overrides: { services: { users: { url: 'http://placeholder' }, orders: { url: 'http://placeholder', ejectAfterFailures: 1, ejectMs: 60_000 }, notifications: { url: 'http://placeholder' } } },
      serviceUrls: { orders: `${dead},${await deadOrigin()}` },
    });
    try {
      const first = await get(allDead.gateway.url, '/api/orders');
      expect(first.status).toBe(502);
      const then = await get(allDead.gateway.url, '/api/orders');
      expect(then.status).toBe(503);
      expect(then.body).toMatchObject({ code: 'upstream_unavailable', status: 503 });
    } finally {
      await allDead.close();
    }
  });
});
