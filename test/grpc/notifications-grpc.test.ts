import * as grpc from '@grpc/grpc-js';
import { createGatewayApps } from '../../src/gateway';
import { createGatewayMetrics, metricsRequestListener } from '../../src/metrics';
import { waitFor } from '../helpers/wait';
import { HEADER, SERVICE_NAME } from '../../otel/wire-names';
import { createApp as createNotificationsApp } from '../../services/notifications/app';
import { createGrpcServer } from '../../services/notifications/grpc-server';
import { createNotificationStore } from '../../services/notifications/notification-store';
import { createApp as createOrdersApp } from '../../services/orders/app';
import { createApp as createUsersApp } from '../../services/users/app';
import { bindGrpcServer } from '../../services/shared/grpc-service';
import { samplesOf, scrapeWhen, type Exposition } from '../helpers/openmetrics';
import { login } from '../helpers/stack';
import { listen, memoryLogger, refusedOrigin, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';

/**
 * The example's gRPC path, in-process and black-box over HTTP: the shipped route `/api/v1/notifications`
 * translated to notification-service's gRPC interface, and order-service notifying over gRPC.
 */
describe('notification-service over gRPC, through the shipped gateway config', () => {
  let grpcServer: grpc.Server;
  let servers: TestServer[];
  let gatewayUrl: string;
  let token: string;
  const ordersLogs = memoryLogger(SERVICE_NAME.orders);
  const notificationsLogs = memoryLogger(SERVICE_NAME.notifications);

  beforeAll(async () => {
    const store = createNotificationStore();
    grpcServer = createGrpcServer({ logger: notificationsLogs.logger, store });
    const grpcUrl = `http://127.0.0.1:${await bindGrpcServer(grpcServer, '127.0.0.1', 0)}`;
    const quiet = memoryLogger('quiet').logger;
    const users = await listen((await createUsersApp({ logger: quiet })).callback());
    // The HTTP interface is given a closed port for order-service: a notification that arrives came over gRPC.
    const notifications = await listen(createNotificationsApp({ logger: notificationsLogs.logger, store }).callback());
    const orders = await listen(createOrdersApp({ logger: ordersLogs.logger, usersUrl: users.url, notificationsUrl: await refusedOrigin(), notificationsGrpcUrl: grpcUrl }).callback());
    const config = testConfig({ users: users.url, orders: orders.url, notifications: notifications.url }, {}, { NOTIF_GRPC_SERVICE_URL: grpcUrl });
    const gateway = await listen(createGatewayApps(config, { logger: quiet, metrics: false }).gateway.callback());
    servers = [users, notifications, orders, gateway];
    gatewayUrl = gateway.url;
    token = await login(gatewayUrl);
  });
  afterAll(async () => {
    await Promise.all(servers.map((server) => server.close()));
    await new Promise<void>((resolve) => grpcServer.tryShutdown(() => resolve()));
  });

  const get = (path: string, headers: Record<string, string> = { authorization: `Bearer ${token}` }) => fetch(`${gatewayUrl}${path}`, { headers });

  async function createOrder(): Promise<string> {
    const response = await fetch(`${gatewayUrl}/api/orders`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ items: [{ sku: 'book-42', quantity: 1 }] }),
    });
    expect(response.status).toBe(201);
    return ((await response.json()) as { id: string }).id;
  }

  it('lists the notification order-service sent over gRPC, in the JSON mapping, on both interfaces', async () => {
    const orderId = await createOrder();
    const response = await get('/api/v1/notifications');
    expect(response.status).toBe(200);
    const { notifications } = (await response.json()) as { notifications: Record<string, string>[] };
    const mine = notifications.find((notification) => notification.orderId === orderId);
    expect(mine).toEqual({ id: expect.any(String), userId: '1', type: 'order.created', message: `Order ${orderId} was created.`, orderId, createdAt: expect.stringMatching(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$/) });
    // The HTTP route serves the same store.
    const overHttp = (await (await get('/api/notifications')).json()) as { id: string }[];
    expect(overHttp.map((notification) => notification.id)).toContain(mine!.id);
  });

  it('filters by a query parameter and gets one notification by a path variable', async () => {
    const orderId = await createOrder();
    const { notifications } = (await (await get('/api/v1/notifications?type=order.created')).json()) as { notifications: { id: string; orderId: string }[] };
    const id = notifications.find((notification) => notification.orderId === orderId)!.id;
    const one = await get(`/api/v1/notifications/${id}`);
    expect(one.status).toBe(200);
    expect(await one.json()).toMatchObject({ id, orderId });
    expect(((await (await get('/api/v1/notifications?type=other')).json()) as { notifications: unknown[] }).notifications).toEqual([]);
  });

  it("answers 404 grpc_not_found for an unknown id and for someone else's notification", async () => {
    await createOrder();
    const { notifications } = (await (await get('/api/v1/notifications')).json()) as { notifications: { id: string }[] };
    const bob = await login(gatewayUrl, 'bob@example.com', 'builder');
    for (const response of [await get('/api/v1/notifications/no-such-id'), await get(`/api/v1/notifications/${notifications[0]!.id}`, { authorization: `Bearer ${bob}` })]) {
      expect(response.status).toBe(404);
      expect(await response.json()).toMatchObject({ code: 'grpc_not_found', requestId: response.headers.get(HEADER.requestId) });
    }
  });

  it.each([
    { desc: 'an id over 128 characters', path: `/api/v1/notifications/${'n'.repeat(129)}`, field: 'id' },
    { desc: 'an id with a space', path: '/api/v1/notifications/no%20such', field: 'id' },
    { desc: 'a type filter of 4 kB', path: `/api/v1/notifications?type=${'t'.repeat(4096)}`, field: 'type' },
  ])('answers 400 grpc_invalid_argument naming the field for $desc (the service bounds every string it takes)', async ({ path, field }) => {
    const response = await get(path);
    expect(response.status).toBe(400);
    const problem = (await response.json()) as { code: string; detail: string };
    expect(problem.code).toBe('grpc_invalid_argument');
    expect(problem.detail).toContain(`${field}: `);
  });

  it('streams the notifications as newline-delimited JSON', async () => {
    await createOrder();
    const response = await get('/api/v1/notifications/stream');
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('application/x-ndjson');
    const lines = (await response.text()).trim().split('\n').map((line) => JSON.parse(line) as { userId: string; type: string });
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.every((line) => line.userId === '1' && line.type === 'order.created')).toBe(true);
  });

  it.each([
    { desc: 'without a token', path: '/api/v1/notifications', init: {}, status: 401 },
    { desc: 'a POST (the route takes GET; CreateNotification has no HTTP mapping)', path: '/api/v1/notifications', init: { method: 'POST', body: '{}' }, status: 405 },
  ])('refuses a request $desc with $status', async ({ path, init, status }) => {
    const response = await fetch(`${gatewayUrl}${path}`, { ...init, headers: { 'content-type': 'application/json', ...(status === 405 ? { authorization: `Bearer ${token}` } : {}) } });
    expect(response.status).toBe(status);
  });

  // Logged without it, the stored notification could not be tied to the order (or the client's request) that made it.
  it("logs the notification an order's CreateNotification call stored under the order's request id, as the call's own line", async () => {
    const requestId = 'order-and-notification-7f3a';
    const response = await fetch(`${gatewayUrl}/api/orders`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', [HEADER.requestId]: requestId },
      body: JSON.stringify({ items: [{ sku: 'book-42', quantity: 1 }] }),
    });
    expect(response.status).toBe(201);
    await waitFor(() => notificationsLogs.lines.some((line) => line.message === 'rpc handled' && line.rpc === 'CreateNotification' && line.request_id === requestId), 'the call\'s line');
    expect(notificationsLogs.lines.filter((line) => line.message === 'notification stored' && line.request_id === requestId)).toHaveLength(1);
  });

  it("logs one line per gRPC call with the gateway's request id", async () => {
    const response = await get('/api/v1/notifications');
    const requestId = response.headers.get(HEADER.requestId);
    expect(notificationsLogs.lines).toContainEqual(expect.objectContaining({ message: 'rpc handled', rpc: 'ListNotifications', grpc_status: 'OK', request_id: requestId }));
  });
});

/** One upstream attempt per gRPC call, as per HTTP exchange: the upstream histogram's count of each outcome. */
describe('gRPC calls in the upstream metrics (gateway_upstream_request_duration_seconds)', () => {
  const UPSTREAM_COUNT = 'gateway_upstream_request_duration_seconds_count';
  let servers: TestServer[] = [];
  let grpcServer: grpc.Server | undefined;
  afterEach(async () => {
    await Promise.all(servers.map((server) => server.close()));
    servers = [];
    if (grpcServer) await new Promise<void>((resolve) => grpcServer!.tryShutdown(() => resolve()));
    grpcServer = undefined;
  });

  /** A gateway with metrics whose gRPC route calls `grpcUrl`; its scrape endpoint's URL and a token. */
  async function gatewayCalling(grpcUrl: string) {
    const quiet = memoryLogger('quiet').logger;
    const users = await listen((await createUsersApp({ logger: quiet })).callback());
    const config = testConfig({ users: users.url, orders: await refusedOrigin(), notifications: await refusedOrigin() }, {}, { NOTIF_GRPC_SERVICE_URL: grpcUrl });
    const metrics = createGatewayMetrics();
    const gateway = await listen(createGatewayApps(config, { logger: quiet, metrics }).gateway.callback());
    const scrapeEndpoint = await listen(metricsRequestListener(metrics));
    servers = [users, gateway, scrapeEndpoint];
    return { gatewayUrl: gateway.url, metricsUrl: scrapeEndpoint.url, token: await login(gateway.url) };
  }
  /** Attempts at the instance with `outcome`, whatever their error type (the status name of a call the service refused). */
  const attempts = (exposition: Exposition, grpcUrl: string, outcome: string) =>
    samplesOf(exposition, UPSTREAM_COUNT, { gateway_upstream_service: 'notifications', server_address: new URL(grpcUrl).hostname, server_port: new URL(grpcUrl).port, gateway_upstream_outcome: outcome }).reduce(
      (sum, sample) => sum + sample.value,
      0,
    );
  /** Each series of the instance by its method, scheme, status, error type and outcome (an HTTP/2 POST, its HTTP status never seen). */
  const series = (exposition: Exposition, grpcUrl: string) =>
    Object.fromEntries(
      samplesOf(exposition, UPSTREAM_COUNT, { gateway_upstream_service: 'notifications', server_address: new URL(grpcUrl).hostname, server_port: new URL(grpcUrl).port }).map((sample) => [
        `${sample.labels.http_request_method} ${sample.labels.url_scheme} status=${sample.labels.http_response_status_code} error=${sample.labels.error_type} ${sample.labels.gateway_upstream_outcome}`,
        sample.value,
      ]),
    );

  it('counts every call the service answered as an ok attempt at its instance: a list, a NOT_FOUND and a stream', async () => {
    grpcServer = createGrpcServer({ logger: memoryLogger('quiet').logger, store: createNotificationStore() });
    const grpcUrl = `http://127.0.0.1:${await bindGrpcServer(grpcServer, '127.0.0.1', 0)}`;
    const { gatewayUrl, metricsUrl, token } = await gatewayCalling(grpcUrl);
    const statuses = [];
    for (const path of ['/api/v1/notifications', '/api/v1/notifications/zzz', '/api/v1/notifications/stream']) {
      const response = await fetch(`${gatewayUrl}${path}`, { headers: { authorization: `Bearer ${token}` } });
      await response.arrayBuffer();
      statuses.push(response.status);
    }
    expect(statuses).toEqual([200, 404, 200]);
    const exposition = await scrapeWhen(metricsUrl, (e) => attempts(e, grpcUrl, 'ok') >= 3);
    expect(attempts(exposition, grpcUrl, 'ok')).toBe(3);
    expect(series(exposition, grpcUrl)).toEqual({ 'POST http status= error= ok': 2, 'POST http status= error=NOT_FOUND ok': 1 });
  });

  it('counts a call to an instance that refuses connections as a refused attempt', async () => {
    const grpcUrl = await refusedOrigin();
    const { gatewayUrl, metricsUrl, token } = await gatewayCalling(grpcUrl);
    const response = await fetch(`${gatewayUrl}/api/v1/notifications`, { headers: { authorization: `Bearer ${token}` } });
    await response.arrayBuffer();
    expect(response.status).toBe(503);
    const exposition = await scrapeWhen(metricsUrl, (e) => attempts(e, grpcUrl, 'refused') >= 1);
    expect(attempts(exposition, grpcUrl, 'refused')).toBe(1);
    expect(attempts(exposition, grpcUrl, 'ok')).toBe(0);
    expect(series(exposition, grpcUrl)).toEqual({ 'POST http status= error=refused refused': 1 });
  });
});

describe('order-service with notification-service unreachable over gRPC', () => {
  it('still creates the order, logging the notification failure', async () => {
    const quiet = memoryLogger('quiet').logger;
    const { logger, lines } = memoryLogger(SERVICE_NAME.orders);
    const users = await listen((await createUsersApp({ logger: quiet })).callback());
    const orders = await listen(createOrdersApp({ logger, usersUrl: users.url, notificationsUrl: await refusedOrigin(), notificationsGrpcUrl: await refusedOrigin() }).callback());
    try {
      const response = await fetch(`${orders.url}/orders`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', [HEADER.userId]: '1', [HEADER.userRole]: 'admin', [HEADER.userEmail]: 'alice@example.com', [HEADER.requestId]: 'grpc-down-1' },
        body: JSON.stringify({ items: [{ sku: 'a', quantity: 1 }] }),
      });
      expect(response.status).toBe(201);
      expect(lines).toContainEqual(expect.objectContaining({ message: 'notification-service unreachable' }));
    } finally {
      await Promise.all([users.close(), orders.close()]);
    }
  });
});
