import { GATEWAY_SCHEMA_URL } from '../../otel/gateway-tracer';
import { SERVICE_NAME, ATTR, HEADER, LOG_FIELD } from '../../otel/wire-names';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan, type ReceivedTelemetry } from '../helpers/otlp-receiver';
import { startProcessStack, type ProcessStack } from '../helpers/process-stack';

/**
 * The product's first promise, black box: the gateway and the three services as real processes exporting
 * OTLP (what the exporters really send) to a receiver; one request id finds one trace and every log line.
 */
const FAST_EXPORT = { OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_BLRP_SCHEDULE_DELAY: '100', OTEL_TRACES_SAMPLER: 'always_on' };
const ALL_SERVICES = Object.values(SERVICE_NAME);

describe('one id from curl to trace to logs', () => {
  let receiver: OtlpReceiver;
  let stack: ProcessStack;
  let token: string;
  const password = 'wonderland';

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    stack = await startProcessStack({ ...FAST_EXPORT, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url });
    const login = await fetch(`${stack.gatewayUrl}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password }) });
    expect(login.status).toBe(200);
    token = ((await login.json()) as { token: string }).token;
  });
  afterAll(async () => {
    await stack?.stop('SIGKILL');
    await receiver?.close();
  });

  async function createOrder(headers: Record<string, string> = {}) {
    const response = await fetch(`${stack.gatewayUrl}/api/orders`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ items: [{ sku: 'book-42', quantity: 1 }] }),
    });
    expect(response.status).toBe(201);
    return response.headers.get(HEADER.requestId)!;
  }

  it('makes POST /api/orders one trace across all four services, with correct parents and request.id on every span', async () => {
    const requestId = await createOrder();
    expect(requestId).toMatch(/^[0-9a-f]{32}$/);
    const { spans } = await receiver.waitFor(({ spans }) => {
      const trace = spans.filter((span) => span.traceId === requestId);
      return ALL_SERVICES.every((service) => trace.some((span) => span.serviceName === service && span.kind === 'SERVER'));
    }, 15_000);
    const trace = spans.filter((span) => span.traceId === requestId);
    const byId = new Map(trace.map((span) => [span.spanId, span]));
    const parentOf = (span: ReceivedSpan) => byId.get(span.parentSpanId ?? '');
    const server = (service: string, path: string) => trace.find((span) => span.serviceName === service && span.kind === 'SERVER' && span.attributes['url.path'] === path)!;

    // The gateway's server span: root, named after its route, with user, route and upstream outcome.
    const gateway = server(SERVICE_NAME.gateway, '/api/orders');
    expect(gateway.parentSpanId ?? '').toBe('');
    expect(gateway.name).toBe('POST /api/orders/*');
    expect(gateway.attributes).toMatchObject({ 'http.route': '/api/orders/*', [ATTR.userId]: '1', [ATTR.routeName]: 'orders', [ATTR.upstreamService]: 'orders', [ATTR.upstreamOutcome]: 'ok' });
    // Its scope names the gateway's version and the semantic conventions its spans follow (the schema URL).
    expect(gateway.scope).toEqual({ name: 'koa-gateway', version: expect.stringMatching(/^\d+\.\d+\.\d+/), schemaUrl: GATEWAY_SCHEMA_URL });

    // gateway CLIENT -> order-service SERVER
    const orders = server(SERVICE_NAME.orders, '/orders');
    expect(parentOf(orders)).toMatchObject({ serviceName: SERVICE_NAME.gateway, kind: 'CLIENT' });
    expect(parentOf(parentOf(orders)!)?.spanId).toBe(gateway.spanId);

    // order-service -> user-service directly: the user-service span is a child of an order-service span.
    const users = server(SERVICE_NAME.users, '/users/1');
    const usersParent = parentOf(users)!;
    expect(usersParent).toMatchObject({ serviceName: SERVICE_NAME.orders, kind: 'CLIENT' });
    // ...whose ancestors lead back to order-service's server span.
    let ancestor: ReceivedSpan | undefined = usersParent;
    while (ancestor && ancestor.spanId !== orders.spanId) ancestor = parentOf(ancestor);
    expect(ancestor?.spanId).toBe(orders.spanId);

    const notifications = server(SERVICE_NAME.notifications, '/internal/notifications');
    expect(parentOf(notifications)).toMatchObject({ serviceName: SERVICE_NAME.orders, kind: 'CLIENT' });

    // Every span carries the request id; the ones that do not are listed by service and name.
    const withoutRequestId = trace.filter((span) => span.attributes[ATTR.requestId] !== requestId).map((span) => `${span.serviceName} ${span.kind} "${span.name}": ${String(span.attributes[ATTR.requestId])}`);
    expect(withoutRequestId).toEqual([]);
    expect(new Set(trace.map((span) => span.serviceName))).toEqual(new Set(ALL_SERVICES));
  });

  it('exports log records from all four processes with the same trace id and request id', async () => {
    const requestId = await createOrder();
    const { logs } = await receiver.waitFor(({ logs }) => ALL_SERVICES.every((service) => logs.some((log) => log.serviceName === service && log.traceId === requestId)), 15_000);
    const mine = logs.filter((log) => log.traceId === requestId);
    for (const log of mine) {
      expect(log.attributes[LOG_FIELD.requestId]).toBe(requestId);
      expect(log.spanId).toMatch(/^[0-9a-f]{16}$/);
    }
    const access = mine.find((log) => log.serviceName === SERVICE_NAME.gateway && log.body === 'request completed')!;
    expect(access.attributes).toMatchObject({ method: 'POST', status: 201, route: 'orders', user_id: '1' });
    // The same lines on stdout carry trace_id, span_id, request_id and service.name.
    for (const running of stack.processes) {
      const line = running.lines.find((entry) => entry[LOG_FIELD.traceId] === requestId);
      expect(line).toMatchObject({ [LOG_FIELD.requestId]: requestId, [LOG_FIELD.serviceName]: running.name, level: expect.any(String), message: expect.any(String) });
      expect(line![LOG_FIELD.spanId]).toMatch(/^[0-9a-f]{16}$/);
    }
  });

  it('maps a client UUID request id onto the trace id and carries the UUID everywhere', async () => {
    const clientId = '3f2b8c4e-1d6a-4e8b-9c0d-7a6b5c4d3e2f';
    expect(await createOrder({ [HEADER.requestId]: clientId })).toBe(clientId);
    const traceId = clientId.replaceAll('-', '');
    const { spans } = await receiver.waitFor(({ spans }) => ALL_SERVICES.every((service) => spans.some((span) => span.traceId === traceId && span.serviceName === service)), 15_000);
    for (const span of spans.filter((each) => each.traceId === traceId)) expect(span.attributes[ATTR.requestId]).toBe(clientId);
    await receiver.waitFor(({ logs }) => logs.some((log) => log.traceId === traceId && log.attributes[LOG_FIELD.requestId] === clientId), 15_000);
  });

  it('puts no token, password or Authorization value in any exported attribute or log', async () => {
    // A login of its own (the password's request) and an order (the token's), each waited for until all its
    // spans and log records are in and every process printed its lines: only then can their absence be checked.
    const loggedIn = await fetch(`${stack.gatewayUrl}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password }) });
    expect(loggedIn.status).toBe(200);
    const freshToken = ((await loggedIn.json()) as { token: string }).token;
    const loginId = loggedIn.headers.get(HEADER.requestId)!;
    const orderId = await createOrder();
    const loginServices = [SERVICE_NAME.gateway, SERVICE_NAME.users];
    const arrived = (services: string[], traceId: string) => ({ spans, logs }: ReceivedTelemetry) =>
      services.every((service) => spans.some((span) => span.traceId === traceId && span.serviceName === service && span.kind === 'SERVER') && logs.some((log) => log.traceId === traceId && log.serviceName === service));
    await receiver.waitFor((received) => arrived(loginServices, loginId)(received) && arrived(ALL_SERVICES, orderId)(received), 15_000);
    const printedBy = (names: string[], traceId: string) => stack.processes.filter((running) => names.includes(running.name)).every((running) => running.lines.some((line) => line[LOG_FIELD.traceId] === traceId));
    for (let i = 0; i < 100 && !(printedBy(loginServices, loginId) && printedBy(ALL_SERVICES, orderId)); i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(printedBy(loginServices, loginId) && printedBy(ALL_SERVICES, orderId)).toBe(true);
    const exported = JSON.stringify({ spans: receiver.spans(), logs: receiver.logs() });
    const printed = JSON.stringify(stack.processes.map((running) => running.lines));
    for (const secret of [token, token.split('.')[2]!, password, `Bearer ${token}`, freshToken, freshToken.split('.')[2]!]) {
      expect(exported).not.toContain(secret);
      expect(printed).not.toContain(secret);
    }
    expect(exported.toLowerCase()).not.toContain('authorization');
  });

  it('exports no query secret the access log redacts: not in the gateway\'s url.full, not in a service\'s url.query', async () => {
    const secrets = ['QS-TOKEN-1', 'QS-PASSWORD-2', 'QS-ENCODED-3'];
    const response = await fetch(`${stack.gatewayUrl}/api/orders?access_token=${secrets[0]}&PassWord=${secrets[1]}&%70assword=${secrets[2]}&page=2`, { headers: { authorization: `Bearer ${token}` } });
    expect(response.status).toBe(200);
    const traceId = response.headers.get(HEADER.requestId)!;
    const serverOf = (service: string) => (spans: ReceivedTelemetry['spans']) => spans.find((span) => span.traceId === traceId && span.serviceName === service && span.kind === 'SERVER');
    // The gateway's SERVER span too (it carries url.query, and ends after its CLIENT span: a batch later, maybe).
    const { spans } = await receiver.waitFor(
      ({ spans }) => serverOf(SERVICE_NAME.orders)(spans) !== undefined && serverOf(SERVICE_NAME.gateway)(spans) !== undefined && spans.some((span) => span.traceId === traceId && span.kind === 'CLIENT' && span.serviceName === SERVICE_NAME.gateway),
      15_000,
    );
    // Still there, with the values gone (the query is what the service heard, so it stays worth reading).
    expect(serverOf(SERVICE_NAME.orders)(spans)!.attributes['url.query']).toBe('access_token=REDACTED&PassWord=REDACTED&%70assword=REDACTED&page=2');
    expect(serverOf(SERVICE_NAME.gateway)(spans)!.attributes['url.query']).toBe('access_token=REDACTED&PassWord=REDACTED&%70assword=REDACTED&page=2');
    const exported = JSON.stringify(receiver.spans().filter((span) => span.traceId === traceId));
    for (const secret of secrets) expect(exported).not.toContain(secret);
  });

  // Known by their shape, or carried in a value's own query: in the path and the query of every process's spans.
  it("exports no token in a path nor a redirect's own secret, in the gateway's spans or a service's", async () => {
    const jwt = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWdpYy1saW5rIn0.TUFHSUMtU0lHTkFUVVJF';
    const response = await fetch(`${stack.gatewayUrl}/api/orders/${jwt}?next=%2Fcb%3Faccess_token%3DNESTED-SECRET-4&page=2`, { headers: { authorization: `Bearer ${token}` } });
    expect(response.status).toBe(404);
    const traceId = response.headers.get(HEADER.requestId)!;
    const serverOf = (service: string) => (spans: ReceivedTelemetry['spans']) => spans.find((span) => span.traceId === traceId && span.serviceName === service && span.kind === 'SERVER');
    const { spans } = await receiver.waitFor(({ spans }) => serverOf(SERVICE_NAME.orders)(spans) !== undefined && serverOf(SERVICE_NAME.gateway)(spans) !== undefined, 15_000);
    for (const service of [SERVICE_NAME.gateway, SERVICE_NAME.orders]) {
      expect(serverOf(service)(spans)!.attributes['url.query']).toBe('next=REDACTED&page=2');
    }
    expect(serverOf(SERVICE_NAME.gateway)(spans)!.attributes['url.path']).toBe('/api/orders/REDACTED');
    expect(serverOf(SERVICE_NAME.orders)(spans)!.attributes['url.path']).toBe('/orders/REDACTED');
    // Nowhere in the request's spans (their attributes, and the exception events instrumentation-koa records with the
    // message of a service's 404, which named the id it was asked for) nor in its log records: order-service's access
    // line logged the whole path.
    const { logs } = await receiver.waitFor(({ logs }) => logs.some((log) => log.traceId === traceId && log.serviceName === SERVICE_NAME.orders && log.body === 'request handled'), 15_000);
    const exported = JSON.stringify([receiver.spans().filter((span) => span.traceId === traceId), logs.filter((log) => log.traceId === traceId)]);
    expect(exported).not.toContain(jwt.split('.')[2]!);
    expect(exported).not.toContain('NESTED-SECRET-4');
  });

  // A request a service does not believe (unsigned) is logged under an id of its own: its span must carry the same.
  it("puts the id a service answers an unsigned request under on that request's span", async () => {
    const users = stack.processes.find((each) => each.name === SERVICE_NAME.users)!;
    const response = await fetch(`${users.url}/users/1`, { headers: { [HEADER.requestId]: 'forged-id-1', [HEADER.userId]: '1', [HEADER.userRole]: 'admin' } });
    expect(response.status).toBe(401);
    const minted = response.headers.get(HEADER.requestId)!;
    expect(minted).not.toBe('forged-id-1');
    const { spans } = await receiver.waitFor(({ spans }) => spans.some((span) => span.serviceName === SERVICE_NAME.users && span.kind === 'SERVER' && span.attributes['http.response.status_code'] === 401 && span.attributes[ATTR.requestId] === minted), 5_000);
    expect(spans.filter((span) => span.attributes[ATTR.requestId] === 'forged-id-1')).toEqual([]);
  });
});

// W3C Trace Context: a participant passes on the traceparent it receives, whichever instrumentations it loaded. With
// order-service's SERVER instrumentation off (a documented opt-out), each call it made started a trace of its own.
describe('one trace when order-service runs without its http-server instrumentation', () => {
  let receiver: OtlpReceiver;
  let stack: ProcessStack;

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    stack = await startProcessStack({ ...FAST_EXPORT, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url }, { OTEL_NODE_DISABLED_INSTRUMENTATIONS: 'http-server' });
  });
  afterAll(async () => {
    await stack?.stop('SIGKILL');
    await receiver?.close();
  });

  it("keeps order-service's calls in the request's trace, under the gateway's span, with the request id", async () => {
    const login = await fetch(`${stack.gatewayUrl}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }) });
    const { token } = (await login.json()) as { token: string };
    const response = await fetch(`${stack.gatewayUrl}/api/orders`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ sku: 'book-42', quantity: 1 }] }) });
    expect(response.status).toBe(201);
    const requestId = response.headers.get(HEADER.requestId)!;
    const called = [SERVICE_NAME.users, SERVICE_NAME.notifications];
    const serverOf = (spans: readonly ReceivedSpan[], service: string) => spans.find((span) => span.serviceName === service && span.kind === 'SERVER' && span.attributes[ATTR.requestId] === requestId);
    /** The spans from a service's SERVER span up to the first of another process than order-service and that one. */
    const chainUp = (spans: readonly ReceivedSpan[], service: string): ReceivedSpan[] | undefined => {
      const byId = new Map(spans.map((span) => [span.spanId, span]));
      const chain: ReceivedSpan[] = [];
      for (let span = serverOf(spans, service); span !== undefined; span = byId.get(span.parentSpanId ?? '')) {
        chain.push(span);
        if (chain.length > 1 && span.serviceName !== SERVICE_NAME.orders) return chain;
      }
      return undefined;
    };
    // Every span up the chain exported (the Koa spans may come a batch later).
    const { spans } = await receiver.waitFor(({ spans }) => called.every((service) => chainUp(spans, service) !== undefined), 15_000);
    const gatewayClient = spans.find((span) => span.traceId === requestId && span.serviceName === SERVICE_NAME.gateway && span.kind === 'CLIENT')!;
    for (const service of called) {
      const chain = chainUp(spans, service)!;
      expect(chain.every((span) => span.traceId === requestId)).toBe(true);
      // Called by order-service's own CLIENT span, under its Koa spans, under the gateway's call to order-service.
      expect({ service: chain[1]!.serviceName, kind: chain[1]!.kind }).toEqual({ service: SERVICE_NAME.orders, kind: 'CLIENT' });
      expect(chain.at(-1)!.spanId).toBe(gatewayClient.spanId);
    }
  });

  // Answered unsigned, /health believes no caller: a peer's forged traceparent put its Koa spans in someone else's trace.
  it("continues no unsigned caller's trace context on /health", async () => {
    const forged = '4bf92f3577b34da6a3ce929d0e0e4736';
    const orders = stack.processes.find((each) => each.name === SERVICE_NAME.orders)!;
    expect((await fetch(`${orders.url}/health`, { headers: { traceparent: `00-${forged}-00f067aa0ba902b7-01` } })).status).toBe(200);
    // Then a request through the gateway: order-service exports its spans in the order they ended, so once this one's
    // are in, any the forged /health made are too.
    const login = await fetch(`${stack.gatewayUrl}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }) });
    const { token } = (await login.json()) as { token: string };
    const after = await fetch(`${stack.gatewayUrl}/api/orders`, { headers: { authorization: `Bearer ${token}` } });
    const afterId = after.headers.get(HEADER.requestId);
    await receiver.waitFor(({ spans }) => spans.some((span) => span.serviceName === SERVICE_NAME.orders && span.attributes[ATTR.requestId] === afterId), 15_000);
    expect(receiver.spans().filter((span) => span.traceId === forged)).toEqual([]);
  });
});

describe('telemetry never fails a request', () => {
  it.each([
    { desc: 'the collector is down', setup: async (receiver: OtlpReceiver) => receiver.close() },
    { desc: 'the collector takes 5 s per export', setup: async (receiver: OtlpReceiver) => receiver.setDelay(5000) },
  ])('serves login and orders unchanged when $desc', async ({ setup }) => {
    const receiver = await startOtlpReceiver();
    const endpoint = receiver.url;
    await setup(receiver);
    const stack = await startProcessStack({ ...FAST_EXPORT, OTEL_EXPORTER_OTLP_ENDPOINT: endpoint });
    try {
      for (let round = 0; round < 3; round++) {
        const login = await fetch(`${stack.gatewayUrl}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'bob@example.com', password: 'builder' }) });
        expect(login.status).toBe(200);
        const { token } = (await login.json()) as { token: string };
        const order = await fetch(`${stack.gatewayUrl}/api/orders`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ sku: 'x', quantity: 1 }] }) });
        expect(order.status).toBe(201);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    } finally {
      await stack.stop('SIGKILL');
      await receiver.close().catch(() => undefined);
    }
  });

  it('delivers the spans of the last requests when the processes get SIGTERM', async () => {
    const receiver = await startOtlpReceiver();
    // A long batch delay: only the shutdown flush can deliver these in time.
    const stack = await startProcessStack({ OTEL_BSP_SCHEDULE_DELAY: '60000', OTEL_BLRP_SCHEDULE_DELAY: '60000', OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url });
    try {
      const response = await fetch(`${stack.gatewayUrl}/api/nothing-here`);
      const requestId = response.headers.get(HEADER.requestId)!;
      expect(response.status).toBe(404);
      expect(receiver.spans().filter((span) => span.traceId === requestId)).toEqual([]);
      const codes = await stack.stop('SIGTERM');
      expect(codes).toEqual([0, 0, 0, 0]);
      expect(receiver.spans().filter((span) => span.traceId === requestId).map((span) => span.name)).toEqual(['GET']);
      expect(receiver.logs().some((log) => log.traceId === requestId && log.body === 'request completed')).toBe(true);
    } finally {
      await stack.stop('SIGKILL');
      await receiver.close();
    }
  });
});
