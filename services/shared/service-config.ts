import { z } from 'zod';
import { hideUrlPasswords } from '../../otel/redact-url';
import { keyMaterialProblem, SERVICE_KEY_PATTERN, SIGNING_KEY_MIN_LENGTH } from '../../src/gateway-signature';
import { serviceOrigin } from '../../src/service-origin';

/**
 * Configuration of the three example services, from the environment only (they are small on purpose).
 * This is the only module of the services that reads `process.env`.
 */
export type ServiceKey = 'users' | 'orders' | 'notifications';

const signingKey = z.string().min(SIGNING_KEY_MIN_LENGTH, `must be at least ${SIGNING_KEY_MIN_LENGTH} characters`);

const common = {
  HOST: z.string().min(1).default('127.0.0.1'),
  NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
  LOG_LEVEL: z.enum(['error', 'warn', 'info', 'http', 'verbose', 'debug', 'silly']).default('info'),
  /**
   * This service's signing key (src/gateway-signature.ts serviceSigningKey: derived from the gateway's, for this
   * service's name; `npm run service-key`): requests without the gateway's signature under it are refused. Required
   * in production.
   */
  GATEWAY_SIGNING_KEY: signingKey.optional(),
  /**
   * Another key whose signatures are accepted too, never used to sign: the next key of a rotation, before the gateway
   * signs with it, then the previous one, while other services still sign their calls with it (README). Only with
   * GATEWAY_SIGNING_KEY.
   */
  GATEWAY_SIGNING_KEY_ACCEPTED: signingKey.optional(),
  /**
   * The name the gateway's config gives this service (its key in `services`): only signatures the gateway made for
   * it are believed. Default the service's own key (`users`, `orders`, `notifications`), as the shipped configs name them.
   */
  GATEWAY_SIGNATURE_AUDIENCE: z.string().regex(SERVICE_KEY_PATTERN, 'must be a service name of the gateway config (lower case letters, digits and dashes, starting with a letter)').optional(),
};
/**
 * A port: decimal digits, 0-65535 (0: any free one). Coerced with Number() before, `"   "` was 0 (a random port, so
 * nothing found the service), `"0x10"` 16 and `" 4001"` 4001, values the gateway's own config refuses.
 */
const portNumber = z
  .string()
  .regex(/^\d{1,5}$/, 'must be a port number, decimal digits only')
  .transform(Number)
  .refine((port) => port <= 65535, 'must be at most 65535');
const port = (fallback: number) => portNumber.default(fallback);
/** Another service's origin: order-service puts its own paths after it, so a path or credentials were dropped without a word. */
const url = (fallback: string) => serviceOrigin('order-service calls its own paths on it').default(fallback);

const SCHEMAS = {
  users: z.object({ ...common, PORT: port(4001) }),
  orders: z.object({
    ...common,
    PORT: port(4002),
    USER_SERVICE_URL: url('http://127.0.0.1:4001'),
    NOTIF_SERVICE_URL: url('http://127.0.0.1:4003'),
    /** notification-service's gRPC interface; when set, new orders are notified over gRPC instead of HTTP. */
    NOTIF_GRPC_SERVICE_URL: serviceOrigin('a gRPC call names its method itself').optional(),
    /**
     * The keys user-service and notification-service derive for order-service as a caller (src/gateway-signature.ts
     * callerSigningKey; `npm run service-key -- --caller orders users notifications`): it signs its calls to them
     * with these, good for the calls their rules let it make only. Its own key signs for no one else. Required in
     * production.
     */
    USER_SERVICE_SIGNING_KEY: signingKey.optional(),
    NOTIF_SERVICE_SIGNING_KEY: signingKey.optional(),
  }),
  notifications: z.object({
    ...common,
    PORT: port(4003),
    /** Port of the gRPC interface (proto/notifications.proto), beside the HTTP one; none when unset (`npm start` and compose use 50053). */
    GRPC_PORT: portNumber.optional(),
  }),
} as const;

export type ServiceEnv<K extends ServiceKey> = z.output<(typeof SCHEMAS)[K]>;

/** Every environment variable each service reads (compose is checked against these lists). */
export const SERVICE_ENV_VARIABLES: Record<ServiceKey, readonly string[]> = {
  users: Object.keys(SCHEMAS.users.shape),
  orders: Object.keys(SCHEMAS.orders.shape),
  notifications: Object.keys(SCHEMAS.notifications.shape),
};

/** Validates the service's variables; a bad one stops startup with one line naming it. */
export function loadServiceEnv<K extends ServiceKey>(service: K, env: Record<string, string | undefined> = process.env): ServiceEnv<K> {
  const relevant = Object.fromEntries(SERVICE_ENV_VARIABLES[service].flatMap((name) => (env[name] ? [[name, env[name]]] : [])));
  const result = SCHEMAS[service].safeParse(relevant);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const name = issue.path.join('.');
    // The key is never echoed, not even a wrong one.
    // Nor a URL's password (`http://svc:secret@host`, one holding `/` or `@` too), as the gateway hides it.
    const got = name.includes('SIGNING_KEY') ? '' : ` (got ${hideUrlPasswords(JSON.stringify(relevant[String(issue.path[0])]) ?? '')})`;
    throw new Error(`config: ${name}: ${issue.message}${got}`);
  }
  const production = result.data.NODE_ENV === 'production';
  // A key that is set is key material in every mode (compose runs the services in development, where `a` x 32 was
  // taken); only its being set is production's own rule, as the gateway has it.
  checkedKey('GATEWAY_SIGNING_KEY', result.data.GATEWAY_SIGNING_KEY, production ? 'without it anyone who reaches this service can claim any identity' : undefined);
  if (result.data.GATEWAY_SIGNING_KEY_ACCEPTED !== undefined) {
    // Believed beside no key of its own, anyone could claim any identity without a signature.
    if (result.data.GATEWAY_SIGNING_KEY === undefined) throw new Error('config: GATEWAY_SIGNING_KEY_ACCEPTED: needs GATEWAY_SIGNING_KEY (it is accepted beside that key, never instead of it)');
    checkedKey('GATEWAY_SIGNING_KEY_ACCEPTED', result.data.GATEWAY_SIGNING_KEY_ACCEPTED);
  }
  for (const name of CALLED_SERVICE_KEYS) {
    // Unsigned, its calls would be refused by services that check signatures, as production's all do.
    if (name in SCHEMAS[service].shape) checkedKey(name, (result.data as Record<string, unknown>)[name] as string | undefined, production ? 'the service it names refuses calls it cannot verify' : undefined);
  }
  return result.data as ServiceEnv<K>;
}

/**
 * A key: refused when it is not key material (keyMaterialProblem, as the gateway's), and, when `required` says why
 * it must be (production), when it is unset. Never echoed.
 */
function checkedKey(name: string, key: string | undefined, required?: string): void {
  if (key === undefined) {
    if (required !== undefined) throw new Error(`config: ${name}: must be set in production: ${required}`);
    return;
  }
  const problem = keyMaterialProblem(key);
  if (problem) throw new Error(`config: ${name}: ${problem}`);
}

/** The keys a service was given by the services it calls, each signing its calls to that service. */
const CALLED_SERVICE_KEYS = ['USER_SERVICE_SIGNING_KEY', 'NOTIF_SERVICE_SIGNING_KEY'] as const;
