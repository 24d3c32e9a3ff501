import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { ATTR, HEADER, LOG_FIELD } from '../../otel/wire-names';
import { callerKeyFromGatewayKey, callerSigningKey, createCallerSigner, createGatewaySigner, createServiceKeySigner, serviceSigningKey, type SignedValues } from '../../src/gateway-signature';
import { NOTIFICATIONS_SERVICE } from '../../services/notifications/grpc-server';
import { createNotificationsGrpcClient } from '../../services/orders/notifications-client';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver';
import { exitOf, startProcess, startProcessStack, type ProcessStack, type RunningProcess } from '../helpers/process-stack';
import { waitFor } from '../helpers/wait';
import { freePort } from '../helpers/servers';
import { login } from '../helpers/stack';
import { TEST_JWT_SECRET, TEST_SIGNING_KEY } from '../helpers/test-config';

/**
 * The services behind the gateway answer only what the gateway signed (src/gateway-signature.ts): the four real
 * processes, each service holding its own key derived from the gateway's GATEWAY_SIGNING_KEY, and a peer that
 * reaches a service directly, as any pod or container on the same network could.
 */

const ALICE: SignedValues = ['1', 'admin', 'alice@example.com', ''];
const BOB: SignedValues = ['2', 'user', 'bob@example.com', ''];

function identityHeaders([id, role, email]: SignedValues): Record<string, string> {
  return { [HEADER.userId]: id, [HEADER.userRole]: role, [HEADER.userEmail]: email };
}

describe('services answer only what the gateway signed', () => {
  let stack: ProcessStack;
  let users: string;
  let orders: string;
  let notifications: string;
  let grpcUrl: string;

  beforeAll(async () => {
    const grpcPort = await freePort();
    grpcUrl = `http://127.0.0.1:${grpcPort}`;
    // notification-service serves gRPC; order-service notifies over it, and the gateway's /api/v1 route calls it.
    stack = await startProcessStack({ GRPC_PORT: String(grpcPort), NOTIF_GRPC_SERVICE_URL: grpcUrl });
    const url = (name: string) => stack.processes.find((each) => each.name === name)!.url;
    [users, orders, notifications] = [url('user-service'), url('order-service'), url('notification-service')];
  }, 60_000);
  afterAll(() => stack?.stop());

  it('through the gateway every hop verifies: login, an order (which calls users and notifies over gRPC), both notification interfaces', async () => {
    const token = await login(stack.gatewayUrl);
    const auth = { authorization: `Bearer ${token}` };
    const created = await fetch(`${stack.gatewayUrl}/api/orders`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ sku: 'sig-1', quantity: 1 }] }) });
    expect(created.status).toBe(201);
    const order = (await created.json()) as { id: string };
    const overHttp = (await (await fetch(`${stack.gatewayUrl}/api/notifications`, { headers: auth })).json()) as { orderId?: string }[];
    expect(overHttp.map((each) => each.orderId)).toContain(order.id);
    const overGrpc = await fetch(`${stack.gatewayUrl}/api/v1/notifications`, { headers: auth });
    expect(overGrpc.status).toBe(200);
    expect(JSON.stringify(await overGrpc.json())).toContain(order.id);
  });

  it.each([
    ['user-service', () => `${users}/users`],
    ['order-service', () => `${orders}/orders`],
    ['notification-service', () => `${notifications}/notifications`],
  ])('%s refuses forged identity headers without a signature', async (_name, target) => {
    const reply = await fetch(target(), { headers: identityHeaders(ALICE) });
    expect(reply.status).toBe(401);
    // Every 401 carries a challenge (RFC 9110 11.6.1); this one names the gateway's, which the gateway answers 502.
    expect(reply.headers.get('www-authenticate')).toBe('GatewaySignature realm="koa-gateway"');
    expect(await reply.json()).toMatchObject({ code: 'gateway_signature_invalid' });
  });

  it('user-service refuses the credential check (a password oracle) to anyone but the gateway', async () => {
    const reply = await fetch(`${users}/internal/credentials/verify`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }) });
    expect(reply.status).toBe(401);
    expect(await reply.json()).toMatchObject({ code: 'gateway_signature_invalid' });
  });

  it("refuses a signature made with another key, and Bob's real signature with Alice's role", async () => {
    const forged = createGatewaySigner('a-key-that-is-not-the-gateways-but-long-enough')({ audience: 'users', method: 'GET', target: '/users', requestId: '' }, ALICE);
    expect((await fetch(`${users}/users`, { headers: { ...identityHeaders(ALICE), [HEADER.gatewaySignature]: forged } })).status).toBe(401);
    const bobs = createServiceKeySigner(TEST_SIGNING_KEY)({ audience: 'users', method: 'GET', target: '/users', requestId: '' }, BOB);
    const promoted = await fetch(`${users}/users`, { headers: { ...identityHeaders(BOB), [HEADER.userRole]: 'admin', [HEADER.gatewaySignature]: bobs } });
    expect(promoted.status).toBe(401);
    // The control: the request with the signature the gateway would give it is answered.
    const bobsProfile = createServiceKeySigner(TEST_SIGNING_KEY)({ audience: 'users', method: 'GET', target: '/users/2', requestId: '' }, BOB);
    const honest = await fetch(`${users}/users/2`, { headers: { ...identityHeaders(BOB), [HEADER.gatewaySignature]: bobsProfile } });
    expect(honest.status).toBe(200);
  });

  // What the gateway sends any upstream (a partner's service behind a route, one that logs its headers) was good on
  // every service answering the same method and target: an order created as Bob, with any body, for five minutes.
  it.each([
    ['order-service', () => orders, 'orders', { method: 'POST', target: '/orders', body: JSON.stringify({ items: [{ sku: 'replayed', quantity: 99 }] }) }],
    ['user-service', () => users, 'users', { method: 'GET', target: '/users/2', body: undefined }],
    ['notification-service', () => notifications, 'notifications', { method: 'GET', target: '/notifications', body: undefined }],
  ])('%s refuses a signature the gateway made for another service, and takes the one made for it', async (_name, origin, own, { method, target, body }) => {
    const requestId = `audience-${own}`;
    const headers = (audience: string) => ({
      ...identityHeaders(BOB),
      [HEADER.requestId]: requestId,
      'content-type': 'application/json',
      [HEADER.gatewaySignature]: createServiceKeySigner(TEST_SIGNING_KEY)({ audience, method, target, requestId }, BOB),
    });
    for (const other of ['partner', own === 'orders' ? 'users' : 'orders']) {
      const replayed = await fetch(`${origin()}${target}`, { method, headers: headers(other), body });
      expect(replayed.status).toBe(401);
      expect(await replayed.json()).toMatchObject({ code: 'gateway_signature_invalid', detail: expect.stringMatching(/mismatch/) });
    }
    const signed = await fetch(`${origin()}${target}`, { method, headers: headers(own), body });
    expect(signed.status).toBe(method === 'POST' ? 201 : 200);
  });

  // With one key shared by all, whoever held any service's key (a compromised notification-service, a partner's
  // service given the key to check the gateway's signatures) signed as the gateway for every other service.
  it.each([
    ["notification-service's key", () => serviceSigningKey(TEST_SIGNING_KEY, 'notifications')],
    ["order-service's own key", () => serviceSigningKey(TEST_SIGNING_KEY, 'orders')],
    ["the gateway's key itself (the one key services shared before)", () => TEST_SIGNING_KEY],
  ])('user-service refuses a signature made for it with %s', async (_desc, key) => {
    const request = { audience: 'users', method: 'GET', target: '/users', requestId: '' };
    const reply = await fetch(`${users}/users`, { headers: { ...identityHeaders(ALICE), [HEADER.gatewaySignature]: createGatewaySigner(key())(request, ALICE) } });
    expect(reply.status).toBe(401);
    expect(await reply.json()).toMatchObject({ code: 'gateway_signature_invalid', detail: expect.stringMatching(/mismatch/) });
    // The control: made with user-service's own key, the same request is answered.
    const own = await fetch(`${users}/users`, { headers: { ...identityHeaders(ALICE), [HEADER.gatewaySignature]: createGatewaySigner(serviceSigningKey(TEST_SIGNING_KEY, 'users'))(request, ALICE) } });
    expect(own.status).toBe(200);
  });

  // order-service held user-service's and notification-service's own keys to sign its two calls, and with them
  // signed anything for those two as anyone (an outside review listed users as admin, used the credential check
  // and read others' notifications). Its caller keys open its own two calls only.
  describe("order-service's caller keys", () => {
    const asOrders = (service: string) => createCallerSigner(callerKeyFromGatewayKey(TEST_SIGNING_KEY, service, 'orders'), 'orders');
    const signedHeaders = (service: string, method: string, target: string, values: SignedValues, sign = asOrders(service)) => ({
      ...identityHeaders(values),
      'content-type': 'application/json',
      [HEADER.gatewaySignature]: sign({ audience: service, method, target, requestId: '' }, values),
    });

    it.each<[string, string, string, SignedValues, string | undefined]>([
      ['the user list, as an admin', 'GET', '/users', ALICE, undefined],
      ["another user's record", 'GET', '/users/1', BOB, undefined],
      ['the credential check (a password oracle)', 'POST', '/internal/credentials/verify', BOB, JSON.stringify({ email: 'alice@example.com', password: 'wonderland' })],
      ['the credential check, signed for no user', 'POST', '/internal/credentials/verify', ['', '', '', ''], JSON.stringify({ email: 'alice@example.com', password: 'wonderland' })],
      ["the signed user's record with a query added", 'GET', '/users/2?fields=all', BOB, undefined],
      ['registration', 'POST', '/users', BOB, JSON.stringify({ name: 'Mallory', email: 'mallory@example.com', password: 'long-enough-password' })],
    ])('user-service refuses them %s (403 call_not_allowed)', async (_desc, method, target, values, body) => {
      const reply = await fetch(`${users}${target}`, { method, headers: signedHeaders('users', method, target, values), body });
      expect(reply.status).toBe(403);
      expect(await reply.json()).toMatchObject({ code: 'call_not_allowed' });
    });

    it("user-service answers them the signed user's own record (the call order-service makes), and nothing signed with its own key as the caller", async () => {
      const own = await fetch(`${users}/users/2`, { headers: signedHeaders('users', 'GET', '/users/2', BOB) });
      expect(own.status).toBe(200);
      expect(await own.json()).toMatchObject({ id: '2' });
      // Named as orders but made with user-service's own key (what order-service held before), or as a caller
      // user-service takes nothing from: 401, not the gateway's signature.
      for (const sign of [createCallerSigner(serviceSigningKey(TEST_SIGNING_KEY, 'users'), 'orders'), createCallerSigner(callerKeyFromGatewayKey(TEST_SIGNING_KEY, 'users', 'billing'), 'billing')]) {
        const reply = await fetch(`${users}/users/2`, { headers: signedHeaders('users', 'GET', '/users/2', BOB, sign) });
        expect(reply.status).toBe(401);
        expect(await reply.json()).toMatchObject({ code: 'gateway_signature_invalid', detail: expect.stringMatching(/mismatch/) });
      }
      // Its key for notification-service opens nothing at user-service.
      const crossed = await fetch(`${users}/users/2`, { headers: signedHeaders('users', 'GET', '/users/2', BOB, asOrders('notifications')) });
      expect(crossed.status).toBe(401);
    });

    it("notification-service takes a notification for the signed user from them, and refuses them the user's notifications", async () => {
      const event = JSON.stringify({ userId: '2', type: 'caller.test', message: 'from order-service' });
      const posted = await fetch(`${notifications}/internal/notifications`, { method: 'POST', headers: signedHeaders('notifications', 'POST', '/internal/notifications', BOB), body: event });
      expect(posted.status).toBe(201);
      const listed = await fetch(`${notifications}/notifications`, { headers: signedHeaders('notifications', 'GET', '/notifications', BOB) });
      expect(listed.status).toBe(403);
      expect(await listed.json()).toMatchObject({ code: 'call_not_allowed' });
    });

    it("notification-service's gRPC interface takes CreateNotification from them, and refuses them ListNotifications (PERMISSION_DENIED)", async () => {
      const sign = asOrders('notifications');
      const creating = createNotificationsGrpcClient(grpcUrl, sign);
      const client = new grpc.Client(grpcUrl.replace('http://', ''), grpc.credentials.createInsecure());
      try {
        await expect(creating.create({ userId: '2', type: 'caller.test', message: 'over gRPC', orderId: '' }, 'caller-grpc', BOB)).resolves.toBeUndefined();
        const path = `/${NOTIFICATIONS_SERVICE}/ListNotifications`;
        const metadata = new grpc.Metadata();
        for (const [name, value] of Object.entries({ ...identityHeaders(BOB), [HEADER.gatewaySignature]: sign({ audience: 'notifications', method: 'POST', target: path, requestId: '' }, BOB) })) metadata.set(name, value);
        const listing = await new Promise<grpc.ServiceError | null>((resolve) => {
          client.makeUnaryRequest(path, () => Buffer.alloc(0), (bytes: Buffer) => bytes, {}, metadata, { deadline: Date.now() + 5000 }, (error) => resolve(error));
        });
        expect(listing).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
      } finally {
        creating.close();
        client.close();
      }
    });
  });

  it('refuses a signature older than five minutes', async () => {
    const old = createServiceKeySigner(TEST_SIGNING_KEY, () => Date.now() - 6 * 60_000)({ audience: 'users', method: 'GET', target: '/users/2', requestId: '' }, BOB);
    const reply = await fetch(`${users}/users/2`, { headers: { ...identityHeaders(BOB), [HEADER.gatewaySignature]: old } });
    expect(reply.status).toBe(401);
    expect(((await reply.json()) as { detail: string }).detail).toMatch(/expired/);
  });

  it.each([
    ['user-service', () => users],
    ['order-service', () => orders],
    ['notification-service', () => notifications],
  ])('%s still answers GET /health unsigned (probes)', async (_name, origin) => {
    expect((await fetch(`${origin()}/health`)).status).toBe(200);
  });

  it("notification-service's gRPC interface refuses unsigned calls and calls signed for another method, and takes signed ones", async () => {
    const sign = createServiceKeySigner(TEST_SIGNING_KEY);
    const unsigned = createNotificationsGrpcClient(grpcUrl, undefined);
    // A signature the gateway made for a ListNotifications call, carried on a CreateNotification one.
    const listing = { audience: 'notifications', method: 'POST', target: `/${NOTIFICATIONS_SERVICE}/ListNotifications` };
    const replaying = createNotificationsGrpcClient(grpcUrl, (request, values) => sign({ ...listing, requestId: request.requestId }, values));
    // The same call, signed for another service.
    const elsewhere = createNotificationsGrpcClient(grpcUrl, (request, values) => sign({ ...request, audience: 'orders' }, values));
    const signed = createNotificationsGrpcClient(grpcUrl, sign);
    try {
      const event = { userId: '2', type: 'forged', message: 'not from the gateway', orderId: '' };
      await expect(unsigned.create(event, 'sig-test', BOB)).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      await expect(replaying.create(event, 'sig-test', BOB)).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      await expect(elsewhere.create(event, 'sig-test', BOB)).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      await expect(signed.create({ ...event, type: 'signed' }, 'sig-test', BOB)).resolves.toBeUndefined();
    } finally {
      for (const client of [unsigned, replaying, elsewhere, signed]) client.close();
    }
  });
});

const OLD = TEST_SIGNING_KEY;
const NEW = 'the-next-gateway-signing-key-of-a-rotation-0123';
const keyOf = (gatewayKey: string, service: string) => serviceSigningKey(gatewayKey, service);
/** The key `service` gives order-service as a caller, derived from `service`'s own key. */
const ordersCallerKey = (serviceKey: string) => callerSigningKey(serviceKey, 'orders');

/** A moment of a rolling change of keys: what each process holds (services: GATEWAY_SIGNING_KEY, ..._ACCEPTED; order-service's keys of the services it calls). */
interface KeyMoment {
  gateway: string;
  users: { own: string; accepted: string };
  notifications: { own: string; accepted: string };
  orders: { own: string; accepted: string; users: string; notifications: string };
  /** The keys user-service takes a signature made with. */
  usersTakes: string[];
}

describe.each<[string, KeyMoment]>([
  [
    // Midway through the README's step 3: the gateway signs with the new key, user-service has been given its new key
    // (the old one accepted), order-service and notification-service not yet (the new one accepted). Each service had
    // one key and nothing else: whichever moved first, every request between them was refused.
    "a rotation of the gateway's key (GATEWAY_SIGNING_KEY_ACCEPTED)",
    {
      gateway: NEW,
      users: { own: keyOf(NEW, 'users'), accepted: keyOf(OLD, 'users') },
      notifications: { own: keyOf(OLD, 'notifications'), accepted: keyOf(NEW, 'notifications') },
      orders: { own: keyOf(OLD, 'orders'), accepted: keyOf(NEW, 'orders'), users: ordersCallerKey(keyOf(OLD, 'users')), notifications: ordersCallerKey(keyOf(OLD, 'notifications')) },
      usersTakes: [keyOf(OLD, 'users'), keyOf(NEW, 'users')],
    },
  ],
  [
    // The README's move from the one key every service shared to a key per service, after its steps (1) and (2): the
    // services on this release still hold the shared key and accept their own, order-service signs its calls with the
    // caller keys derived from the others' own keys (which they accept: the manifests read them from order-service's
    // Secret), the gateway of this release signs with each service's key.
    'the move from one shared key, the gateway updated',
    {
      gateway: OLD,
      users: { own: OLD, accepted: keyOf(OLD, 'users') },
      notifications: { own: OLD, accepted: keyOf(OLD, 'notifications') },
      orders: { own: OLD, accepted: keyOf(OLD, 'orders'), users: ordersCallerKey(keyOf(OLD, 'users')), notifications: ordersCallerKey(keyOf(OLD, 'notifications')) },
      usersTakes: [OLD, keyOf(OLD, 'users')],
    },
  ],
  [
    // Its step (3) midway: user-service and order-service swapped (their own key now, the shared one accepted),
    // notification-service not yet; order-service's caller keys unchanged since step (1).
    'the move from one shared key, the services swapping their keys',
    {
      gateway: OLD,
      users: { own: keyOf(OLD, 'users'), accepted: OLD },
      notifications: { own: OLD, accepted: keyOf(OLD, 'notifications') },
      orders: { own: keyOf(OLD, 'orders'), accepted: OLD, users: ordersCallerKey(keyOf(OLD, 'users')), notifications: ordersCallerKey(keyOf(OLD, 'notifications')) },
      usersTakes: [OLD, keyOf(OLD, 'users')],
    },
  ],
])('%s', (_desc, keys) => {
  const processes: RunningProcess[] = [];
  let gatewayUrl: string;
  let users: string;

  beforeAll(async () => {
    const grpcPort = await freePort();
    const grpcUrl = `http://127.0.0.1:${grpcPort}`;
    const held = ({ own, accepted }: { own: string; accepted: string }) => ({ GATEWAY_SIGNING_KEY: own, GATEWAY_SIGNING_KEY_ACCEPTED: accepted });
    const [userService, notificationService] = await Promise.all([
      startProcess('user-service', 'services/users/main.js', held(keys.users)),
      startProcess('notification-service', 'services/notifications/main.js', { ...held(keys.notifications), GRPC_PORT: String(grpcPort) }),
    ]);
    processes.push(userService, notificationService);
    users = userService.url;
    const orderService = await startProcess('order-service', 'services/orders/main.js', {
      ...held(keys.orders),
      USER_SERVICE_SIGNING_KEY: keys.orders.users,
      NOTIF_SERVICE_SIGNING_KEY: keys.orders.notifications,
      USER_SERVICE_URL: users,
      NOTIF_SERVICE_URL: notificationService.url,
      NOTIF_GRPC_SERVICE_URL: grpcUrl,
    });
    processes.push(orderService);
    const gateway = await startProcess('gateway', 'src/main.js', {
      JWT_SECRET: TEST_JWT_SECRET,
      GATEWAY_SIGNING_KEY: keys.gateway,
      USER_SERVICE_URL: users,
      ORDER_SERVICE_URL: orderService.url,
      NOTIF_SERVICE_URL: notificationService.url,
      NOTIF_GRPC_SERVICE_URL: grpcUrl,
    });
    processes.push(gateway);
    gatewayUrl = gateway.url;
  }, 60_000);
  afterAll(async () => {
    for (const each of processes) each.child.kill('SIGKILL');
    await Promise.all(processes.map((each) => exitOf(each.child)));
  });

  it('refuses no request: login, an order (order-service signs its calls with the keys it holds), both notification interfaces', async () => {
    const token = await login(gatewayUrl);
    const auth = { authorization: `Bearer ${token}` };
    const created = await fetch(`${gatewayUrl}/api/orders`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ sku: 'rotation', quantity: 1 }] }) });
    expect(created.status).toBe(201);
    const order = (await created.json()) as { id: string };
    const overHttp = (await (await fetch(`${gatewayUrl}/api/notifications`, { headers: auth })).json()) as { orderId?: string }[];
    expect(overHttp.map((each) => each.orderId)).toContain(order.id);
    const overGrpc = await fetch(`${gatewayUrl}/api/v1/notifications`, { headers: auth });
    expect(overGrpc.status).toBe(200);
    expect(JSON.stringify(await overGrpc.json())).toContain(order.id);
  });

  it('still refuses a signature made with any other key', async () => {
    for (const other of ['a-third-key-that-is-neither-but-long-enough', keyOf(keys.gateway, 'notifications')]) {
      const forged = createGatewaySigner(other)({ audience: 'users', method: 'GET', target: '/users/2', requestId: '' }, BOB);
      expect((await fetch(`${users}/users/2`, { headers: { ...identityHeaders(BOB), [HEADER.gatewaySignature]: forged } })).status).toBe(401);
    }
    for (const key of keys.usersTakes) {
      const signed = createGatewaySigner(key)({ audience: 'users', method: 'GET', target: '/users/2', requestId: '' }, BOB);
      expect((await fetch(`${users}/users/2`, { headers: { ...identityHeaders(BOB), [HEADER.gatewaySignature]: signed } })).status).toBe(200);
    }
  });
});

// A peer inside the network reaching a service directly with a forged traceparent and request id: its 401 was
// recorded as a span inside the forged trace (someone else's) and logged under the forged id, because the span
// and the log line were started from the request's headers before its signature was checked.
describe('what a service records for a request the gateway did not sign', () => {
  let receiver: OtlpReceiver;
  let users: RunningProcess;
  const newTrace = () => ({ traceId: randomBytes(16).toString('hex'), parentId: randomBytes(8).toString('hex') });

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    users = await startProcess('user-service', 'services/users/main.js', {
      GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY,
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_BSP_SCHEDULE_DELAY: '50',
      OTEL_METRICS_EXPORTER: 'none',
      OTEL_LOGS_EXPORTER: 'none',
    });
  }, 30_000);
  afterAll(async () => {
    users?.child.kill('SIGKILL');
    if (users) await exitOf(users.child);
    await receiver?.close();
  });

  /** The service's access line for the request answered with `requestId`. */
  async function lineFor(requestId: string): Promise<Record<string, unknown>> {
    await waitFor(() => users.lines.some((line) => line.message === 'request handled' && line[LOG_FIELD.requestId] === requestId), `the line of ${requestId}`);
    return users.lines.find((line) => line.message === 'request handled' && line[LOG_FIELD.requestId] === requestId)!;
  }

  it('records its 401 in a new trace and under a new request id, neither the forged one', async () => {
    const forged = newTrace();
    const forgedId = `forged-${forged.traceId}`;
    const reply = await fetch(`${users.url}/users/1`, {
      headers: { ...identityHeaders(ALICE), traceparent: `00-${forged.traceId}-${forged.parentId}-01`, [HEADER.requestId]: forgedId, baggage: `request.id=${forgedId}` },
    });
    expect(reply.status).toBe(401);
    const requestId = reply.headers.get(HEADER.requestId)!;
    expect(requestId).toMatch(/^[0-9a-f]{32}$/);
    expect(((await reply.json()) as { requestId: string }).requestId).toBe(requestId);

    const line = await lineFor(requestId);
    expect(line).toMatchObject({ status: 401, url: '/users/1' });
    const { spans } = await receiver.waitFor((received) => received.spans.some((span) => span.kind === 'SERVER' && span.traceId === line[LOG_FIELD.traceId]));
    const server = spans.find((span) => span.kind === 'SERVER' && span.traceId === line[LOG_FIELD.traceId])!;
    expect({ traceId: server.traceId, parentSpanId: server.parentSpanId, status: server.attributes['http.response.status_code'] }).toEqual({
      traceId: expect.not.stringMatching(forged.traceId),
      parentSpanId: undefined,
      status: 401,
    });
    expect(server.attributes[ATTR.requestId]).not.toBe(forgedId);
    expect(spans.filter((span) => span.traceId === forged.traceId)).toEqual([]);
  });

  it('still continues a signed request’s trace and logs it under the request id the gateway sent', async () => {
    const caller = newTrace();
    const requestId = `signed-${caller.traceId}`;
    const signature = createGatewaySigner(TEST_SIGNING_KEY)({ audience: 'users', method: 'GET', target: '/users/2', requestId }, BOB);
    const reply = await fetch(`${users.url}/users/2`, {
      headers: { ...identityHeaders(BOB), [HEADER.gatewaySignature]: signature, traceparent: `00-${caller.traceId}-${caller.parentId}-01`, [HEADER.requestId]: requestId, baggage: `request.id=${requestId}` },
    });
    expect(reply.status).toBe(200);
    expect(reply.headers.get(HEADER.requestId)).toBe(requestId);
    expect(await lineFor(requestId)).toMatchObject({ status: 200, [LOG_FIELD.traceId]: caller.traceId });
    const { spans } = await receiver.waitFor((received) => received.spans.some((span) => span.kind === 'SERVER' && span.traceId === caller.traceId));
    expect(spans.find((span) => span.kind === 'SERVER' && span.traceId === caller.traceId)).toMatchObject({ parentSpanId: caller.parentId, attributes: expect.objectContaining({ [ATTR.requestId]: requestId }) });
  });
});

describe('what notification-service records for a gRPC call the gateway did not sign', () => {
  // The same peer calling notification-service's gRPC interface: the `rpc handled` line took the forged
  // x-request-id before the signature was checked, and the gRPC instrumentation continued the forged traceparent
  // before the handler ran, so the refused call was recorded inside someone else's trace.
  let receiver: OtlpReceiver;
  let notifications: RunningProcess;
  let client: grpc.Client;
  const newTrace = () => ({ traceId: randomBytes(16).toString('hex'), parentId: randomBytes(8).toString('hex') });
  const path = `/${NOTIFICATIONS_SERVICE}/CreateNotification`;
  const spanName = `grpc.${NOTIFICATIONS_SERVICE}/CreateNotification`;

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    const grpcPort = await freePort();
    notifications = await startProcess('notification-service', 'services/notifications/main.js', {
      GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY,
      GRPC_PORT: String(grpcPort),
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_BSP_SCHEDULE_DELAY: '50',
      OTEL_METRICS_EXPORTER: 'none',
      OTEL_LOGS_EXPORTER: 'none',
    });
    await waitFor(() => notifications.lines.some((line) => typeof line.grpc_url === 'string'), 'the gRPC listener');
    client = new grpc.Client(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure());
  }, 30_000);
  afterAll(async () => {
    client?.close();
    notifications?.child.kill('SIGKILL');
    if (notifications) await exitOf(notifications.child);
    await receiver?.close();
  });

  /** CreateNotification with exactly `entries` as metadata (the message is empty: a signed one is then refused as INVALID_ARGUMENT); resolves with the status code. */
  function call(entries: Record<string, string>): Promise<grpc.status> {
    const metadata = new grpc.Metadata();
    for (const [name, value] of Object.entries(entries)) metadata.set(name, value);
    return new Promise((resolve) => {
      client.makeUnaryRequest(path, (value: Buffer) => value, (bytes: Buffer) => bytes, Buffer.alloc(0), metadata, { deadline: Date.now() + 5000 }, (error) => resolve(error?.code ?? grpc.status.OK));
    });
  }

  /** The `rpc handled` lines logged with `status`. */
  const linesWith = (status: string) => notifications.lines.filter((line) => line.message === 'rpc handled' && line.grpc_status === status);

  it.each([
    ['no signature', () => ({})],
    ['a signature made with another key', () => ({ [HEADER.gatewaySignature]: createGatewaySigner('a-key-that-is-not-the-gateways-but-long-enough')({ audience: 'notifications', method: 'POST', target: path, requestId: '' }, BOB) })],
  ])('logs its refusal (%s) under a new request id and in a new trace, neither the forged one', async (_desc, signature) => {
    const forged = newTrace();
    const forgedId = `forged-${forged.traceId}`;
    const before = linesWith('UNAUTHENTICATED').length;
    const code = await call({ ...identityHeaders(BOB), ...signature(), traceparent: `00-${forged.traceId}-${forged.parentId}-01`, tracestate: 'victim=1', [HEADER.requestId]: forgedId, baggage: `request.id=${forgedId}` });
    expect(code).toBe(grpc.status.UNAUTHENTICATED);

    // This call's line: the calls of this file are made one at a time.
    await waitFor(() => linesWith('UNAUTHENTICATED').length > before, 'the refused call\'s line');
    const refused = linesWith('UNAUTHENTICATED')[before]!;
    expect(refused[LOG_FIELD.requestId]).toMatch(/^[0-9a-f]{32}$/);
    expect(refused[LOG_FIELD.traceId]).not.toBe(forged.traceId);

    const { spans } = await receiver.waitFor((received) => received.spans.some((span) => span.kind === 'SERVER' && span.traceId === refused[LOG_FIELD.traceId]));
    const server = spans.find((span) => span.kind === 'SERVER' && span.traceId === refused[LOG_FIELD.traceId])!;
    expect({ name: server.name, parentSpanId: server.parentSpanId }).toEqual({ name: spanName, parentSpanId: undefined });
    expect(server.attributes[ATTR.requestId]).not.toBe(forgedId);
    expect(spans.filter((span) => span.traceId === forged.traceId)).toEqual([]);
  });

  it('still continues a signed call’s trace and logs it under the request id the gateway sent', async () => {
    const caller = newTrace();
    const requestId = `signed-${caller.traceId}`;
    const signature = createGatewaySigner(TEST_SIGNING_KEY)({ audience: 'notifications', method: 'POST', target: path, requestId }, BOB);
    const code = await call({ ...identityHeaders(BOB), [HEADER.gatewaySignature]: signature, traceparent: `00-${caller.traceId}-${caller.parentId}-01`, [HEADER.requestId]: requestId, baggage: `request.id=${requestId}` });
    // Signed, so past the signature: the empty message is what it refuses.
    expect(code).toBe(grpc.status.INVALID_ARGUMENT);
    await waitFor(() => linesWith('INVALID_ARGUMENT').some((line) => line[LOG_FIELD.requestId] === requestId), 'the signed call\'s line');
    expect(linesWith('INVALID_ARGUMENT').find((line) => line[LOG_FIELD.requestId] === requestId)).toMatchObject({ [LOG_FIELD.traceId]: caller.traceId });
    const { spans } = await receiver.waitFor((received) => received.spans.some((span) => span.kind === 'SERVER' && span.traceId === caller.traceId));
    expect(spans.find((span) => span.kind === 'SERVER' && span.traceId === caller.traceId)).toMatchObject({ name: spanName, parentSpanId: caller.parentId });
  });
});
