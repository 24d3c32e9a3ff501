import { hash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { ConsumerConfig } from './config';

/**
 * API-key consumers: who holds which key, and the one check of a presented key.
 *
 * Keys are stored as SHA-256 hashes, never in clear. A fast unsalted hash is the right tool here, as for
 * Stripe's and GitHub's tokens: the gateway only accepts keys it generated from 32 random bytes (256 bits),
 * so there is no dictionary to try and a salt or a slow KDF (scrypt, argon2) would protect nothing; it would
 * only cost CPU on every request. Unsalted hashes also make the lookup a map get by hash instead of a scrypt
 * per declared key. A leaked config file therefore reveals no usable key. (Human-chosen passwords are a
 * different thing and must never be declared here.)
 *
 * Timing: the lookup is by the hash of the presented key, so how long it takes depends on that hash, never
 * on a stored key's bytes an attacker could learn one at a time (finding a key from the hash prefixes it
 * matches would mean inverting SHA-256). The match is then confirmed with `timingSafeEqual`.
 */

/** What the gateway's keys start with, so secret scanners and people recognise one (`kgw_` + 43 base64url). */
export const API_KEY_PREFIX = 'kgw_';

/** Random bytes per generated key: 256 bits, beyond any guessing. */
const KEY_BYTES = 32;

/**
 * The shape of any key accepted on the wire: 16-256 characters of the token68 alphabet (RFC 9110 11.2).
 * Anything else (a 10 KB value, control characters, non-ASCII) is refused before it is hashed or logged.
 */
const KEY_SYNTAX = /^[A-Za-z0-9._~+/=-]{16,256}$/;

/** The hash form of config `consumers[].keys[].hash`. */
const HASH_PREFIX = 'sha256:';

/** An API-key holder, as authorization and the services see it. */
export interface Consumer {
  readonly id: string;
  readonly role: string;
}

/** Why a key was refused. The client hears the same 401 for each, so it cannot tell a revoked key from a wrong one. */
export type ApiKeyRejection = 'malformed' | 'unknown' | 'revoked';

export type ApiKeyVerdict = { readonly ok: true; readonly consumer: Consumer } | { readonly ok: false; readonly reason: ApiKeyRejection };

export interface ConsumerRegistry {
  /** Declared consumers with their own rate limit, for the caller limiter. */
  readonly consumers: readonly ConsumerConfig[];
  /** The consumer a presented key belongs to, or why it is refused. */
  verify(key: string): ApiKeyVerdict;
}

/** A new random key, for `npm run apikey`. */
export function generateApiKey(): string {
  return API_KEY_PREFIX + randomBytes(KEY_BYTES).toString('base64url');
}

/** Whether a key has the shape the gateway accepts on the wire (a key of any other shape can never match). */
export function isWellFormedApiKey(key: string): boolean {
  return KEY_SYNTAX.test(key);
}

/** The value to declare in `consumers[].keys[].hash` for a key. */
export function hashApiKey(key: string): string {
  return HASH_PREFIX + hash('sha256', key, 'hex');
}

interface KeyEntry {
  digest: Buffer;
  consumer: Consumer;
  revoked: boolean;
}

export function createConsumerRegistry(consumers: readonly ConsumerConfig[]): ConsumerRegistry {
  const byDigest = new Map<string, KeyEntry>();
  for (const declared of consumers) {
    const consumer: Consumer = Object.freeze({ id: declared.id, role: declared.role });
    for (const key of declared.keys) {
      const hex = key.hash.slice(HASH_PREFIX.length);
      byDigest.set(hex, { digest: Buffer.from(hex, 'hex'), consumer, revoked: key.revoked });
    }
  }
  // Compared against when no entry matches, so an unknown key costs the same comparison as a known one.
  const decoy = Buffer.alloc(32);

  return {
    consumers,
    verify(key) {
      if (!isWellFormedApiKey(key)) return { ok: false, reason: 'malformed' };
      // crypto.hash, one call per request instead of a Hash object (createHash).
      const digest = hash('sha256', key, 'buffer');
      const entry = byDigest.get(digest.toString('hex'));
      const matched = timingSafeEqual(entry?.digest ?? decoy, digest) && entry !== undefined;
      if (!matched) return { ok: false, reason: 'unknown' };
      if (entry.revoked) return { ok: false, reason: 'revoked' };
      return { ok: true, consumer: entry.consumer };
    },
  };
}
