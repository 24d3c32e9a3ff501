import * as grpc from '@grpc/grpc-js';
import { HEADER } from '../../otel/wire-names';
import { createGatewaySigner, type SignedValues } from '../../src/gateway-signature';
import { NOTIFICATIONS_SERVICE } from '../../services/notifications/grpc-server';
import { createNotificationsGrpcClient } from '../../services/orders/notifications-client';
import { startProcessStack, type ProcessStack } from '../helpers/process-stack';
import { freePort } from '../helpers/servers';
import { login } from '../helpers/stack';
import { TEST_SIGNING_KEY } from '../helpers/test-config';

/**
 * The services behind the gateway answer only what the gateway signed (src/gateway-signature.ts): the four real
 * processes sharing GATEWAY_SIGNING_KEY, and a peer that reaches a service directly, as any pod or container
 * on the same network could.
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
    expect(await reply.json()).toMatchObject({ code: 'gateway_signature_invalid' });
  });

  it('user-service refuses the credential check (a password oracle) to anyone but the gateway', async () => {
    const reply = await fetch(`${users}/internal/credentials/verify`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }) });
    expect(reply.status).toBe(401);
    expect(await reply.json()).toMatchObject({ code: 'gateway_signature_invalid' });
  });

  it("refuses a signature made with another key, and Bob's real signature with Alice's role", async () => {
    const forged = createGatewaySigner('a-key-that-is-not-the-gateways-but-long-enough')({ method: 'GET', target: '/users' }, ALICE);
    expect((await fetch(`${users}/users`, { headers: { ...identityHeaders(ALICE), [HEADER.gatewaySignature]: forged } })).status).toBe(401);
    const bobs = createGatewaySigner(TEST_SIGNING_KEY)({ method: 'GET', target: '/users' }, BOB);
    const promoted = await fetch(`${users}/users`, { headers: { ...identityHeaders(BOB), [HEADER.userRole]: 'admin', [HEADER.gatewaySignature]: bobs } });
    expect(promoted.status).toBe(401);
    // The control: the request with the signature the gateway would give it is answered.
    const bobsProfile = createGatewaySigner(TEST_SIGNING_KEY)({ method: 'GET', target: '/users/2' }, BOB);
    const honest = await fetch(`${users}/users/2`, { headers: { ...identityHeaders(BOB), [HEADER.gatewaySignature]: bobsProfile } });
    expect(honest.status).toBe(200);
  });

  it('refuses a signature older than five minutes', async () => {
    const old = createGatewaySigner(TEST_SIGNING_KEY, () => Date.now() - 6 * 60_000)({ method: 'GET', target: '/users/2' }, BOB);
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
    const sign = createGatewaySigner(TEST_SIGNING_KEY);
    const unsigned = createNotificationsGrpcClient(grpcUrl, undefined);
    // A signature the gateway made for a ListNotifications call, carried on a CreateNotification one.
    const listing = { method: 'POST', target: `/${NOTIFICATIONS_SERVICE}/ListNotifications` };
    const replaying = createNotificationsGrpcClient(grpcUrl, (_request, values) => sign(listing, values));
    const signed = createNotificationsGrpcClient(grpcUrl, sign);
    try {
      const event = { userId: '2', type: 'forged', message: 'not from the gateway', orderId: '' };
      await expect(unsigned.create(event, 'sig-test', BOB)).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      await expect(replaying.create(event, 'sig-test', BOB)).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      await expect(signed.create({ ...event, type: 'signed' }, 'sig-test', BOB)).resolves.toBeUndefined();
    } finally {
      for (const client of [unsigned, replaying, signed]) client.close();
    }
  });
});
