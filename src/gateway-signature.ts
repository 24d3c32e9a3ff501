import { createHmac, timingSafeEqual } from 'node:crypto';
import { HEADER } from '../otel/wire-names';

/**
 * The gateway's signature on what it tells a service (`X-Gateway-Signature`).
 *
 * The services believe the identity headers (`X-User-Id`, `-Role`, `-Email`, `X-Consumer-Id`) because the gateway
 * strips clients' own and writes them after verifying a token. That alone holds only while nothing but the gateway
 * can reach a service: any pod, container or host that could would be whoever it said it was. With a key shared by
 * the gateway and the services (`GATEWAY_SIGNING_KEY`), every request the gateway sends carries an HMAC-SHA256 of
 * those headers and a time, and a service answers only requests whose signature verifies. A service calling
 * another within a request passes the headers and the signature on as it received them.
 *
 * Header: `t=<unix seconds>,v1=<base64url HMAC-SHA256>`, over
 * `koa-gateway-signature-v1\n<t>\n<x-user-id>\n<x-user-role>\n<x-user-email>\n<x-consumer-id>` (absent headers
 * are empty; header values cannot hold a line feed, so the fields cannot run into each other). A signature is
 * accepted for SIGNATURE_MAX_AGE_SECONDS either side of `t` (clock skew, and calls made late in a long request).
 * It vouches for the identity, not for one request: a party that can read the gateway's traffic to the services
 * could replay it within that window, as it could read the headers themselves.
 */

/** The headers a signature covers, in signing order. */
export const SIGNED_HEADERS = [HEADER.userId, HEADER.userRole, HEADER.userEmail, HEADER.consumerId] as const;

/** How far from its time a signature is still accepted, s. */
export const SIGNATURE_MAX_AGE_SECONDS = 300;

/** Shortest key accepted, characters (the JWT secret's production minimum). */
export const SIGNING_KEY_MIN_LENGTH = 32;

/** Why production refuses a secret `isGuessableSecret` finds. */
export const GUESSABLE_SECRET_RULE = 'too regular to be a secret (fewer than 8 different characters): use random bytes, e.g. openssl rand -base64 48';

/** A secret long enough but made of a handful of characters (32 spaces, `aaaa...`, `abcabc...`): not key material. */
export function isGuessableSecret(secret: string): boolean {
  return new Set(secret.trim()).size < 8;
}

/** The gateway re-signs an identity once per period, s: one HMAC per identity per minute, not per request. */
const SIGNING_PERIOD_SECONDS = 60;

/** Identities whose signature is kept for the current period; past it the table is emptied (bounded memory). */
const MAX_KEPT_SIGNATURES = 10_000;

const PREFIX = 'koa-gateway-signature-v1';

/** The values of the signed headers (a missing one as ''), in SIGNED_HEADERS order. */
export type SignedValues = readonly [userId: string, userRole: string, userEmail: string, consumerId: string];

function mac(key: string, time: number, values: SignedValues): Buffer {
  return createHmac('sha256', key).update(`${PREFIX}\n${time}\n${values.join('\n')}`).digest();
}

/** The `X-Gateway-Signature` value for the signed headers' values. */
export type GatewaySigner = (values: SignedValues) => string;

/** Signs the values the gateway sends; the same values give the same header for a minute. */
export function createGatewaySigner(key: string, now: () => number = Date.now): GatewaySigner {
  let period = -1;
  let kept = new Map<string, string>();
  return (values) => {
    const time = Math.floor(now() / 1000 / SIGNING_PERIOD_SECONDS) * SIGNING_PERIOD_SECONDS;
    if (time !== period || kept.size >= MAX_KEPT_SIGNATURES) {
      period = time;
      kept = new Map();
    }
    const id = values.join('\n');
    let header = kept.get(id);
    if (header === undefined) {
      header = `t=${time},v1=${mac(key, time, values).toString('base64url')}`;
      kept.set(id, header);
    }
    return header;
  };
}

const HEADER_FORMAT = /^t=(\d{1,12}),v1=([A-Za-z0-9_-]{43})$/;

/** Why a request's signature was not accepted; undefined when it was. */
export type SignatureProblem = 'missing' | 'malformed' | 'expired' | 'mismatch';

/**
 * Checks a request's `X-Gateway-Signature` against its signed headers (`read(name)`: the header's one value, or
 * undefined; a repeated header is not one value and fails). Constant time in the MAC comparison.
 */
export function verifyGatewaySignature(key: string, read: (name: string) => string | string[] | undefined, now: number = Date.now()): SignatureProblem | undefined {
  const header = read(HEADER.gatewaySignature);
  if (header === undefined) return 'missing';
  const parts = typeof header === 'string' ? HEADER_FORMAT.exec(header) : null;
  if (!parts) return 'malformed';
  const time = Number(parts[1]);
  if (Math.abs(now / 1000 - time) > SIGNATURE_MAX_AGE_SECONDS) return 'expired';
  const values: string[] = [];
  for (const name of SIGNED_HEADERS) {
    const value = read(name) ?? '';
    if (typeof value !== 'string') return 'mismatch';
    values.push(value);
  }
  const expected = mac(key, time, values as unknown as SignedValues);
  const given = Buffer.from(parts[2]!, 'base64url');
  return given.length === expected.length && timingSafeEqual(given, expected) ? undefined : 'mismatch';
}
