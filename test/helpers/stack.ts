import type { Tracer } from '@opentelemetry/api';
import type { GatewayConfig } from '../../src/config';
import { createGatewayApps } from '../../src/gateway';
import { createGatewayMetrics, metricsRequestListener } from '../../src/metrics';
import { handleAfterTurn } from '../../src/request-arrival';
import { createRedisStore } from '../../src/rate-limit-store';
import { createApp as createNotificationsApp } from '../../services/notifications/app';
import { createApp as createOrdersApp } from '../../services/orders/app';
import { createApp as createUsersApp } from '../../services/users/app';
import { requireRedis } from './redis';
import { listen, listenRecording, memoryLogger, type RecordedRequest, type TestServer } from './servers';
import { TEST_ORDERS_CALLER_KEYS, TEST_SERVICE_KEYS, testConfig } from './test-config';

export interface TestStack {
  gateway: TestServer;
  /** The internal listener (details of /ready). */
  admin: TestServer;
  /** The scrape listener (`GET /metrics`), as main.ts opens it with `metrics.port`. */
  metrics: TestServer;
  config: GatewayConfig;
  users: TestServer & { requests: RecordedRequest[] };
  orders: TestServer & { requests: RecordedRequest[] };
  notifications: TestServer & { requests: RecordedRequest[] };
  /** JSON lines the gateway logged. */
  gatewayLogs: Record<string, unknown>[];
  /** Every request any service received. */
  serviceRequests(): RecordedRequest[];
  close(): Promise<void>;
}

export interface StackOptions {
  /** Top-level keys of gateway.config.json to replace. */
  overrides?: Record<string, unknown>;
  /** Gateway env overrides (RATE_LIMIT_MAX, ...). */
  env?: Record<string, string>;
  /** Replace a service origin (e.g. a fault-injecting upstream) before the gateway is built. */
  serviceUrls?: Partial<Record<'users' | 'orders' | 'notifications', string>>;
  /**
   * Connect the gateway to the `rateLimit.redisUrl` of its config (closed with the stack). `true` requires that
   * Redis to be reachable (a missing one fails loudly); `'down'` is for tests of the store-down policies, which
   * point it at a closed port on purpose.
   */
  withRedis?: boolean | 'down';
  /** user-service's port (e.g. one of fetch's "bad ports"); default an ephemeral one. */
  usersPort?: number;
  /** The gateway's tracer (e.g. from an in-memory provider); default the global no-op. */
  tracer?: Tracer;
}

/** The real gateway and the three real services, in this process, on ephemeral loopback ports. */
export async function startStack(options: StackOptions = {}): Promise<TestStack> {
  const quiet = (name: string) => memoryLogger(name).logger;
  // Each service holds its own signing key, as deployed: they answer only what the gateway signed.
  const keys = TEST_SERVICE_KEYS;
  const users = await listenRecording(await createUsersApp({ logger: quiet('user-service'), signingKey: keys.users }), options.usersPort);
  const notifications = await listenRecording(createNotificationsApp({ logger: quiet('notification-service'), signingKey: keys.notifications }));
  const orders = await listenRecording(createOrdersApp({ logger: quiet('order-service'), usersUrl: users.url, notificationsUrl: notifications.url, signingKey: keys.orders, usersSigningKey: TEST_ORDERS_CALLER_KEYS.users, notificationsSigningKey: TEST_ORDERS_CALLER_KEYS.notifications }));
  const config = testConfig({ users: users.url, orders: orders.url, notifications: notifications.url, ...options.serviceUrls }, options.overrides, options.env);
  const { logger, lines } = memoryLogger('gateway');
  const { redisUrl, redisTimeoutMs } = config.rateLimit;
  const redis = options.withRedis && redisUrl ? createRedisStore({ url: redisUrl, commandTimeoutMs: redisTimeoutMs, logger }) : undefined;
  if (redis && options.withRedis !== 'down') {
    try {
      await requireRedis(redis, redisUrl!);
    } catch (error) {
      redis.disconnect();
      await Promise.all([users.close(), orders.close(), notifications.close()]);
      throw error;
    }
  }
  const metrics = createGatewayMetrics();
  const apps = createGatewayApps(config, { logger, redis, tracer: options.tracer, metrics });
  // The public listener runs each pipeline after the turn that parsed its request, as main.ts has it.
  const [gateway, admin, metricsServer] = await Promise.all([listen(handleAfterTurn(apps.gateway.callback())), listen(apps.admin.callback()), listen(metricsRequestListener(metrics))]);
  return {
    gateway,
    admin,
    metrics: metricsServer,
    config,
    users,
    orders,
    notifications,
    gatewayLogs: lines,
    serviceRequests: () => [...users.requests, ...orders.requests, ...notifications.requests],
    async close() {
      await Promise.all([gateway.close(), admin.close(), metricsServer.close(), users.close(), orders.close(), notifications.close()]);
      redis?.disconnect();
    },
  };
}

/** Logs in through the gateway and returns the bearer token. */
/** Registrations user-service received (POST /users), whole or still arriving. */
export function registrationsSeen(stack: TestStack): number {
  return stack.users.requests.filter((request) => request.method === 'POST' && request.url === '/users').length;
}

export async function login(gatewayUrl: string, email = 'alice@example.com', password = 'wonderland'): Promise<string> {
  const response = await fetch(`${gatewayUrl}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email, password }) });
  if (response.status !== 200) throw new Error(`login failed: ${response.status} ${await response.text()}`);
  return ((await response.json()) as { token: string }).token;
}
