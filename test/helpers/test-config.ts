import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseConfig, type GatewayConfig } from '../../src/config';
import { callerSigningKey, serviceSigningKey } from '../../src/gateway-signature';

/** The shipped gateway.config.json, so tests exercise the real route table. */
export function shippedConfigFile(): Record<string, unknown> {
  return JSON.parse(readFileSync(path.join(__dirname, '../../gateway.config.json'), 'utf8')) as Record<string, unknown>;
}

/** The shipped routes with the register route's own limit raised, so a test's many uploads are not rate limited. */
export function routesWithOpenRegister(): { name: string }[] {
  return (shippedConfigFile().routes as { name: string }[]).map((route) => (route.name === 'register' ? { ...route, rateLimit: { max: 1000, windowMs: 60_000 } } : route));
}

/** The shipped config pointed at test services, with any file-level overrides and env applied. */
export function testConfig(serviceUrls: { users: string; orders: string; notifications: string }, overrides: Record<string, unknown> = {}, env: Record<string, string> = {}): GatewayConfig {
  const file = { ...shippedConfigFile(), ...overrides };
  return parseConfig(file, {
    USER_SERVICE_URL: serviceUrls.users,
    ORDER_SERVICE_URL: serviceUrls.orders,
    NOTIF_SERVICE_URL: serviceUrls.notifications,
    JWT_SECRET: TEST_JWT_SECRET,
    GATEWAY_SIGNING_KEY: TEST_SIGNING_KEY,
    ...env,
  });
}

export const TEST_JWT_SECRET = 'test-secret-that-is-long-enough-for-production-use';

/** The test gateway's signing key (src/gateway-signature.ts); each test service holds its own, derived from it (TEST_SERVICE_KEYS). */
export const TEST_SIGNING_KEY = 'test-gateway-signing-key-shared-with-the-services';

/** Each service's signing key, derived from TEST_SIGNING_KEY as the gateway derives it. */
export const TEST_SERVICE_KEYS = {
  users: serviceSigningKey(TEST_SIGNING_KEY, 'users'),
  orders: serviceSigningKey(TEST_SIGNING_KEY, 'orders'),
  notifications: serviceSigningKey(TEST_SIGNING_KEY, 'notifications'),
} as const;

/** The keys user-service and notification-service give order-service as a caller, derived as deployed. */
export const TEST_ORDERS_CALLER_KEYS = {
  users: callerSigningKey(TEST_SERVICE_KEYS.users, 'orders'),
  notifications: callerSigningKey(TEST_SERVICE_KEYS.notifications, 'orders'),
} as const;
