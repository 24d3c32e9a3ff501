import { bodyParser } from '@koa/bodyparser';
import { context, type Tracer } from '@opentelemetry/api';
import type { Middleware } from 'koa';
import { HEADER } from '../../otel/wire-names';
import type { AuthenticatedUser } from '../context';
import { GatewayError, upstreamFailure } from '../errors';
import type { TokenService } from '../tokens';
import type { UpstreamPool } from '../upstream-pool';
import { endUpstreamSpan, startUpstreamSpan, traceHeaders } from '../upstream-span';

/** Where user-service checks credentials. Outside `/users`, so no public route can reach it. */
export const CREDENTIALS_CHECK_PATH = '/internal/credentials/verify';

export interface LoginOptions {
  tokens: TokenService;
  /** user-service's instances. */
  users: UpstreamPool;
  /** Largest accepted body, bytes. */
  bodyLimitBytes: number;
  /** How long user-service may take to check credentials, ms. Default 5000. */
  timeoutMs?: number;
  /** Makes the CLIENT span of the credential check. */
  tracer: Tracer;
}

interface Credentials {
  email: string;
  password: string;
}

function readCredentials(body: unknown): Credentials {
  const { email, password } = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
  if (typeof email !== 'string' || email === '' || typeof password !== 'string' || password === '') {
    throw new GatewayError('invalid_body', 'Send a JSON object with string fields "email" and "password".');
  }
  return { email, password };
}

function isUser(value: unknown): value is AuthenticatedUser {
  const user = value as Partial<AuthenticatedUser> | null;
  return typeof user?.id === 'string' && typeof user.email === 'string' && typeof user.role === 'string';
}

/**
 * `POST /api/auth/login`, answered by the gateway: user-service checks the credentials, the gateway issues
 * the token. The body is parsed here only; proxied routes must never have their body consumed.
 */
export function createLogin(options: LoginOptions): Middleware[] {
  const timeoutMs = options.timeoutMs ?? 5000;
  const parseJson = bodyParser({ enableTypes: ['json'], jsonLimit: options.bodyLimitBytes, encoding: 'utf-8' });

  async function requireJson(ctx: Parameters<Middleware>[0], next: () => Promise<unknown>) {
    if (!ctx.is('application/json')) throw new GatewayError('unsupported_media_type', 'Login expects Content-Type: application/json.');
    await next();
  }

  async function login(ctx: Parameters<Middleware>[0]) {
    const credentials = readCredentials(ctx.request.body);
    const instance = options.users.pick();
    if (!instance) throw new GatewayError('upstream_unavailable', 'No healthy instance of the users service.');
    const checkUrl = instance.origin + CREDENTIALS_CHECK_PATH;
    const span = startUpstreamSpan(options.tracer, { method: 'POST', instance, path: CREDENTIALS_CHECK_PATH, service: 'users' });
    let response: Response;
    try {
      response = await fetch(checkUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json', [HEADER.requestId]: ctx.state.requestId, ...traceHeaders(span, context.active()) },
        body: JSON.stringify(credentials),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (error) {
      const failure = upstreamFailure('users', error);
      const outcome = failure.code === 'upstream_timeout' ? 'timeout' : failure.code === 'upstream_refused' ? 'refused' : 'reset';
      endUpstreamSpan(span, outcome, undefined, error);
      options.users.reportFailure(instance, outcome);
      throw failure;
    }
    endUpstreamSpan(span, 'ok', response.status);
    options.users.reportSuccess(instance);
    if (response.status === 401) {
      await response.body?.cancel();
      throw new GatewayError('invalid_credentials', 'The email or password is wrong.');
    }
    const user: unknown = response.ok ? await response.json().catch(() => undefined) : undefined;
    if (!isUser(user)) {
      await response.body?.cancel();
      throw new GatewayError('upstream_bad_response', `The users service answered the credential check with ${response.status}.`);
    }
    ctx.state.user = user;
    const { token, expiresIn } = await options.tokens.issue(user);
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { token, tokenType: 'Bearer', expiresIn, user: { id: user.id, email: user.email, role: user.role } };
  }

  return [requireJson, parseJson, login];
}
