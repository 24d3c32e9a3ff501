import { createHmac, createSecretKey, hash, timingSafeEqual, type KeyObject } from 'node:crypto';
import { HEADER, SIGNATURE_CHALLENGE_SCHEME } from '../otel/wire-names';

/**
 * The gateway's signature on what it tells a service (`X-Gateway-Signature`).
 *
 * The services believe the identity headers (`X-User-Id`, `-Role`, `-Email`, `X-Consumer-Id`) because the gateway
 * strips clients' own and writes them after verifying a token. That alone holds only while nothing but the gateway
 * can reach a service: any pod, container or host that could would be whoever it said it was. With a key of the
 * gateway's (`GATEWAY_SIGNING_KEY`) and one per service derived from it (serviceSigningKey, the service's own
 * `GATEWAY_SIGNING_KEY`), every request the gateway sends carries an HMAC-SHA256, under that service's key, of those
 * headers, the request's method and target, and a time, and a service answers only requests whose signature verifies.
 *
 * Header: `t=<unix seconds>,v4=<base64url HMAC-SHA256>` (a service's call to another: `t=...,by=<caller>,v4=...`), over
 * `koa-gateway-signature-v4\n<t>\n<audience>\n<method>\n<target>\n<x-request-id>\n<x-user-id>\n<x-user-role>\n<x-user-email>\n<x-consumer-id>`:
 * the service the request is for (its name in the gateway's `services`: `users`, `orders`, ...), the method as
 * sent, the request target as sent (path and query, byte for byte; for gRPC `POST` and the call's path,
 * `/<package.Service>/<Method>`), absent headers empty. Neither a request line nor a header value can hold a
 * line feed, so the fields cannot run into each other. A signature is accepted for SIGNATURE_MAX_AGE_SECONDS
 * either side of `t` (clock skew). The MAC is written one way only (base64url without padding, its last
 * character's unused bits zero): four spellings of one MAC all verified.
 *
 * The request id is signed: the services believe the X-Request-Id of a request whose signature verifies, and log
 * and answer under it and pass it on; unsigned, a request captured on the way to a service could be sent again under
 * any id, and its log lines and onward calls pinned on another request's.
 *
 * The service is signed (v4): each service takes only signatures made for it (`GATEWAY_SIGNATURE_AUDIENCE`). Without
 * it a signature was good on every service answering the same method and target: one the gateway sent to any
 * upstream (a partner's service behind a route, one that logs its headers, a compromised pod) could be sent on to
 * order-service as that user, with any body, for five minutes. A v3 signature (the same without the service) still
 * verifies for this release, so that services updated first take the old gateway's during a rolling update; the
 * gateway and the services of this release make v4 only.
 *
 * Why the method and target are signed: a signature over the identity alone was a bearer token for that identity
 * on every service, path and method. Whoever saw one (a service the request was forwarded to, anyone reading the
 * traffic, the anonymous signature every public route and login carried) could send it straight to a service's
 * `/internal/*` endpoints or any other path for five minutes. Signed with its request and its service, it is good for
 * that method and target on that service only. A service calling another within a request signs its own call, over
 * the identity it verified, with a key that service derived for it as a caller (callerSigningKey; order-service's
 * `USER_SERVICE_SIGNING_KEY` and `NOTIF_SERVICE_SIGNING_KEY`), which it believes for the calls that caller makes only
 * (`by=<caller>` in the header; CallerRules). The body is not signed (the gateway streams it): someone
 * who reads the traffic to the services could still repeat a request with another body within the window, so keep
 * the services off every network but the gateway's as well.
 */

/** The headers a signature covers, in signing order. */
export const SIGNED_HEADERS = [HEADER.userId, HEADER.userRole, HEADER.userEmail, HEADER.consumerId] as const;

/** How far from its time a signature is still accepted, s. */
export const SIGNATURE_MAX_AGE_SECONDS = 300;

/**
 * What a service's name in the gateway's config (`services.<name>`) may be: lower-case letters, digits and dashes,
 * from a letter. The name is the audience of the gateway's signatures for that service, which the service is told
 * as `GATEWAY_SIGNATURE_AUDIENCE`: one rule on both sides.
 */
export const SERVICE_KEY_PATTERN = /^[a-z][a-z0-9-]*$/;

/** Shortest key accepted, characters (the JWT secret's production minimum). */
export const SIGNING_KEY_MIN_LENGTH = 32;

/** Why production refuses a secret `isGuessableSecret` finds. */
export const GUESSABLE_SECRET_RULE = 'too regular to be a secret (fewer than 8 different characters, or one piece repeated): use random bytes, e.g. openssl rand -base64 48';

/**
 * Why production refuses `secret` as a key (the JWT secret, the signing key, the one a service also accepts), or
 * undefined: guessable, or with blanks or a line break at an end. A key is every byte of the value: a secret written
 * with `echo` (or read from a mounted file) ends in a newline the operator does not see, which every service would
 * have to hold too, and which hid a signing key equal to the JWT secret from the check that they differ.
 */
export function keyMaterialProblem(secret: string): string | undefined {
  if (isGuessableSecret(secret)) return `is ${GUESSABLE_SECRET_RULE}`;
  if (secret !== secret.trim()) return 'must not begin or end with blanks or a line break (a newline from echo or a mounted file?): they would be part of the key';
  return undefined;
}

/**
 * A secret long enough but made of a handful of characters (32 spaces, `aaaa...`, `abcabc...`), or of one piece
 * said twice or more (`01234567` four times, a password doubled to reach the length): not key material.
 */
export function isGuessableSecret(secret: string): boolean {
  const trimmed = secret.trim();
  return new Set(trimmed).size < 8 || shortestPeriod(trimmed) * 2 <= trimmed.length;
}

/**
 * The least p with text[i] === text[i - p] for every i >= p (text's length when none is shorter): Knuth-Morris-Pratt's
 * failure function, so linear in the length of a value the environment may make long.
 */
function shortestPeriod(text: string): number {
  const border = new Array<number>(text.length).fill(0);
  for (let at = 1, matched = 0; at < text.length; at++) {
    while (matched > 0 && text[at] !== text[matched]) matched = border[matched - 1]!;
    if (text[at] === text[matched]) matched++;
    border[at] = matched;
  }
  return text.length - (border[text.length - 1] ?? 0);
}

const PREFIX = 'koa-gateway-signature-v4';

/** The values of the signed headers (a missing one as ''), in SIGNED_HEADERS order. */
export type SignedValues = readonly [userId: string, userRole: string, userEmail: string, consumerId: string];

/** The request line a signature is for: its method and its target (path and query) as sent. */
export interface RequestLine {
  method: string;
  target: string;
}

/**
 * A request line and the service it is for, by its name in the gateway's `services` (`users`, `orders`, ...): what
 * a service checks a signature against, with its own name (`GATEWAY_SIGNATURE_AUDIENCE`).
 */
export interface AddressedRequest extends RequestLine {
  audience: string;
}

/** The request a signature is for: its service and request line, and the X-Request-Id it carries ('' for none). */
export interface SignedRequest extends AddressedRequest {
  requestId: string;
}

function message(time: number, request: SignedRequest, values: SignedValues): string {
  // The four values written out, not joined: Array.prototype.join was ~1.2k instructions of each signature.
  return `${PREFIX}\n${time}\n${request.audience}\n${request.method}\n${request.target}\n${request.requestId}\n${values[0]}\n${values[1]}\n${values[2]}\n${values[3]}`;
}

/**
 * The message of a v3 signature (before the service was signed): verified, never made, so that services updated
 * before the gateway take its signatures during a rolling update. To be dropped with the release after this one.
 */
function messageV3(time: number, request: SignedRequest, values: SignedValues): string {
  return `koa-gateway-signature-v3\n${time}\n${request.method}\n${request.target}\n${request.requestId}\n${values[0]}\n${values[1]}\n${values[2]}\n${values[3]}`;
}

function mac(key: string | KeyObject, text: string): Buffer {
  return createHmac('sha256', key).update(text).digest();
}

/** SHA-256's block, bytes: HMAC pads a key to it (RFC 2104). */
const SHA256_BLOCK_BYTES = 64;

/** SHA-256's digest, bytes. */
const SHA256_DIGEST_BYTES = 32;

/**
 * HMAC-SHA256 (RFC 2104) of a message with `key`, in base64url: the same MAC as createHmac's, from two one-shot
 * `crypto.hash` calls over the key's pads made once. createHmac was ~30k instructions per request, most of them not
 * SHA-256's: a JavaScript Hmac object and an OpenSSL context made and freed each time, the key's pads hashed again
 * (a KeyObject does not keep them), the MAC made a Buffer and then a string (bench/RESULTS.md, perf78); this is
 * ~19k. The inner pad goes before the message as text, so it must be ASCII: the key is at most one block of ASCII
 * (any generated key: base64, hex), whose pads are; any other key takes createHmac.
 */
export function keyedMac(key: string): (text: string) => string {
  const bytes = Buffer.from(key, 'utf8');
  if (bytes.length > SHA256_BLOCK_BYTES || bytes.some((byte) => byte > 0x7f)) {
    // A KeyObject made once: given the string, createHmac converts it to key bytes on every call.
    const secret = createSecretKey(bytes);
    return (text) => createHmac('sha256', secret).update(text).digest('base64url');
  }
  const pad = (byte: number) => Array.from({ length: SHA256_BLOCK_BYTES }, (_, index) => (bytes[index] ?? 0) ^ byte);
  // The key's bytes, zero-padded to a block, XOR 0x36 (ipad), as the ASCII text they are; and XOR 0x5c (opad), with
  // room after it for the inner hash.
  const innerPad = String.fromCharCode(...pad(0x36));
  const outer = Buffer.alloc(SHA256_BLOCK_BYTES + SHA256_DIGEST_BYTES);
  outer.set(pad(0x5c));
  return (text) => {
    // The inner hash as a latin1 string, one character per byte: a Buffer made in C++ per call cost ~4k instructions.
    outer.write(hash('sha256', innerPad + text, 'binary'), SHA256_BLOCK_BYTES, 'latin1');
    return hash('sha256', outer, 'base64url');
  };
}

/** The `X-Gateway-Signature` value of one request carrying the signed headers' values. */
export type GatewaySigner = (request: SignedRequest, values: SignedValues) => string;

/**
 * Signs each request sent with one key, the key of the service it is for (a service's calls to another, whose key
 * it was given): one HMAC per request (a few microseconds), since no two requests share a method, target and
 * identity long enough to be worth a table.
 */
export function createGatewaySigner(key: string, now: () => number = Date.now): GatewaySigner {
  const mac = keyedMac(key);
  return signerWith(() => mac, now);
}

/**
 * The gateway's signer: each request signed with the key of the service it is for (`request.audience`), derived from
 * the gateway's key (serviceSigningKey) the first time that service is signed for. The audiences are the config's
 * service names, never a client's words, so the table stays as small as the config.
 */
export function createServiceKeySigner(gatewayKey: string, now: () => number = Date.now): GatewaySigner {
  const macs = new Map<string, (text: string) => string>();
  return signerWith((audience) => {
    let mac = macs.get(audience);
    if (mac === undefined) macs.set(audience, (mac = keyedMac(serviceSigningKey(gatewayKey, audience))));
    return mac;
  }, now);
}

function signerWith(macFor: (audience: string) => (text: string) => string, now: () => number, by = ''): GatewaySigner {
  return (request, values) => {
    const time = Math.floor(now() / 1000);
    return `t=${time},${by}v4=${macFor(request.audience)(message(time, request, values))}`;
  };
}

/**
 * The signer of a service's calls to another (order-service's to user-service), with the key that service gave this
 * caller (callerSigningKey): each signature names its caller (`by=<caller>`), and the service it is for believes it
 * only for the calls it lets that caller make (CallerRules), never as the gateway's.
 */
export function createCallerSigner(callerKey: string, caller: string, now: () => number = Date.now): GatewaySigner {
  if (!SERVICE_KEY_PATTERN.test(caller)) throw new Error(`a caller's name is a service name (lower case letters, digits and dashes, from a letter), not ${JSON.stringify(caller)}`);
  const mac = keyedMac(callerKey);
  return signerWith(() => mac, now, `by=${caller},`);
}

/** What a service's key is derived under (serviceSigningKey); a new derivation gets a new label. */
const SERVICE_KEY_LABEL = 'koa-gateway-service-key-v1';

/**
 * The key of one service (its name in the gateway's `services`): HMAC-SHA256 of `koa-gateway-service-key-v1\n<name>`
 * under the gateway's key, in base64url without padding (43 characters). Each service holds only its own key
 * (`GATEWAY_SIGNING_KEY` of that service), and the gateway signs its requests with it: a service, or whoever takes
 * one over, can sign for itself alone, never as the gateway to another service (with one key shared by all, any
 * service's key signed for every other; the audience only named the service, it did not keep one from signing for
 * another). A service calling another signs with a key that one derives for it (callerSigningKey), good for the
 * calls it lets that caller make only. The gateway keeps one key and derives the rest, so its own config is unchanged; `npm run service-key`
 * prints a service's, as does `openssl` (README "Services trust the gateway").
 */
export function serviceSigningKey(gatewayKey: string, service: string): string {
  return createHmac('sha256', gatewayKey).update(`${SERVICE_KEY_LABEL}\n${service}`).digest('base64url');
}

/** What a caller's key is derived under (callerSigningKey); a new derivation gets a new label. */
const CALLER_KEY_LABEL = 'koa-gateway-caller-key-v1';

/**
 * The key a service gives another to sign its calls with (order-service's for user-service): HMAC-SHA256 of
 * `koa-gateway-caller-key-v1\n<caller>` under the called service's own key, base64url without padding. The called
 * service derives it from its own key(s) and believes what it signs (`by=<caller>`) only for the calls its rules let
 * that caller make (CallerRules): where order-service held user-service's own key, it could sign anything for it as
 * anyone (the user list as an admin, the credential check); with this key it can ask for the signed user's own record,
 * the one call it makes. One-way: the caller's key does not give the service's.
 */
export function callerSigningKey(serviceKey: string, caller: string): string {
  return createHmac('sha256', serviceKey).update(`${CALLER_KEY_LABEL}\n${caller}`).digest('base64url');
}

/** A caller's key for a service, from the gateway's key (what `npm run service-key -- --caller` prints). */
export function callerKeyFromGatewayKey(gatewayKey: string, service: string, caller: string): string {
  return callerSigningKey(serviceSigningKey(gatewayKey, service), caller);
}

/**
 * Whether a service lets a caller make one call: its request line (method and target as received) and the identity
 * the call is signed for (SignedValues: the user id first).
 */
export type CallRule = (line: RequestLine, values: SignedValues) => boolean;

/** The calls a service takes from each other service, by the caller's name (what its signatures say as `by=`). */
export type CallerRules = Readonly<Record<string, CallRule>>;

/** A service's callers as verifyGatewaySignature checks them: each caller's keys (derived from the service's) and its rule. */
export type CallerKeys = ReadonlyMap<string, { keys: readonly string[]; allows: CallRule }>;

/** The keys each caller signs with, derived from every key the service believes (its own, and one it also accepts in a rotation). */
export function callerKeysOf(serviceKeys: readonly string[], rules: CallerRules): CallerKeys {
  return new Map(Object.entries(rules).map(([caller, allows]) => [caller, { keys: serviceKeys.map((key) => callerSigningKey(key, caller)), allows }]));
}

/** A challenge of the scheme a service's refusal of the gateway's signature names, among any others, in any case. */
const SIGNATURE_CHALLENGE = new RegExp(`(?:^|,)[ \\t]*${SIGNATURE_CHALLENGE_SCHEME}(?:[ \\t,]|$)`, 'i');

/**
 * Whether a service's challenges (`WWW-Authenticate` values, over HTTP or in a gRPC call's trailers) refuse the
 * gateway's own signature (SIGNATURE_CHALLENGE_SCHEME), not a credential of the client's.
 */
export function challengesGatewaySignature(challenges: string | readonly string[] | undefined): boolean {
  if (challenges === undefined) return false;
  return SIGNATURE_CHALLENGE.test(typeof challenges === 'string' ? challenges : challenges.join(','));
}

/**
 * What a service's refusal of the gateway's signature means, for the operator's log line (never a client's answer:
 * it is the gateway's deployment's fault, and how it signs is not the client's to learn).
 */
export const SIGNATURE_REFUSED_HINT =
  "are the gateway's and the service's signing keys, or clocks, apart (a service holds its own key, derived from the gateway's: npm run service-key -- <its name>; never the gateway's own), or is the service's GATEWAY_SIGNATURE_AUDIENCE not its name in the gateway's services?";

/** What a service's refusal of another service's signed call means, for that caller's log line. */
export function callRefusedHint(variable: string, service: string, caller: string): string {
  return `is ${variable} the key ${service} gives ${caller} (npm run service-key -- --caller ${caller} ${service}), are the clocks apart, or is ${service} of a release before caller keys (it refuses by= signatures: update it before ${caller})?`;
}

/**
 * A time, a caller's name (a service's own call, callerSigningKey; none for the gateway's), the version, and 43
 * base64url characters, the last one's two unused bits zero: a 32-byte MAC as written, one spelling only.
 */
const HEADER_FORMAT = /^t=(\d{1,12}),(?:by=([a-z][a-z0-9-]*),)?v([34])=([A-Za-z0-9_-]{42}[AEIMQUYcgkosw048])$/;

/**
 * Why a request's signature was not accepted; undefined when it was. `outside-scope`: a caller's signature that
 * verifies, for a call its service's rules do not let it make (403, where the others are 401).
 */
export type SignatureProblem = 'missing' | 'malformed' | 'expired' | 'mismatch' | 'outside-scope';

/**
 * Checks a request's `X-Gateway-Signature` against the service checking it (`request.audience`, its own name), its
 * method and target as received, its request id and its signed headers (`read(name)`: the header's one value, or undefined; a repeated header is not one value and
 * fails). Constant time in the MAC comparison. `key` may be several: a signature made with any of them verifies (a
 * key rotation, when a service takes the next key, or still the previous one, beside its own:
 * GATEWAY_SIGNING_KEY_ACCEPTED).
 */
export function verifyGatewaySignature(key: string | readonly string[], line: AddressedRequest, read: (name: string) => string | string[] | undefined, now: number = Date.now(), callers?: CallerKeys): SignatureProblem | undefined {
  const header = read(HEADER.gatewaySignature);
  if (header === undefined) return 'missing';
  const parts = typeof header === 'string' ? HEADER_FORMAT.exec(header) : null;
  // A caller's signature is v4 only: there was no caller's before it.
  if (!parts || (parts[2] !== undefined && parts[3] !== '4')) return 'malformed';
  const caller = parts[2] === undefined ? undefined : callers?.get(parts[2]);
  // A caller this service takes no call from has no key here: its signature cannot verify.
  if (parts[2] !== undefined && caller === undefined) return 'mismatch';
  const time = Number(parts[1]);
  if (Math.abs(now / 1000 - time) > SIGNATURE_MAX_AGE_SECONDS) return 'expired';
  const requestId = read(HEADER.requestId) ?? '';
  if (typeof requestId !== 'string') return 'mismatch';
  const request: SignedRequest = { audience: line.audience, method: line.method, target: line.target, requestId };
  const values: string[] = [];
  for (const name of SIGNED_HEADERS) {
    const value = read(name) ?? '';
    if (typeof value !== 'string') return 'mismatch';
    values.push(value);
  }
  const given = Buffer.from(parts[4]!, 'base64url');
  const text = (parts[3] === '4' ? message : messageV3)(time, request, values as unknown as SignedValues);
  const matches = (each: string) => {
    const expected = mac(each, text);
    return given.length === expected.length && timingSafeEqual(given, expected);
  };
  if (caller !== undefined) {
    if (!caller.keys.some(matches)) return 'mismatch';
    return caller.allows(line, values as unknown as SignedValues) ? undefined : 'outside-scope';
  }
  return (typeof key === 'string' ? matches(key) : key.some(matches)) ? undefined : 'mismatch';
}
