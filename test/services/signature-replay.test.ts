import { createHmac } from 'node:crypto';
import { HEADER } from '../../otel/wire-names';
import type { RecordedRequest } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';
import { TEST_SERVICE_KEYS } from '../helpers/test-config';

/**
 * A gateway signature is good for the one request it was made for (method and target), not for its identity
 * everywhere: a signature seen on the way to one service (by that service, by anyone reading the traffic, or the
 * anonymous one every login and public route carries) is refused on every other path and method, `/internal/*`
 * included. Before, one was accepted on every service, path and method for five minutes.
 */

/**
 * The headers a service received that a replay reuses: the identity, the request id and the signature, everything the
 * signature covers but the request line (without the request id, every replay failed on it alone, whatever it tried).
 */
function signedHeadersOf(seen: RecordedRequest): Record<string, string> {
  const replay: Record<string, string> = {};
  for (const name of [HEADER.userId, HEADER.userRole, HEADER.userEmail, HEADER.consumerId, HEADER.requestId, HEADER.gatewaySignature]) {
    const value = seen.headers[name];
    if (typeof value === 'string') replay[name] = value;
  }
  return replay;
}

describe('a gateway signature is good for its own request only', () => {
  let stack: TestStack;
  /** What the gateway sent notification-service for Bob's `GET /api/notifications`. */
  let bobsListing: Record<string, string>;
  /** What the gateway sent user-service for a login's credential check (no one signed in yet). */
  let credentialCheck: Record<string, string>;

  beforeAll(async () => {
    stack = await startStack();
    const token = await login(stack.gateway.url, 'bob@example.com', 'builder');
    const listed = await fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } });
    expect(listed.status).toBe(200);
    const seenListing = stack.notifications.requests.find((each) => each.method === 'GET' && each.url === '/notifications');
    const seenCheck = stack.users.requests.find((each) => each.url === '/internal/credentials/verify');
    bobsListing = signedHeadersOf(seenListing!);
    credentialCheck = signedHeadersOf(seenCheck!);
    expect(bobsListing[HEADER.gatewaySignature]).toBeDefined();
    expect(credentialCheck[HEADER.gatewaySignature]).toBeDefined();
  });
  afterAll(() => stack?.close());

  const json = { 'content-type': 'application/json' };
  const toAlice = JSON.stringify({ userId: '1', type: 'forged', message: 'not from order-service' });
  const alicesPassword = JSON.stringify({ email: 'alice@example.com', password: 'wonderland' });

  it.each([
    { desc: "Bob's listing signature, to notification-service's POST /internal/notifications (Alice's feed)", service: 'notifications', method: 'POST', path: '/internal/notifications', signed: () => bobsListing, body: toAlice },
    { desc: "Bob's listing signature, to user-service's password check", service: 'users', method: 'POST', path: '/internal/credentials/verify', signed: () => bobsListing, body: alicesPassword },
    { desc: "Bob's listing signature, to another service's path (GET /users/2)", service: 'users', method: 'GET', path: '/users/2', signed: () => bobsListing },
    { desc: "Bob's listing signature, to the same path with another query", service: 'notifications', method: 'GET', path: '/notifications?page=2', signed: () => bobsListing },
    // The same method and target on another service: the signature named no service, and user-service took it.
    { desc: "Bob's listing signature, to the same request on another service (user-service's GET /notifications)", service: 'users', method: 'GET', path: '/notifications', signed: () => bobsListing },
    { desc: "Bob's listing signature, to order-service (GET /orders)", service: 'orders', method: 'GET', path: '/orders', signed: () => bobsListing },
    { desc: "Bob's listing signature, with another method (POST /orders)", service: 'orders', method: 'POST', path: '/orders', signed: () => bobsListing, body: JSON.stringify({ items: [{ sku: 'replayed', quantity: 1 }] }) },
    { desc: "a login's anonymous signature, to notification-service's POST /internal/notifications", service: 'notifications', method: 'POST', path: '/internal/notifications', signed: () => credentialCheck, body: toAlice },
  ] as const)('refuses $desc', async ({ service, method, path, signed, body }) => {
    const origin = stack[service].url;
    const reply = await fetch(`${origin}${path}`, { method, headers: { ...signed(), ...(body === undefined ? {} : json) }, body });
    expect(reply.status).toBe(401);
    expect(await reply.json()).toMatchObject({ code: 'gateway_signature_invalid', detail: expect.stringMatching(/mismatch/) });
  });

  // The services log, answer and call on under the request id of a signed request: unsigned, a captured request sent
  // again under another id put its lines, and its onward calls, under that id.
  it('refuses the very request it was signed for under another request id, and takes it under its own', async () => {
    const seen = stack.notifications.requests.find((each) => each.method === 'GET' && each.url === '/notifications')!;
    const ownId = seen.headers[HEADER.requestId] as string;
    const replayed = await fetch(`${stack.notifications.url}/notifications`, { headers: { ...bobsListing, [HEADER.requestId]: 'someone-elses-request' } });
    expect(replayed.status).toBe(401);
    expect(await replayed.json()).toMatchObject({ code: 'gateway_signature_invalid', detail: expect.stringMatching(/mismatch/) });
    const asSigned = await fetch(`${stack.notifications.url}/notifications`, { headers: { ...bobsListing, [HEADER.requestId]: ownId } });
    expect(asSigned.status).toBe(200);
  });

  // The release before's v3 signatures (no service named) still verify, so that services can be updated first; v2
  // ones (no request id) no longer do.
  it('takes a v3 signature of the release before for its request, and no v2 one', async () => {
    const time = Math.floor(Date.now() / 1000);
    const values = [HEADER.userId, HEADER.userRole, HEADER.userEmail, HEADER.consumerId].map((name) => bobsListing[name] ?? '');
    const requestId = 'a-rolling-update';
    const v3 = createHmac('sha256', TEST_SERVICE_KEYS.notifications).update(`koa-gateway-signature-v3\n${time}\nGET\n/notifications\n${requestId}\n${values.join('\n')}`).digest('base64url');
    const reply = await fetch(`${stack.notifications.url}/notifications`, { headers: { ...bobsListing, [HEADER.gatewaySignature]: `t=${time},v3=${v3}`, [HEADER.requestId]: requestId } });
    expect(reply.status).toBe(200);
    expect(reply.headers.get(HEADER.requestId)).toBe(requestId);
    const v2 = createHmac('sha256', TEST_SERVICE_KEYS.notifications).update(`koa-gateway-signature-v2\n${time}\nGET\n/notifications\n${values.join('\n')}`).digest('base64url');
    const refused = await fetch(`${stack.notifications.url}/notifications`, { headers: { ...bobsListing, [HEADER.gatewaySignature]: `t=${time},v2=${v2}` } });
    expect(refused.status).toBe(401);
  });

  it("writes nothing into Alice's feed through a replayed signature", async () => {
    const token = await login(stack.gateway.url);
    const feed = (await (await fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } })).json()) as { type: string }[];
    expect(feed.map((each) => each.type)).not.toContain('forged');
  });

  it('still lets order-service call user-service and notification-service for the order it was sent, each call signed for itself', async () => {
    const token = await login(stack.gateway.url, 'bob@example.com', 'builder');
    const auth = { authorization: `Bearer ${token}` };
    const created = await fetch(`${stack.gateway.url}/api/orders`, { method: 'POST', headers: { ...auth, ...json }, body: JSON.stringify({ items: [{ sku: 'signed-hop', quantity: 1 }] }) });
    expect(created.status).toBe(201);
    const order = (await created.json()) as { id: string };
    const feed = (await (await fetch(`${stack.gateway.url}/api/notifications`, { headers: auth })).json()) as { orderId?: string }[];
    expect(feed.map((each) => each.orderId)).toContain(order.id);
    // Each hop carried a signature of its own, not the one the gateway gave order-service.
    const toOrders = stack.orders.requests.findLast((each) => each.method === 'POST' && each.url === '/orders')!;
    const toUsers = stack.users.requests.findLast((each) => each.url === '/users/2')!;
    const toNotifications = stack.notifications.requests.findLast((each) => each.url === '/internal/notifications')!;
    const signatures = [toOrders, toUsers, toNotifications].map((each) => each.headers[HEADER.gatewaySignature]);
    expect(new Set(signatures).size).toBe(3);
    expect(toUsers.headers[HEADER.userId]).toBe('2');
    expect(toNotifications.headers[HEADER.userId]).toBe('2');
  });
});
