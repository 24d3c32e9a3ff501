import { createHmac } from 'node:crypto';
import { generateKeyPair, SignJWT } from 'jose';
import { TEST_JWT_SECRET } from './test-config';

const encoder = new TextEncoder();
const base64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

export interface ForgeOptions {
  secret?: string;
  alg?: 'HS256' | 'HS384' | 'HS512';
  issuer?: string;
  audience?: string;
  subject?: string | null;
  /** Seconds from now; negative for an expired token. */
  expiresInSeconds?: number;
  /** Seconds from now of `iat` (default -60). */
  issuedAtSeconds?: number;
  claims?: Record<string, unknown>;
}

/** Signs a token the way the gateway does, with any field replaced to forge a bad one. */
export async function signToken(options: ForgeOptions = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const jwt = new SignJWT({ email: 'mallory@example.com', role: 'admin', ...options.claims })
    .setProtectedHeader({ alg: options.alg ?? 'HS256', typ: 'JWT' })
    .setIssuer(options.issuer ?? 'koa-gateway')
    .setAudience(options.audience ?? 'koa-gateway-api')
    .setIssuedAt(now + (options.issuedAtSeconds ?? -60))
    .setExpirationTime(now + (options.expiresInSeconds ?? 600));
  if (options.subject !== null) jwt.setSubject(options.subject ?? '1');
  return jwt.sign(encoder.encode(options.secret ?? TEST_JWT_SECRET));
}

/** An unsigned token (`alg: none`) with otherwise perfect claims. */
export function unsignedToken(): string {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: '1', email: 'mallory@example.com', role: 'admin', iss: 'koa-gateway', aud: 'koa-gateway-api', iat: now, exp: now + 600 };
  return `${base64url({ alg: 'none', typ: 'JWT' })}.${base64url(claims)}.`;
}

/**
 * An HS256 token signed with the gateway's test secret whose header marks a parameter critical (`crit`) that no
 * verifier understands (jose's signer refuses to make one, so it is signed by hand).
 */
export function unsupportedCritToken(): string {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: '1', email: 'mallory@example.com', role: 'admin', iss: 'koa-gateway', aud: 'koa-gateway-api', iat: now, exp: now + 600 };
  const signingInput = `${base64url({ alg: 'HS256', typ: 'JWT', crit: ['x-policy'], 'x-policy': 'strict' })}.${base64url(claims)}`;
  return `${signingInput}.${createHmac('sha256', TEST_JWT_SECRET).update(signingInput).digest('base64url')}`;
}

/** An RS256 token from a key the gateway has never seen (algorithm confusion attempt). */
export async function rs256Token(): Promise<string> {
  const { privateKey } = await generateKeyPair('RS256');
  return new SignJWT({ email: 'mallory@example.com', role: 'admin' })
    .setProtectedHeader({ alg: 'RS256' })
    .setSubject('1')
    .setIssuer('koa-gateway')
    .setAudience('koa-gateway-api')
    .setIssuedAt()
    .setExpirationTime('10m')
    .sign(privateKey);
}
