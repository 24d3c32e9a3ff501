import type http from 'node:http';
import * as grpc from '@grpc/grpc-js';
import { createGatewaySigner, type SignedValues } from '../../src/gateway-signature';
import { createApp as createNotificationsApp } from '../../services/notifications/app';
import { NOTIFICATIONS_PROTO, NOTIFICATIONS_SERVICE } from '../../services/notifications/grpc-server';
import { bindGrpcServer, grpcServiceDefinition } from '../../services/shared/grpc-service';
import { createApp as createOrdersApp } from '../../services/orders/app';
import { createApp as createUsersApp } from '../../services/users/app';
import { HEADER, SERVICE_NAME } from '../../otel/wire-names';
import type { Caller } from '../../services/shared/service-app';
import { ALICE, BOB, identityHeaders } from '../helpers/callers';
import { exitOf, startProcess, type RunningProcess } from '../helpers/process-stack';
import { listen, listenRecording, memoryLogger, refusedOrigin, type RecordedRequest, type TestServer } from '../helpers/servers';
import { TEST_SIGNING_KEY } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';


interface Order {
  id: string;
  userId: string;
  items: { sku: string; quantity: number }[];
  status: string;
  createdAt: string;
}


describe('order-service on its own', () => {
  let users: TestServer & { requests: RecordedRequest[] };
  let notifications: TestServer & { requests: RecordedRequest[] };
  /** Wired to the real users and notifications apps. */
  let orders: TestServer;
  /** Its user-service refuses connections. */
  let ordersWithoutUsers: TestServer;
  /** Its notification-service refuses connections. */
  let ordersWithoutNotifications: TestServer;
  let requestCount = 0;
  const nextRequestId = () => `orders-test-${++requestCount}`;

  beforeAll(async () => {
    const quiet = (name: string) => memoryLogger(name).logger;
    const refused = await refusedOrigin();
    users = await listenRecording(await createUsersApp({ logger: quiet(SERVICE_NAME.users) }));
    notifications = await listenRecording(createNotificationsApp({ logger: quiet(SERVICE_NAME.notifications) }));
    const build = (usersUrl: string, notificationsUrl: string) => listen(createOrdersApp({ logger: quiet(SERVICE_NAME.orders), usersUrl, notificationsUrl }).callback());
    orders = await build(users.url, notifications.url);
    ordersWithoutUsers = await build(refused, notifications.url);
    ordersWithoutNotifications = await build(users.url, refused);
  });
  afterAll(async () => {
    await Promise.all([orders, ordersWithoutUsers, ordersWithoutNotifications, users, notifications].map((server) => server?.close()));
  });

  async function call(server: TestServer, method: string, path: string, init: { caller?: Caller; json?: unknown; body?: string; contentType?: string; requestId?: string } = {}): Promise<Response> {
    const headers: Record<string, string> = { [HEADER.requestId]: init.requestId ?? nextRequestId() };
    if (init.caller) Object.assign(headers, identityHeaders(init.caller));
    const body = init.json !== undefined ? JSON.stringify(init.json) : init.body;
    if (body !== undefined) headers['content-type'] = init.contentType ?? 'application/json';
    return fetch(`${server.url}${path}`, { method, headers, body });
  }

  async function expectProblem(response: Response, status: number, code: string, requestId: string): Promise<void> {
    expect(response.status).toBe(status);
    expect(response.headers.get('content-type')).toBe('application/problem+json');
    expect(await response.json()).toMatchObject({ status, code, requestId, service: SERVICE_NAME.orders });
  }

  async function ordersOf(server: TestServer, caller: Caller): Promise<Order[]> {
    const response = await call(server, 'GET', '/orders', { caller });
    expect(response.status).toBe(200);
    return (await response.json()) as Order[];
  }

  const dependencyCalls = () => users.requests.length + notifications.requests.length;

  describe('API-key consumers (X-Consumer-Id, no user)', () => {
    const asConsumer = (id: string) => ({ [HEADER.consumerId]: id, [HEADER.requestId]: nextRequestId() });

    it('creates and lists a consumer\'s own orders, asking user-service and notification-service nothing', async () => {
      const before = dependencyCalls();
      const created = await fetch(`${orders.url}/orders`, { method: 'POST', headers: { ...asConsumer('acme'), 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ sku: 'crate', quantity: 2 }] }) });
      expect(created.status).toBe(201);
      const order = (await created.json()) as Order & { consumerId?: string };
      expect(order).toMatchObject({ consumerId: 'acme', items: [{ sku: 'crate', quantity: 2 }] });
      expect(created.headers.get('location')).toBe(`${orders.url}/orders/${order.id}`);
      expect(order.userId).toBeUndefined();
      expect(dependencyCalls()).toBe(before);
      const listed = (await (await fetch(`${orders.url}/orders`, { headers: asConsumer('acme') })).json()) as Order[];
      expect(listed.map((each) => each.id)).toEqual([order.id]);
      expect((await fetch(`${orders.url}/orders/${order.id}`, { headers: asConsumer('acme') })).status).toBe(200);
    });

    it('never mixes a consumer with the user of the same id, either way', async () => {
      // A consumer declared as `1` is not alice (user 1): neither sees the other's orders.
      const alicesOrder = (await (await call(orders, 'POST', '/orders', { caller: ALICE, json: { items: [{ sku: 'lamp', quantity: 1 }] } })).json()) as Order;
      const consumersOrder = (await (await fetch(`${orders.url}/orders`, { method: 'POST', headers: { ...asConsumer(ALICE.id), 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ sku: 'desk', quantity: 1 }] }) })).json()) as Order;
      const consumerSees = (await (await fetch(`${orders.url}/orders`, { headers: asConsumer(ALICE.id) })).json()) as Order[];
      expect(consumerSees.map((each) => each.id)).toEqual([consumersOrder.id]);
      expect((await fetch(`${orders.url}/orders/${alicesOrder.id}`, { headers: asConsumer(ALICE.id) })).status).toBe(404);
      expect((await ordersOf(orders, ALICE)).map((each) => each.id)).not.toContain(consumersOrder.id);
      expect((await call(orders, 'GET', `/orders/${consumersOrder.id}`, { caller: ALICE })).status).toBe(404);
      // And one consumer is not another.
      expect((await fetch(`${orders.url}/orders/${consumersOrder.id}`, { headers: asConsumer('globex') })).status).toBe(404);
    });
  });

  it.each([
    { desc: 'creating an order', method: 'POST', path: '/orders', json: { items: [{ sku: 'hammer', quantity: 1 }] } },
    { desc: 'listing orders', method: 'GET', path: '/orders', json: undefined },
    { desc: 'reading one order', method: 'GET', path: '/orders/some-id', json: undefined },
  ])('answers 401 missing_identity to $desc without X-User-Id, calling nobody', async ({ method, path, json }) => {
    const before = dependencyCalls();
    const requestId = nextRequestId();
    const response = await call(orders, method, path, { json, requestId });
    // Every 401 carries a challenge (RFC 9110 11.6.1): both credentials the gateway turns into an owner served here.
    expect(response.headers.get('www-authenticate')).toBe('Bearer realm="koa-gateway", ApiKey realm="koa-gateway"');
    await expectProblem(response, 401, 'missing_identity', requestId);
    expect(dependencyCalls()).toBe(before);
  });

  it.each([
    { desc: 'no items field', body: JSON.stringify({}) },
    { desc: 'an empty item list', body: JSON.stringify({ items: [] }) },
    { desc: 'items that are not a list', body: JSON.stringify({ items: 'hammer' }) },
    { desc: 'more than 100 items', body: JSON.stringify({ items: Array.from({ length: 101 }, () => ({ sku: 'nail', quantity: 1 })) }) },
    { desc: 'a zero quantity', body: JSON.stringify({ items: [{ sku: 'hammer', quantity: 0 }] }) },
    { desc: 'a negative quantity', body: JSON.stringify({ items: [{ sku: 'hammer', quantity: -1 }] }) },
    { desc: 'a quantity over 1000', body: JSON.stringify({ items: [{ sku: 'hammer', quantity: 1001 }] }) },
    { desc: 'a fractional quantity', body: JSON.stringify({ items: [{ sku: 'hammer', quantity: 1.5 }] }) },
    { desc: 'a quantity given as a string', body: JSON.stringify({ items: [{ sku: 'hammer', quantity: '1' }] }) },
    { desc: 'a missing sku', body: JSON.stringify({ items: [{ quantity: 1 }] }) },
    { desc: 'a blank sku', body: JSON.stringify({ items: [{ sku: '   ', quantity: 1 }] }) },
    { desc: 'a sku over 64 characters', body: JSON.stringify({ items: [{ sku: 's'.repeat(65), quantity: 1 }] }) },
    // Bounded after the trim, the stored sku was V8's view into the whole padded string: a megabyte kept per order.
    { desc: 'a sku over 64 characters as sent, though not once trimmed', body: JSON.stringify({ items: [{ sku: `${' '.repeat(10_000)}hammer`, quantity: 1 }] }) },
    // Not plain text (src/unicode-text.ts isPlainText): controls, a bidirectional override, a lone surrogate, and U+FFFD,
    // what the parser makes of bytes that are not UTF-8 (`caf\xE9` and `caf\xFF` were one SKU to the idempotency check).
    ...['ham\u0000mer', 'ham\nmer', '\u202eremmah', 'ham\ud800', 'caf\ufffd'].map((sku) => ({ desc: `a sku of ${JSON.stringify(sku)}`, body: JSON.stringify({ items: [{ sku, quantity: 1 }] }) }) as { desc: string; body: string; contentType?: string; status?: number; code?: string }),
    { desc: 'a JSON array body', body: JSON.stringify([{ sku: 'hammer', quantity: 1 }]) },
    { desc: 'a non-JSON body (text/plain)', body: 'items=hammer', contentType: 'text/plain', status: 415, code: 'unsupported_media_type' },
  ])('refuses $desc with a problem (400 invalid_body unless said) before calling user-service', async ({ body, contentType, status = 400, code = 'invalid_body' }) => {
    const before = dependencyCalls();
    const stored = (await ordersOf(orders, BOB)).length;
    const requestId = nextRequestId();
    await expectProblem(await call(orders, 'POST', '/orders', { caller: BOB, body, contentType, requestId }), status, code, requestId);
    expect(dependencyCalls()).toBe(before);
    expect(await ordersOf(orders, BOB)).toHaveLength(stored);
  });

  it('creates an order after checking the caller with user-service directly, with the same request id and identity', async () => {
    const requestId = nextRequestId();
    const response = await call(orders, 'POST', '/orders', { caller: BOB, json: { items: [{ sku: ' hammer ', quantity: 2 }] }, requestId });
    expect(response.status).toBe(201);
    expect(response.headers.get(HEADER.requestId)).toBe(requestId);
    const order = (await response.json()) as Order;
    expect(order).toEqual({ id: expect.any(String), userId: '2', items: [{ sku: 'hammer', quantity: 2 }], status: 'created', createdAt: expect.any(String) });

    const checks = users.requests.filter((request) => request.headers[HEADER.requestId] === requestId);
    expect(checks).toHaveLength(1);
    expect(checks[0]).toMatchObject({ method: 'GET', url: '/users/2' });
    expect(checks[0]!.headers).toMatchObject({ [HEADER.userId]: '2', [HEADER.userRole]: 'user', [HEADER.userEmail]: 'bob@example.com' });
  });

  it('tells notification-service about a new order, with the same request id', async () => {
    const requestId = nextRequestId();
    const response = await call(orders, 'POST', '/orders', { caller: BOB, json: { items: [{ sku: 'saw', quantity: 1 }] }, requestId });
    expect(response.status).toBe(201);
    const order = (await response.json()) as Order;

    const told = notifications.requests.filter((request) => request.headers[HEADER.requestId] === requestId);
    expect(told).toHaveLength(1);
    expect(told[0]).toMatchObject({ method: 'POST', url: '/internal/notifications' });
    const inbox = (await (await call(notifications, 'GET', '/notifications', { caller: BOB })).json()) as { orderId?: string; type: string; userId: string }[];
    expect(inbox).toContainEqual(expect.objectContaining({ orderId: order.id, type: 'order.created', userId: '2' }));
  });

  it('lists and reads the caller’s own orders', async () => {
    const created = (await (await call(orders, 'POST', '/orders', { caller: BOB, json: { items: [{ sku: 'drill', quantity: 1 }] } })).json()) as Order;
    expect((await ordersOf(orders, BOB)).map((order) => order.id)).toContain(created.id);
    const read = await call(orders, 'GET', `/orders/${created.id}`, { caller: BOB });
    expect(read.status).toBe(200);
    expect(await read.json()).toEqual(created);
  });

  it('hides another user’s order: 404 order_not_found, and absent from their list', async () => {
    const bobs = (await (await call(orders, 'POST', '/orders', { caller: BOB, json: { items: [{ sku: 'level', quantity: 1 }] } })).json()) as Order;
    const requestId = nextRequestId();
    await expectProblem(await call(orders, 'GET', `/orders/${bobs.id}`, { caller: ALICE, requestId }), 404, 'order_not_found', requestId);
    expect((await ordersOf(orders, ALICE)).map((order) => order.id)).not.toContain(bobs.id);
  });

  it('answers 404 order_not_found for an order id that never existed', async () => {
    const requestId = nextRequestId();
    await expectProblem(await call(orders, 'GET', '/orders/00000000-0000-0000-0000-000000000000', { caller: BOB, requestId }), 404, 'order_not_found', requestId);
  });

  it('answers 403 unknown_user when user-service does not know the caller, and stores nothing', async () => {
    const ghost: Caller = { id: '999', role: 'user', email: 'ghost@example.com' };
    const requestId = nextRequestId();
    await expectProblem(await call(orders, 'POST', '/orders', { caller: ghost, json: { items: [{ sku: 'hammer', quantity: 1 }] }, requestId }), 403, 'unknown_user', requestId);
    expect(await ordersOf(orders, ghost)).toEqual([]);
    expect(notifications.requests.some((request) => request.headers[HEADER.requestId] === requestId)).toBe(false);
  });

  // URL removes dot segments: `.` was asked as `GET /users/` (the list, 200 for an admin: an order for a user that did
  // not exist) and `..` as `GET /`.
  it.each(['.', '..'])('answers 403 unknown_user to the caller %s, asking user-service for no path its dots made, and stores nothing', async (id) => {
    const dotted: Caller = { id, role: 'admin', email: 'dots@example.com' };
    const requestId = nextRequestId();
    await expectProblem(await call(orders, 'POST', '/orders', { caller: dotted, json: { items: [{ sku: 'hammer', quantity: 1 }] }, requestId }), 403, 'unknown_user', requestId);
    expect(users.requests.filter((request) => request.headers[HEADER.requestId] === requestId)).toEqual([]);
    expect(await ordersOf(orders, dotted)).toEqual([]);
  });

  // A wrong USER_SERVICE_URL (here notification-service) answered 404 to every check: every caller was told their account
  // was gone, and nothing was logged.
  it('answers 502 dependency_refused, and logs it, when the 404 is not user-service saying the user is gone', async () => {
    const { logger, lines } = memoryLogger(SERVICE_NAME.orders);
    const misdirected = await listen(createOrdersApp({ logger, usersUrl: notifications.url, notificationsUrl: notifications.url }).callback());
    try {
      const requestId = nextRequestId();
      await expectProblem(await call(misdirected, 'POST', '/orders', { caller: BOB, json: { items: [{ sku: 'hammer', quantity: 1 }] }, requestId }), 502, 'dependency_refused', requestId);
      expect(lines.find((line) => line.request_id === requestId && line.message === 'user-service refused the call')).toMatchObject({ status: 404 });
      expect(await ordersOf(misdirected, BOB)).toEqual([]);
    } finally {
      await misdirected.close();
    }
  });

  describe('with an Idempotency-Key', () => {
    const place = (server: TestServer, caller: Caller, key: string, sku = 'anvil') =>
      fetch(`${server.url}/orders`, { method: 'POST', headers: { ...identityHeaders(caller), [HEADER.requestId]: nextRequestId(), 'content-type': 'application/json', 'idempotency-key': key }, body: JSON.stringify({ items: [{ sku, quantity: 1 }] }) });

    // A client sending its POST again after a timeout or a dropped connection placed a second order.
    it('places one order for a key sent twice, and answers the second with the first order', async () => {
      const key = `retry-${nextRequestId()}`;
      const before = (await ordersOf(orders, BOB)).length;
      const first = await place(orders, BOB, key);
      expect(first.status).toBe(201);
      const order = (await first.json()) as Order;
      const again = await place(orders, BOB, key);
      expect({ status: again.status, replayed: again.headers.get('idempotent-replayed'), location: again.headers.get('location') }).toEqual({ status: 201, replayed: 'true', location: first.headers.get('location') });
      expect(await again.json()).toEqual(order);
      const after = await ordersOf(orders, BOB);
      expect(after).toHaveLength(before + 1);
      expect(after.at(-1)!.id).toBe(order.id);
    });

    it('refuses a key sent with another order (422), and keeps keys of two callers apart', async () => {
      const key = `shared-${nextRequestId()}`;
      expect((await place(orders, BOB, key)).status).toBe(201);
      const other = await place(orders, BOB, key, 'hammer');
      expect(other.status).toBe(422);
      expect(await other.json()).toMatchObject({ code: 'idempotency_key_reused' });
      // Alice's key of the same text is hers.
      const alice = await place(orders, ALICE, key, 'hammer');
      expect({ status: alice.status, replayed: alice.headers.get('idempotent-replayed') }).toEqual({ status: 201, replayed: null });
    });

    it.each([
      { desc: 'a blank in it', key: 'two words' },
      { desc: '256 characters', key: 'k'.repeat(256) },
      { desc: 'a key sent twice (joined)', key: 'a, b' },
    ])('refuses a key with $desc (400 invalid_header)', async ({ key }) => {
      const response = await place(orders, BOB, key);
      expect(response.status).toBe(400);
      expect(await response.json()).toMatchObject({ code: 'invalid_header' });
    });

    it('answers 409 while the first request with the key is under way, and the first places its order', async () => {
      const held: (() => void)[] = [];
      const slowUsers = await listen((req, res) => {
        req.resume();
        held.push(() => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: BOB.id })));
      });
      const quiet = memoryLogger(SERVICE_NAME.orders).logger;
      const slowOrders = await listen(createOrdersApp({ logger: quiet, usersUrl: slowUsers.url, notificationsUrl: await refusedOrigin() }).callback());
      try {
        const key = `inflight-${nextRequestId()}`;
        const first = place(slowOrders, BOB, key);
        await waitFor(() => held.length === 1, 'the first request to reach user-service');
        const second = await place(slowOrders, BOB, key);
        expect({ status: second.status, retryAfter: second.headers.get('retry-after') }).toEqual({ status: 409, retryAfter: '1' });
        expect(await second.json()).toMatchObject({ code: 'idempotency_key_in_use' });
        held.shift()!();
        expect((await first).status).toBe(201);
        expect(held).toHaveLength(0);
      } finally {
        held.forEach((release) => release());
        await slowOrders.close();
        await slowUsers.close();
      }
    });

    // Gone, not in progress: a 409 tells a client following the draft to try again, for a day.
    it('answers 410 idempotency_key_spent once the order its key placed is no longer kept', async () => {
      const quiet = memoryLogger(SERVICE_NAME.orders).logger;
      const small = await listen(createOrdersApp({ logger: quiet, usersUrl: users.url, notificationsUrl: notifications.url, storeLimits: { maxPerOwner: 1, maxTotal: 10 } }).callback());
      try {
        const key = `spent-${nextRequestId()}`;
        expect((await place(small, BOB, key)).status).toBe(201);
        expect((await place(small, BOB, `next-${key}`, 'hammer')).status).toBe(201);
        const again = await place(small, BOB, key);
        expect(again.status).toBe(410);
        expect(await again.json()).toMatchObject({ code: 'idempotency_key_spent' });
      } finally {
        await small.close();
      }
    });

    // The first failed and placed nothing: a retry with the key must be tried again, not refused or replayed.
    it('lets a key whose first request placed nothing be sent again', async () => {
      const key = `failed-${nextRequestId()}`;
      expect((await place(ordersWithoutUsers, BOB, key)).status).toBe(503);
      expect((await place(ordersWithoutUsers, BOB, key)).status).toBe(503);
    });
  });

  it('answers 503 dependency_unavailable when user-service is down, stores no order and notifies nobody', async () => {
    const told = notifications.requests.length;
    const requestId = nextRequestId();
    await expectProblem(await call(ordersWithoutUsers, 'POST', '/orders', { caller: BOB, json: { items: [{ sku: 'hammer', quantity: 1 }] }, requestId }), 503, 'dependency_unavailable', requestId);
    expect(await ordersOf(ordersWithoutUsers, BOB)).toEqual([]);
    expect(notifications.requests).toHaveLength(told);
  });

  // Both were 503 dependency_unavailable with Retry-After: 1, the answer to a refused connection.
  it.each([
    { desc: 'user-service does not answer within the call deadline (3 s)', answer: (_res: http.ServerResponse) => undefined, status: 504, code: 'dependency_timeout' },
    { desc: "user-service refuses order-service's call (401: its signature)", answer: (res: http.ServerResponse) => void res.writeHead(401, { 'content-type': 'application/json' }).end('{}'), status: 502, code: 'dependency_refused' },
  ])('answers $status $code when $desc, and stores no order', async ({ answer, status, code }) => {
    const usersStandIn = await listen((_req, res) => answer(res));
    const ordersToIt = await listen(createOrdersApp({ logger: memoryLogger(SERVICE_NAME.orders).logger, usersUrl: usersStandIn.url, notificationsUrl: notifications.url }).callback());
    try {
      const requestId = nextRequestId();
      const response = await call(ordersToIt, 'POST', '/orders', { caller: BOB, json: { items: [{ sku: 'hammer', quantity: 1 }] }, requestId });
      expect(response.headers.get('retry-after')).toBeNull();
      await expectProblem(response, status, code, requestId);
      expect(await ordersOf(ordersToIt, BOB)).toEqual([]);
    } finally {
      await ordersToIt.close();
      await usersStandIn.close();
    }
  }, 15_000);

  // Orders answered and logged under an id of its own, but called the others with the raw header.
  it('calls user-service and notification-service under the id it answers with, not a malformed one it was sent', async () => {
    const response = await call(orders, 'POST', '/orders', { caller: BOB, json: { items: [{ sku: 'hammer', quantity: 1 }] }, requestId: 'a b"c' });
    expect(response.status).toBe(201);
    const minted = response.headers.get(HEADER.requestId)!;
    expect(minted).toMatch(/^[0-9a-f]{32}$/);
    expect(users.requests.at(-1)!.headers[HEADER.requestId]).toBe(minted);
    expect(notifications.requests.at(-1)!.headers[HEADER.requestId]).toBe(minted);
  });

  it('still creates the order (201) when notification-service is down', async () => {
    const response = await call(ordersWithoutNotifications, 'POST', '/orders', { caller: BOB, json: { items: [{ sku: 'hammer', quantity: 3 }] } });
    expect(response.status).toBe(201);
    const order = (await response.json()) as Order;
    expect(order).toMatchObject({ userId: '2', status: 'created' });
    const read = await call(ordersWithoutNotifications, 'GET', `/orders/${order.id}`, { caller: BOB });
    expect(read.status).toBe(200);
  });
});

// W3C Trace Context: a participant that receives a valid traceparent MUST propagate it. Started with telemetry off,
// order-service had no instrumentation to continue its caller's trace context and none to pass it on: user-service
// and notification-service got X-Request-Id and the identity alone, and the gateway's trace broke at order-service.
describe('order-service with telemetry off (the built service, as a process)', () => {
  const CALLER_TRACE = { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', tracestate: 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7', baggage: 'tenant=acme,request.id=trace-off-1' };
  const ALICE_SIGNED: SignedValues = [ALICE.id, ALICE.role, ALICE.email, ''];
  /** The trace headers each stub received, by request id. */
  const received: { to: string; requestId: string; traceparent?: string; tracestate?: string; baggage?: string }[] = [];
  let stubs: TestServer;
  let grpcStub: grpc.Server;
  let grpcUrl: string;

  const record = (to: string, read: (name: string) => string | undefined) =>
    received.push({ to, requestId: read(HEADER.requestId) ?? '', traceparent: read(HEADER.traceparent), tracestate: read(HEADER.tracestate), baggage: read(HEADER.baggage) });

  beforeAll(async () => {
    // user-service (GET /users/:id) and notification-service's HTTP interface, as stubs that record what arrives.
    stubs = await listen((req: http.IncomingMessage, res: http.ServerResponse) => {
      record(req.url!.startsWith('/users/') ? 'user-service' : 'notification-service (HTTP)', (name) => req.headers[name] as string | undefined);
      req.resume();
      res.writeHead(req.method === 'POST' ? 201 : 200, { 'content-type': 'application/json' }).end('{}');
    });
    grpcStub = new grpc.Server();
    grpcStub.addService(grpcServiceDefinition(NOTIFICATIONS_PROTO, NOTIFICATIONS_SERVICE), {
      CreateNotification: (call: grpc.ServerUnaryCall<object, object>, callback: grpc.sendUnaryData<object>) => {
        record('notification-service (gRPC)', (name) => call.metadata.get(name)[0] as string | undefined);
        callback(null, {});
      },
    });
    grpcUrl = `http://127.0.0.1:${await bindGrpcServer(grpcStub, '127.0.0.1', 0)}`;
  });
  afterAll(async () => {
    await stubs?.close();
    grpcStub?.forceShutdown();
  });

  it.each([
    { desc: 'notifications over HTTP', env: () => ({}), notified: 'notification-service (HTTP)' },
    { desc: 'notifications over gRPC', env: () => ({ NOTIF_GRPC_SERVICE_URL: grpcUrl }), notified: 'notification-service (gRPC)' },
  ])('passes its caller’s traceparent, tracestate and baggage on to user-service and notification-service ($desc)', async ({ env, notified }) => {
    let orders: RunningProcess | undefined;
    try {
      orders = await startProcess('order-service', 'services/orders/main.js', {
        OTEL_SDK_DISABLED: 'true',
        GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY,
        USER_SERVICE_URL: stubs.url,
        NOTIF_SERVICE_URL: stubs.url,
        ...env(),
      });
      // Well formed (isWellFormedRequestId): order-service mints its own for any other, and calls on under that.
      const requestId = `trace-off-${notified.includes('gRPC') ? 'grpc' : 'http'}`;
      const signature = createGatewaySigner(TEST_SIGNING_KEY)({ audience: 'orders', method: 'POST', target: '/orders', requestId }, ALICE_SIGNED);
      const response = await fetch(`${orders.url}/orders`, {
        method: 'POST',
        headers: { ...identityHeaders(ALICE), [HEADER.gatewaySignature]: signature, [HEADER.requestId]: requestId, 'content-type': 'application/json', ...CALLER_TRACE },
        body: JSON.stringify({ items: [{ sku: 'hammer', quantity: 1 }] }),
      });
      expect(response.status).toBe(201);
      // Both calls are made before order-service answers.
      const sent = received.filter((each) => each.requestId === requestId).map(({ to, traceparent, tracestate, baggage }) => ({ to, traceparent, tracestate, baggage: baggage?.split(',').sort() }));
      const expected = { traceparent: CALLER_TRACE.traceparent, tracestate: CALLER_TRACE.tracestate, baggage: CALLER_TRACE.baggage.split(',').sort() };
      expect(sent).toEqual([
        { to: 'user-service', ...expected },
        { to: notified, ...expected },
      ]);
      // No context manager carries the request's baggage with telemetry off: the line names the id itself.
      await waitFor(() => orders!.lines.some((line) => line.message === 'order created'), 'the order line');
      expect(orders.lines.find((line) => line.message === 'order created')).toMatchObject({ request_id: requestId });
    } finally {
      orders?.child.kill('SIGKILL');
      if (orders) await exitOf(orders.child);
    }
  }, 30_000);
});
