import type * as grpc from '@grpc/grpc-js';
import { HEADER, SERVICE_NAME } from '../../otel/wire-names';
import { createApp as createNotificationsApp, type Notification } from '../../services/notifications/app';
import { createGrpcServer } from '../../services/notifications/grpc-server';
import { createNotificationStore } from '../../services/notifications/notification-store';
import { createApp as createOrdersApp, orderBytes, ORDERS_PAGE_MAX } from '../../services/orders/app';
import { createNotificationsGrpcClient, type NotificationsGrpcClient } from '../../services/orders/notifications-client';
import { bindGrpcServer } from '../../services/shared/grpc-service';
import type { SignedValues } from '../../src/gateway-signature';
import { createApp as createUsersApp } from '../../services/users/app';
import { UserStore } from '../../services/users/user-store';
import { ALICE, BOB, identityHeaders } from '../helpers/callers';
import { listen, memoryLogger, refusedOrigin, type TestServer } from '../helpers/servers';

/**
 * Every string the services take in is bounded, and so is what their in-memory stores keep: notification-service
 * took a 100 kB `userId` with 201 and kept it, over HTTP and gRPC alike, and every store grew without end.
 */
const quiet = (name: string) => memoryLogger(name).logger;
const HUGE = 'u'.repeat(100_000);

interface Problem {
  status: number;
  code: string;
  detail: string;
  requestId: string;
}

async function problemOf(response: Response): Promise<Problem> {
  expect(response.headers.get('content-type')).toBe('application/problem+json');
  return (await response.json()) as Problem;
}

describe('notification-service inputs', () => {
  let http: TestServer;
  let grpcServer: grpc.Server;
  let grpcClient: NotificationsGrpcClient;

  beforeAll(async () => {
    const store = createNotificationStore();
    http = await listen(createNotificationsApp({ logger: quiet(SERVICE_NAME.notifications), store }).callback());
    grpcServer = createGrpcServer({ logger: quiet(SERVICE_NAME.notifications), store });
    grpcClient = createNotificationsGrpcClient(`http://127.0.0.1:${await bindGrpcServer(grpcServer, '127.0.0.1', 0)}`, undefined);
  });
  afterAll(async () => {
    grpcClient.close();
    await http.close();
    await new Promise<void>((resolve) => grpcServer.tryShutdown(() => resolve()));
  });

  /** As order-service posts: for the caller the identity headers name (`callerId`). */
  const post = (body: Record<string, unknown>, callerId = 'bounds') =>
    fetch(`${http.url}/internal/notifications`, { method: 'POST', headers: { 'content-type': 'application/json', [HEADER.requestId]: 'bounds', ...identityHeaders({ id: callerId, role: 'user', email: '' }) }, body: JSON.stringify(body) });
  const asCaller = (callerId: string) => [callerId, 'user', '', ''] as unknown as SignedValues;
  const inbox = async (userId: string) => (await (await fetch(`${http.url}/notifications`, { headers: identityHeaders({ id: userId, role: 'user', email: '' }) })).json()) as Notification[];

  const refused = [
    { desc: 'a 100 kB userId', field: 'userId', input: { userId: HUGE } },
    { desc: 'a userId over 512 characters', field: 'userId', input: { userId: 'u'.repeat(513) } },
    { desc: 'a userId with a comma (X-User-Id could not carry it)', field: 'userId', input: { userId: 'mallory, 1' } },
    { desc: 'a userId with a control character', field: 'userId', input: { userId: 'u\u0000' } },
    { desc: 'a userId with a space at its end', field: 'userId', input: { userId: 'bounds ' } },
    { desc: 'a 100 kB orderId', field: 'orderId', input: { orderId: 'o'.repeat(100_000) } },
    { desc: 'an orderId over 128 characters', field: 'orderId', input: { orderId: 'o'.repeat(129) } },
    { desc: 'an orderId with a slash', field: 'orderId', input: { orderId: 'o/1' } },
    { desc: 'a 100 kB type', field: 'type', input: { type: 't'.repeat(100_000) } },
    { desc: 'a 100 kB message', field: 'message', input: { message: 'm'.repeat(100_000) } },
  ];

  it.each(refused)('POST /internal/notifications refuses $desc with 400 naming the field and stores nothing', async ({ field, input }) => {
    const response = await post({ userId: 'bounds', type: 'welcome', message: 'hi', ...input });
    expect(response.status).toBe(400);
    const problem = await problemOf(response);
    expect(problem).toMatchObject({ code: 'invalid_body', requestId: 'bounds' });
    expect(problem.detail).toMatch(new RegExp(`^${field}: `));
    expect(problem.detail.length).toBeLessThan(200);
    expect(await inbox('bounds')).toEqual([]);
  });

  it.each(refused)('gRPC CreateNotification refuses $desc with INVALID_ARGUMENT naming the field and stores nothing', async ({ field, input }) => {
    const call = grpcClient.create({ userId: 'bounds', type: 'welcome', message: 'hi', orderId: '', ...input } as never, 'bounds', asCaller('bounds'));
    await expect(call).rejects.toMatchObject({ code: 3, details: expect.stringMatching(new RegExp(`^${field}: `)) });
    expect(await inbox('bounds')).toEqual([]);
  });

  it.each([
    { desc: 'the gateway\'s own user id', userId: '1' },
    { desc: 'a provider\'s subject behind its prefix', userId: 'idp:auth0|5f7c8ec7c33c6c004bbafe82' },
    { desc: 'a caller id of 512 characters', userId: 'u'.repeat(512) },
  ])('takes $desc as userId on both interfaces', async ({ userId }) => {
    expect((await post({ userId, type: 'welcome', message: 'over HTTP', orderId: '7f0c1e2a-5b7d-4c47-9a8e-1f2d3c4b5a69' }, userId)).status).toBe(201);
    await grpcClient.create({ userId, type: 'welcome', message: 'over gRPC', orderId: '' }, 'bounds', asCaller(userId));
    expect((await inbox(userId)).map((notification) => notification.message)).toEqual(['over HTTP', 'over gRPC']);
  });
});

describe('path variables', () => {
  let users: TestServer;
  let orders: TestServer;

  beforeAll(async () => {
    users = await listen((await createUsersApp({ logger: quiet(SERVICE_NAME.users) })).callback());
    orders = await listen(createOrdersApp({ logger: quiet(SERVICE_NAME.orders), usersUrl: users.url, notificationsUrl: await refusedOrigin() }).callback());
  });
  afterAll(() => Promise.all([users.close(), orders.close()]));

  it.each([
    { desc: 'a user id of 4 kB', service: 'users', path: `/users/${'1'.repeat(4096)}` },
    { desc: 'a user id with a comma (no caller id has one)', service: 'users', path: '/users/1%2C1' },
    { desc: 'an order id of 4 kB', service: 'orders', path: `/orders/${'o'.repeat(4096)}` },
    { desc: 'an order id with a quote', service: 'orders', path: '/orders/%22x%22' },
  ])('answers $desc with 400 invalid_param naming id, never echoing it', async ({ service, path }) => {
    const response = await fetch(`${service === 'users' ? users.url : orders.url}${path}`, { headers: { ...identityHeaders(ALICE), [HEADER.requestId]: 'param' } });
    expect(response.status).toBe(400);
    const problem = await problemOf(response);
    expect(problem).toMatchObject({ code: 'invalid_param', requestId: 'param' });
    expect(problem.detail).toMatch(/^id: /);
    expect(problem.detail.length).toBeLessThan(200);
  });

  it.each(['idp:auth0|abc', 'idp:someone@example.com', `idp:${'s'.repeat(255)}`])('takes %s, a caller id it did not make, as a user id: 404 to its caller, 403 unknown_user from order-service', async (id) => {
    const caller = identityHeaders({ id, role: 'user', email: '' });
    expect((await fetch(`${users.url}/users/${encodeURIComponent(id)}`, { headers: caller })).status).toBe(404);
    // Before, user-service refused the id (400) and order-service answered 503 dependency_unavailable, retry later.
    const order = await fetch(`${orders.url}/orders`, { method: 'POST', headers: { 'content-type': 'application/json', ...caller }, body: JSON.stringify({ items: [{ sku: 'book', quantity: 1 }] }) });
    expect([order.status, (await problemOf(order)).code]).toEqual([403, 'unknown_user']);
  });

  it('still answers 404 for a well-formed id that names nothing', async () => {
    const [user, order] = await Promise.all([fetch(`${users.url}/users/999`, { headers: identityHeaders(ALICE) }), fetch(`${orders.url}/orders/no-such-order`, { headers: identityHeaders(ALICE) })]);
    expect([user.status, order.status]).toEqual([404, 404]);
  });
});

describe('the in-memory stores are bounded', () => {
  it('notification-service keeps the newest per user and in all, dropping the oldest', async () => {
    const server = await listen(createNotificationsApp({ logger: quiet(SERVICE_NAME.notifications), store: createNotificationStore({ maxPerOwner: 3, maxTotal: 5 }) }).callback());
    try {
      const notify = async (userId: string, message: string) => {
        const response = await fetch(`${server.url}/internal/notifications`, { method: 'POST', headers: { 'content-type': 'application/json', ...identityHeaders({ id: userId, role: 'user', email: '' }) }, body: JSON.stringify({ userId, type: 'welcome', message }) });
        expect(response.status).toBe(201);
      };
      const inbox = async (userId: string) => ((await (await fetch(`${server.url}/notifications`, { headers: identityHeaders({ id: userId, role: 'user', email: '' }) })).json()) as Notification[]).map((notification) => notification.message);
      for (const message of ['a1', 'a2', 'a3', 'a4']) await notify('a', message);
      expect(await inbox('a')).toEqual(['a2', 'a3', 'a4']);
      for (const message of ['b1', 'b2', 'b3']) await notify('b', message);
      // Six kept would pass the five in all: the oldest of all (a2) goes.
      expect([await inbox('a'), await inbox('b')]).toEqual([['a3', 'a4'], ['b1', 'b2', 'b3']]);
    } finally {
      await server.close();
    }
  });

  it('order-service keeps the newest per owner and in all, and a dropped order is 404', async () => {
    const server = await listen(createOrdersApp({ logger: quiet(SERVICE_NAME.orders), usersUrl: await refusedOrigin(), notificationsUrl: await refusedOrigin(), storeLimits: { maxPerOwner: 2, maxTotal: 3 } }).callback());
    try {
      const as = (consumerId: string) => ({ [HEADER.consumerId]: consumerId });
      const place = async (consumerId: string) => {
        const response = await fetch(`${server.url}/orders`, { method: 'POST', headers: { 'content-type': 'application/json', ...as(consumerId) }, body: JSON.stringify({ items: [{ sku: 'book', quantity: 1 }] }) });
        expect(response.status).toBe(201);
        return ((await response.json()) as { id: string }).id;
      };
      const list = async (consumerId: string) => ((await (await fetch(`${server.url}/orders`, { headers: as(consumerId) })).json()) as { id: string }[]).map((order) => order.id);
      const [c1, c2, c3] = [await place('c'), await place('c'), await place('c')];
      expect(await list('c')).toEqual([c2, c3]);
      expect((await fetch(`${server.url}/orders/${c1}`, { headers: as('c') })).status).toBe(404);
      const [d1, d2] = [await place('d'), await place('d')];
      expect([await list('c'), await list('d')]).toEqual([[c3], [d1, d2]]);
    } finally {
      await server.close();
    }
  });

  // Counted alone, records whose size the caller chooses did not bound memory: 10,000 orders of 100 long items held
  // 209 MB of heap, past the 256 MiB the Kubernetes manifest gives order-service.
  it('order-service keeps its orders within a byte budget too, the oldest of all going first, the newest always kept', async () => {
    const sku = (fill: string) => fill.repeat(64);
    const big = { items: Array.from({ length: 100 }, (_, index) => ({ sku: sku(String(index % 10)), quantity: 1000 })) };
    const oneBigOrder = orderBytes({ id: '00000000-0000-0000-0000-000000000000', consumerId: 'c', items: big.items, status: 'created', createdAt: new Date().toISOString() });
    const server = await listen(createOrdersApp({ logger: quiet(SERVICE_NAME.orders), usersUrl: await refusedOrigin(), notificationsUrl: await refusedOrigin(), storeLimits: { maxPerOwner: 1000, maxTotal: 10_000, maxTotalBytes: 3 * oneBigOrder + 100 } }).callback());
    try {
      const as = (consumerId: string) => ({ [HEADER.consumerId]: consumerId });
      const place = async (consumerId: string, body: unknown) => {
        const response = await fetch(`${server.url}/orders`, { method: 'POST', headers: { 'content-type': 'application/json', ...as(consumerId) }, body: JSON.stringify(body) });
        expect(response.status).toBe(201);
        return ((await response.json()) as { id: string }).id;
      };
      const list = async (consumerId: string) => ((await (await fetch(`${server.url}/orders`, { headers: as(consumerId) })).json()) as { id: string }[]).map((order) => order.id);
      const placed = [await place('c', big), await place('d', big), await place('c', big), await place('d', big)];
      // Three fit the budget: the oldest of all went.
      expect([await list('c'), await list('d')]).toEqual([[placed[2]], [placed[1], placed[3]]]);
      // Small orders beside them: the budget drops as few as it must.
      const small = await place('e', { items: [{ sku: 'book', quantity: 1 }] });
      expect([await list('c'), await list('d'), await list('e')]).toEqual([[placed[2]], [placed[3]], [small]]);
    } finally {
      await server.close();
    }
  });

  // Unpaged, one owner's 1,000 orders of 100 long items were a 21 MB answer whose JSON held the event loop ~0.7 s.
  it('order-service lists orders a page at a time, oldest first, linking the next page', async () => {
    const server = await listen(createOrdersApp({ logger: quiet(SERVICE_NAME.orders), usersUrl: await refusedOrigin(), notificationsUrl: await refusedOrigin() }).callback());
    try {
      const as = { [HEADER.consumerId]: 'pager' };
      const placed: string[] = [];
      for (let i = 0; i < ORDERS_PAGE_MAX + 5; i++) {
        const response = await fetch(`${server.url}/orders`, { method: 'POST', headers: { 'content-type': 'application/json', ...as }, body: JSON.stringify({ items: [{ sku: `book-${i}`, quantity: 1 }] }) });
        placed.push(((await response.json()) as { id: string }).id);
      }
      const page = async (query: string) => {
        const response = await fetch(`${server.url}/orders${query}`, { headers: as });
        return { status: response.status, ids: response.ok ? ((await response.json()) as { id: string }[]).map((order) => order.id) : [], link: response.headers.get('link'), body: response.ok ? undefined : await response.json() };
      };
      const first = await page('');
      expect(first.ids).toEqual(placed.slice(0, ORDERS_PAGE_MAX));
      expect(first.link).toBe(`<${server.url}/orders?limit=${ORDERS_PAGE_MAX}&after=${placed[ORDERS_PAGE_MAX - 1]}>; rel="next"`);
      const next = await page(first.link!.slice(first.link!.indexOf('?'), first.link!.indexOf('>')));
      expect(next).toMatchObject({ status: 200, ids: placed.slice(ORDERS_PAGE_MAX), link: null });
      expect((await page(`?limit=2&after=${placed[1]}`)).ids).toEqual(placed.slice(2, 4));
      for (const query of ['?limit=0', `?limit=${ORDERS_PAGE_MAX + 1}`, '?limit=x', '?limit=1e1', '?limit=0x10', '?limit=%205', '?limit=05', '?limit=', '?limit=1&limit=2', '?after=00000000-0000-0000-0000-000000000000', '?after=..%2F']) {
        expect(await page(query)).toMatchObject({ status: 400, body: { code: 'invalid_query' } });
      }
      // Another owner's order is no place in this list.
      const other = await fetch(`${server.url}/orders`, { method: 'POST', headers: { 'content-type': 'application/json', [HEADER.consumerId]: 'other' }, body: JSON.stringify({ items: [{ sku: 'x', quantity: 1 }] }) });
      expect(await page(`?after=${((await other.json()) as { id: string }).id}`)).toMatchObject({ status: 400 });
    } finally {
      await server.close();
    }
  });

  it('user-service refuses a registration past its most users with 507, dropping no account', async () => {
    const server = await listen((await createUsersApp({ logger: quiet(SERVICE_NAME.users), store: new UserStore(3) })).callback());
    try {
      const register = (email: string) => fetch(`${server.url}/users`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'N', email, password: 'long enough' }) });
      // Alice and Bob are seeded: one more fits.
      expect((await register('carol@example.com')).status).toBe(201);
      const refusal = await register('dave@example.com');
      expect(refusal.status).toBe(507);
      expect(await problemOf(refusal)).toMatchObject({ code: 'user_store_full' });
      const everyone = (await (await fetch(`${server.url}/users`, { headers: identityHeaders(ALICE) })).json()) as { email: string }[];
      expect(everyone.map((user) => user.email)).toEqual(['alice@example.com', 'bob@example.com', 'carol@example.com']);
      expect((await fetch(`${server.url}/users/2`, { headers: identityHeaders(BOB) })).status).toBe(200);
    } finally {
      await server.close();
    }
  });
});

/**
 * Bodies that could be read two ways, or that only look like text: a service answers them 400 `invalid_body` and
 * never quotes them. V8's JSON.parse message quoted the body around the error (a password among it) in `detail`;
 * JSON.parse kept the last of two equal keys, which a WAF or an audit log in front may read otherwise; and a password
 * of unpaired surrogates was hashed as U+FFFD, so different strings logged in as one.
 */
describe('bodies read one way only', () => {
  let users: TestServer;
  beforeAll(async () => {
    users = await listen((await createUsersApp({ logger: quiet(SERVICE_NAME.users), store: new UserStore() })).callback());
  });
  afterAll(() => users.close());

  const register = (body: string) => fetch(`${users.url}/users`, { method: 'POST', headers: { 'content-type': 'application/json', [HEADER.requestId]: 'bodies' }, body });

  it('answers a body that is not JSON with a fixed detail, quoting none of it', async () => {
    const response = await register('{"name":"X","email":"x1@example.com","password":hunter2secret}');
    expect(response.status).toBe(400);
    const problem = await problemOf(response);
    expect(problem).toMatchObject({ code: 'invalid_body', detail: 'The body is not valid JSON.', requestId: 'bodies' });
    expect(JSON.stringify(problem)).not.toContain('hunter2');
  });

  it.each([
    // Under the 1 MiB limit; JSON.parse takes it, a recursive scan for duplicate keys would not (a 500).
    { desc: 'nesting 200,000 levels deep', body: `{"name":"D","email":"d@example.com","password":"long enough","x":${'['.repeat(200_000)}${']'.repeat(200_000)}}` },
    { desc: 'a key given twice', body: '{"name":"M2","email":"m2@example.com","password":"long enough","email":"alice@example.com"}' },
    { desc: 'a key given twice in a nested object', body: '{"name":"M3","email":"m3@example.com","password":"long enough","x":{"a":1,"a":2}}' },
  ])('refuses $desc with 400 invalid_body, storing nothing', async ({ body }) => {
    const response = await register(body);
    expect(response.status).toBe(400);
    expect(await problemOf(response)).toMatchObject({ code: 'invalid_body' });
  });

  it('refuses a password of unpaired surrogates, at registration and at the credential check', async () => {
    const response = await register(JSON.stringify({ name: 'Sur', email: 'sur@example.com', password: '\ud800\ud801\ud802\ud803\ud804\ud805\ud806\ud807' }));
    expect(response.status).toBe(400);
    const check = await fetch(`${users.url}/internal/credentials/verify`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: '\udc00'.repeat(8) }) });
    expect(check.status).toBe(400);
    // A password in any script, paired surrogates (emoji) included, is text.
    expect((await register(JSON.stringify({ name: 'Emoji', email: 'emoji@example.com', password: '😀😀😀😀 long' }))).status).toBe(201);
  });

  // The parser reads each byte that is not UTF-8 as U+FFFD: a password registered in Latin-1 (`d\xE9j\xE0-vu!`) then let
  // in `d\xFFj\xFF-vu!` and any other bytes in those places.
  it('refuses a password in bytes that are not UTF-8, at registration and at the credential check', async () => {
    const latin1 = (text: string) => Buffer.from(text, 'latin1');
    const registered = await fetch(`${users.url}/users`, { method: 'POST', headers: { 'content-type': 'application/json', [HEADER.requestId]: 'bodies' }, body: latin1('{"name":"Latin","email":"latin@example.com","password":"d\xe9j\xe0-vu!"}') });
    expect(registered.status).toBe(400);
    const check = await fetch(`${users.url}/internal/credentials/verify`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: latin1('{"email":"alice@example.com","password":"\xff\xff\xff\xff\xff\xff\xff\xff"}') });
    expect(check.status).toBe(400);
    // The same password in UTF-8 is text.
    expect((await register(JSON.stringify({ name: 'Latin', email: 'latin@example.com', password: 'déjà-vu!' }))).status).toBe(201);
  });

  it('refuses a body naming __proto__ as a reserved key, not as JSON it is not', async () => {
    const response = await register('{"name":"Proto","email":"proto@example.com","password":"long enough","__proto__":{"role":"admin"}}');
    expect(response.status).toBe(400);
    expect(await problemOf(response)).toMatchObject({ code: 'invalid_body', detail: 'The body names a reserved key (__proto__).' });
  });

  it('refuses a body declared in a charset other than UTF-8 with 415, before reading it as UTF-8', async () => {
    const response = await fetch(`${users.url}/users`, { method: 'POST', headers: { 'content-type': 'application/json; charset=iso-8859-1' }, body: Buffer.from('{"name":"Cs","email":"cs@example.com","password":"d\xe9j\xe0-vu!!"}', 'latin1') });
    expect(response.status).toBe(415);
    expect(await problemOf(response)).toMatchObject({ code: 'unsupported_media_type' });
    const utf8 = await fetch(`${users.url}/users`, { method: 'POST', headers: { 'content-type': 'application/json; charset=UTF-8' }, body: JSON.stringify({ name: 'Cs', email: 'cs@example.com', password: 'déjà-vu!!' }) });
    expect(utf8.status).toBe(201);
    // US-ASCII is UTF-8 already, as older clients name it.
    const ascii = await fetch(`${users.url}/users`, { method: 'POST', headers: { 'content-type': 'application/json; charset=US-ASCII' }, body: JSON.stringify({ name: 'As', email: 'as@example.com', password: 'plain-ascii' }) });
    expect(ascii.status).toBe(201);
  });
});
