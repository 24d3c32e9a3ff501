import { createApp, type Notification } from '../../services/notifications/app';
import { HEADER, SERVICE_NAME } from '../../otel/wire-names';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';


describe('notification-service on its own', () => {
  let notifications: TestServer;
  let requestCount = 0;
  const nextRequestId = () => `notifications-test-${++requestCount}`;

  beforeAll(async () => {
    notifications = await listen(createApp({ logger: memoryLogger(SERVICE_NAME.notifications).logger }).callback());
  });
  afterAll(() => notifications.close());

  /**
   * As order-service posts: for the caller its identity headers name, by default the body's userId (30 where the
   * body has none a header can carry); `as: null` sends none.
   */
  function post(body: string, init: { contentType?: string; requestId?: string; as?: string | null } = {}): Promise<Response> {
    const named = /"userId":"([0-9a-z-]{1,20})"/.exec(body)?.[1] ?? '30';
    const callerId = init.as === undefined ? named : init.as;
    const identity = callerId === null ? {} : { [HEADER.userId]: callerId, [HEADER.userRole]: 'user', [HEADER.userEmail]: `${callerId}@example.com` };
    return fetch(`${notifications.url}/internal/notifications`, {
      method: 'POST',
      headers: { 'content-type': init.contentType ?? 'application/json', [HEADER.requestId]: init.requestId ?? nextRequestId(), ...identity },
      body,
    });
  }

  function inboxResponse(userId: string | undefined, requestId = nextRequestId()): Promise<Response> {
    const headers: Record<string, string> = { [HEADER.requestId]: requestId };
    if (userId !== undefined) Object.assign(headers, { [HEADER.userId]: userId, [HEADER.userRole]: 'user', [HEADER.userEmail]: `${userId}@example.com` });
    return fetch(`${notifications.url}/notifications`, { headers });
  }

  async function inbox(userId: string): Promise<Notification[]> {
    const response = await inboxResponse(userId);
    expect(response.status).toBe(200);
    return (await response.json()) as Notification[];
  }

  it('stores an internal notification and answers 201 with it', async () => {
    const response = await post(JSON.stringify({ userId: '10', type: 'order.created', message: 'Order o-1 was created.', orderId: 'o-1' }));
    expect(response.status).toBe(201);
    expect(await response.json()).toEqual({ id: expect.any(String), userId: '10', type: 'order.created', message: 'Order o-1 was created.', orderId: 'o-1', createdAt: expect.any(String) });
  });

  it('lists each user’s own notifications only, in arrival order', async () => {
    await post(JSON.stringify({ userId: '20', type: 'welcome', message: 'first' }));
    await post(JSON.stringify({ userId: '21', type: 'welcome', message: 'for someone else' }));
    await post(JSON.stringify({ userId: '20', type: 'order.created', message: 'second', orderId: 'o-2' }));
    expect((await inbox('20')).map((n) => n.message)).toEqual(['first', 'second']);
    expect((await inbox('21')).map((n) => n.message)).toEqual(['for someone else']);
  });

  // The body is not signed: a signed call replayed with another userId wrote into that user's notifications.
  it('stores a notification only for the caller the identity headers name (403 not_the_caller otherwise, 401 with none)', async () => {
    const forAlice = JSON.stringify({ userId: '40', type: 'order.created', message: 'not from Alice' });
    const other = await post(forAlice, { as: '41' });
    expect(other.status).toBe(403);
    expect(await other.json()).toMatchObject({ status: 403, code: 'not_the_caller' });
    const anonymous = await post(forAlice, { as: null });
    expect(anonymous.status).toBe(401);
    expect(await anonymous.json()).toMatchObject({ status: 401, code: 'missing_identity' });
    expect(await inbox('40')).toEqual([]);
    expect((await post(forAlice)).status).toBe(201);
    expect((await inbox('40')).map((n) => n.message)).toEqual(['not from Alice']);
  });

  it('answers an empty list to a user with no notifications', async () => {
    expect(await inbox('never-notified')).toEqual([]);
  });

  it('answers 401 missing_identity to a list request without identity headers', async () => {
    const response = await inboxResponse(undefined, 'no-identity-1');
    expect(response.status).toBe(401);
    expect(response.headers.get('content-type')).toBe('application/problem+json');
    expect(await response.json()).toMatchObject({ status: 401, code: 'missing_identity', requestId: 'no-identity-1', service: SERVICE_NAME.notifications });
  });

  it.each([
    { desc: 'a missing userId', body: JSON.stringify({ type: 'welcome', message: 'hi' }) },
    { desc: 'an empty userId', body: JSON.stringify({ userId: '', type: 'welcome', message: 'hi' }) },
    { desc: 'a numeric userId', body: JSON.stringify({ userId: 30, type: 'welcome', message: 'hi' }) },
    { desc: 'a missing type', body: JSON.stringify({ userId: '30', message: 'hi' }) },
    { desc: 'a type over 64 characters', body: JSON.stringify({ userId: '30', type: 't'.repeat(65), message: 'hi' }) },
    { desc: 'an empty message', body: JSON.stringify({ userId: '30', type: 'welcome', message: '' }) },
    { desc: 'a message over 1000 characters', body: JSON.stringify({ userId: '30', type: 'welcome', message: 'm'.repeat(1001) }) },
    { desc: 'a non-string orderId', body: JSON.stringify({ userId: '30', type: 'welcome', message: 'hi', orderId: 7 }) },
    { desc: 'a non-JSON body (text/plain)', body: 'userId=30', contentType: 'text/plain', status: 415, code: 'unsupported_media_type' },
  ])('refuses $desc with a problem (400 invalid_body unless said) and stores nothing', async ({ body, contentType, status = 400, code = 'invalid_body' }) => {
    const requestId = nextRequestId();
    const response = await post(body, { contentType, requestId });
    expect(response.status).toBe(status);
    expect(response.headers.get('content-type')).toBe('application/problem+json');
    expect(await response.json()).toMatchObject({ status, code, requestId });
    expect(await inbox('30')).toEqual([]);
  });
});
