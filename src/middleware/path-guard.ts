import { percentDecodedLeniently } from '../../otel/percent-decoding';
import type { Middleware } from 'koa';
import { GatewayError } from '../errors';
import { refuseAtOnce, type Refuse } from './rate-limit';

/** Longest path accepted, bytes of the raw (still percent-encoded) path. */
export const MAX_PATH_LENGTH = 2048;

/** A whole segment that is `.` or `..` (what splitting on `/` would find, without building the array per request). */
const DOT_SEGMENT = /(?:^|\/)\.{1,2}(?:\/|$)/;
/** A segment ending in a dot or white space, which Windows and IIS strip (`admin.`, `admin%20` are `admin` there). */
const TRAILING_DOT_OR_SPACE = /[.\s](?:\/|$)/;

/**
 * The characters whose simple case mapping is ASCII (Unicode's UnicodeData): `İ` (U+0130) lower-cases to `i`, `ı`
 * (U+0131) and `ſ` (U+017F) upper-case to `I` and `S`, the Kelvin sign (U+212A) lower-cases to `k`. A router that
 * matches without case by them (Java's equalsIgnoreCase, .NET's OrdinalIgnoreCase, Go's EqualFold) reads
 * `/ſecret` as `/secret`, a route the gateway, whose route key is lower-cased by ASCII rules, never matched it to.
 */
const CASE_MAPS_TO_ASCII = /[\u0130\u0131\u017f\u212a]/;
const NON_ASCII = /[^\u0000-\u007f]/;
const ASCII = /[\u0000-\u007f]/;

/**
 * Whether a decoded path holds a character that reads as ASCII to a server that matches routes without case
 * (CASE_MAPS_TO_ASCII) or compatibility-normalises the path (NFKC: fullwidth `ｓ`, `．．／`, ligatures, superscript
 * digits): each one a spelling of an ASCII path the gateway routed as another. Checked character by character, so
 * that characters NFKC would compose with their neighbours cannot hide one.
 */
function readsAsAscii(decoded: string): boolean {
  if (!NON_ASCII.test(decoded)) return false;
  if (CASE_MAPS_TO_ASCII.test(decoded)) return true;
  // A string NFKC leaves as it is has no character NFKC changes (compatibility characters never come back by
  // composition): one call for the text of a CJK or accented path, not one per character.
  if (decoded.normalize('NFKC') === decoded) return false;
  for (const character of decoded) {
    if (character.charCodeAt(0) > 0x7f && ASCII.test(character.normalize('NFKC'))) return true;
  }
  return false;
}

/**
 * Why a path is refused, or undefined when it is safe to route. Routing and the upstream see the same raw
 * path, so anything that a server behind us could decode into a different route is refused rather than
 * "fixed": dot segments (plain or encoded), encoded slashes and backslashes, empty segments, NUL and control
 * characters, malformed or overlong UTF-8 (which `decodeURIComponent` rejects), segments ending in a dot or
 * white space, an encoded `?` or `#`, characters that read as ASCII once case-folded or normalised (readsAsAscii),
 * and any `%` left after one decoding: routing decides on one decoding, and a second one behind
 * the gateway (another proxy or sidecar that normalises, a framework decoding a parameter its router already
 * decoded) turns `/api/%2561dmin` into `/api/admin`, a route with other rules, whatever character is
 * double-encoded (Spring's StrictHttpFirewall refuses an encoded `%` by default for this reason).
 */
export function pathProblem(rawPath: string): string | undefined {
  if (rawPath.length > MAX_PATH_LENGTH) return `the path is longer than ${MAX_PATH_LENGTH} characters`;
  if (!rawPath.startsWith('/')) return 'the path must start with /';
  // Without a `%` nothing is encoded: the path is its own decoding (decodeURIComponent, a call out of compiled code
  // into V8's runtime, and the encoded-slash match were ~2.6k instructions of every request whose path has none).
  const encoded = rawPath.includes('%');
  if (encoded && /%(2f|5c)/i.test(rawPath)) return 'encoded slashes are not allowed';
  // Delimiters of the same kind: a server or proxy behind the gateway that decodes the path (nginx's `$uri`) turns
  // `/api/users/%3F` into `/api/users/?`, the query of `/api/users`, a route with other rules.
  if (encoded && /%(3f|23)/i.test(rawPath)) return 'an encoded ? or # is not allowed';
  let decoded = rawPath;
  try {
    if (encoded) decoded = decodeURIComponent(rawPath);
  } catch {
    return 'the path is not valid percent-encoded UTF-8';
  }
  if (/[\u0000-\u001f\u007f]/.test(decoded)) return 'control characters are not allowed';
  if (decoded.includes('\\')) return 'backslashes are not allowed';
  if (decoded.includes('//')) return 'empty path segments are not allowed';
  if (DOT_SEGMENT.test(decoded)) return 'dot segments are not allowed';
  // Matrix parameters: Tomcat, Jetty and Spring strip `;...` from a segment before routing, so
  // `/admin;x=1` would be `/admin` there but not here (Spring's StrictHttpFirewall refuses them too).
  if (decoded.includes(';')) return 'path parameters (;) are not allowed';
  if (decoded.includes('%')) return 'double-encoded characters (an encoded %) are not allowed';
  if (TRAILING_DOT_OR_SPACE.test(decoded)) return 'a path segment may not end in a dot or white space';
  // Only an encoded path can hold one: HTTP/1.1's parser and the HTTP/2 request-target check refuse raw non-ASCII.
  if (encoded && readsAsAscii(decoded)) return 'characters that read as ASCII when case-folded or normalised (NFKC) are not allowed';
  return undefined;
}

/**
 * Query parameters that frameworks read as the request's real method: `_method` (Laravel and Symfony, Express's
 * method-override as usually configured, Rails' forms) and the method-override header names some accept as
 * parameters too. The gateway decides auth, roles and `methods` on the method it sees, so a `POST` carrying
 * `_method=DELETE` would be a DELETE the gateway never checked; the headers are removed (REQUEST_REWRITE_HEADERS),
 * a parameter cannot be without changing the query, so the request is refused.
 */
const METHOD_OVERRIDE_PARAMETERS = new Set(['_method', 'x_http_method_override', 'x_http_method', 'x_method_override']);

/**
 * Whether a query carries a method-override parameter, under any spelling a framework could read as one:
 * percent-encoded, any case, `-` or `_`, and the `.`, space and `[` PHP turns into `_` in parameter names
 * (`.method` is `$_GET['_method']`), with an array suffix (`_method[]`), or cut short by a NUL: PHP keeps a
 * decoded name as a C string, so `_method%00` and `_method%00anything` are `$_GET['_method']` too.
 */
export function methodOverrideParameter(querystring: string): boolean {
  if (querystring === '') return false;
  // `;` too: Rack and older CGI parsers split pairs on it.
  for (const pair of querystring.split(/[&;]/)) {
    // Decoded as PHP does, byte by byte, whatever follows: a name whose escapes are not UTF-8 (`_method%00%FF`)
    // is still read up to its NUL there (bad bytes become U+FFFD). Without a throw per name: Node's
    // querystring.unescape tries decodeURIComponent first, and 16 KiB of `%=&` cost ~20 ms in its exceptions.
    const name = percentDecodedLeniently(pair.split('=', 1)[0]!.replaceAll('+', ' '));
    const nul = name.indexOf('\0');
    const folded = withoutArraySuffix((nul === -1 ? name : name.slice(0, nul)).toLowerCase().trimStart()).replace(/[-. []/g, '_');
    if (METHOD_OVERRIDE_PARAMETERS.has(folded)) return true;
  }
  return false;
}

/**
 * A parameter name without the `[...]` that ends it (`_method[]`, `_method[x]`: the first `[` after the last `]`
 * but the final one), as `/\[[^\]]*\]$/` cut it. By index: the expression retried from every `[` of a name made of
 * them (16 KiB of query held the event loop 0.2-0.3 s), before any route or credential was looked at.
 */
export function withoutArraySuffix(name: string): string {
  if (!name.endsWith(']')) return name;
  const close = name.lastIndexOf(']', name.length - 2);
  const open = name.indexOf('[', close + 1);
  return open === -1 ? name : name.slice(0, open);
}

/**
 * Refuses ambiguous paths (400 bad_path) and method overrides in the query (400 bad_request) before anything
 * routes, limits or forwards on them.
 */
export function createPathGuard(options: { refuse?: Refuse } = {}): Middleware {
  const refuse = options.refuse ?? refuseAtOnce;
  // Not async: nothing to do after next(), so no promise and await of its own per request.
  return function guardPath(ctx, next) {
    // Too long is no ambiguity: 414 (RFC 9110 15.5.15), which tells a client shortening it may help; it was 400.
    if (ctx.path.length > MAX_PATH_LENGTH) return refuse(ctx, new GatewayError('uri_too_long', `The path is longer than ${MAX_PATH_LENGTH} characters.`));
    const problem = pathProblem(ctx.path);
    if (problem !== undefined) return refuse(ctx, new GatewayError('bad_path', `${problem}.`));
    if (methodOverrideParameter(ctx.querystring)) return refuse(ctx, new GatewayError('bad_request', 'A method override in the query (_method, X-HTTP-Method-Override) is not accepted: send the method itself.'));
    return next();
  };
}
