import { percentDecodedLeniently } from './percent-decoding';

/**
 * Query secrets kept out of telemetry: the access log's `url`, the gateway's SERVER span's `url.query` and its
 * upstream CLIENT spans' `url.full`, and the services' SERVER spans' `url.query` (the gateway forwards the query
 * byte for byte, and the http instrumentation records it, redacting only a few exact names) all go through here.
 */

/** Query parameters whose values never reach a log (tokens in URLs are still tokens). */
// `sig`: Azure SAS and other signed URLs; `jwt`, `session`, `pwd`, `credential`, `assertion` (SAML), `otp`: the
// other names secrets travel under; `pass` (passphrase, pass), `sess` (PHPSESSID, sessid), `ticket` (CAS service
// tickets), `sid` (Socket.IO's and other session ids) and `hmac` too. A harmless name that contains one (`design`,
// `compass`, `inside`) is redacted too: only safer.
const SECRET_QUERY_PARAM = /token|pass|pwd|secret|key|code|sig|auth|jwt|sess|sid|hmac|credential|assertion|otp|ticket/i;

/**
 * Where a credential known by its shape may start: no base64url character before it, or a percent-escape (its hex
 * digits are not the credential's, as in `%3Dkgw_...` or `%3DeyJ...` inside an encoded URL).
 */
const SHAPE_START = /(?:(?<![A-Za-z0-9_-])|(?<=%[0-9A-Fa-f]{2}))/;

/**
 * A gateway API key in text (src/consumers.ts: `kgw_` and 43 base64url characters, in that case), its `_` or `-`
 * perhaps percent-encoded, with no base64url character touching it on either side (a percent-escape before it, as
 * in `%3Dkgw_...` inside an encoded URL, is a boundary: its hex digits are not the key's). The names above miss a key
 * sent as `?k=` or `?client=`, or in a path: its value is recognised instead, as secret scanners recognise it.
 * Bounded and exact: unbounded, in any case and from 20 characters on, the pattern met one RS256 token in ~2,250
 * (`kgW_` and 20 more inside its base64url), whose `Authorization` was then kept from the service.
 */
const API_KEY_FOUND = new RegExp(`${SHAPE_START.source}kgw(?:_|%5[Ff])(?:[A-Za-z0-9-]|_|%5[Ff]|%2[Dd]){43}(?![A-Za-z0-9_-])`);
const API_KEYS_FOUND = new RegExp(API_KEY_FOUND.source, 'g');

/**
 * A JSON Web Token in text (RFC 7519: base64url header and payload, both JSON objects, so both begin `eyJ`, then a
 * signature, empty when unsigned), with no base64url character before it (a percent-escape before it, as in
 * `%3DeyJ...` inside an encoded redirect, is a boundary: its hex digits are not the token's): the gateway's own token
 * format, and an identity provider's, under whatever name a URL carries it (`?t=`, `?id_token=` in a redirect's own
 * query, a magic link's path). Anchored at a boundary, so a run of `eyJ` is read once, not once per `eyJ` in it.
 */
// Signed (JWS: three parts, the payload JSON too) or encrypted (JWE, RFC 7516 7.1: five parts, the key part empty
// for direct encryption).
const JWT_FOUND = new RegExp(`${SHAPE_START.source}eyJ[A-Za-z0-9_-]{2,}\\.(?:eyJ[A-Za-z0-9_-]{2,}\\.[A-Za-z0-9_-]*|[A-Za-z0-9_-]*\\.[A-Za-z0-9_-]{2,}\\.[A-Za-z0-9_-]{2,}\\.[A-Za-z0-9_-]{2,})`);
const JWTS_FOUND = new RegExp(JWT_FOUND.source, 'g');

/** A URL's `user:password@` (from its `//`): in a value, as a redirect or a service URL passed on carries one. */
const URL_PASSWORD = /\/\/[^/?#@:\s]*:[^/?#@\s]*@/;

/** Text with every gateway API key and every JSON Web Token in it replaced by REDACTED: credentials known by their shape. */
export function redactCredentialShapes(text: string): string {
  const withoutKeys = redactApiKeys(text);
  return withoutKeys.includes('eyJ') ? withoutKeys.replace(JWTS_FOUND, REDACTED) : withoutKeys;
}

/** Whether text holds a gateway API key. */
export function containsApiKey(text: string): boolean {
  return API_KEY_FOUND.test(text);
}

/** Text with every gateway API key in it replaced by REDACTED. */
export function redactApiKeys(text: string): string {
  return API_KEY_FOUND.test(text) ? text.replace(API_KEYS_FOUND, REDACTED) : text;
}

/** Decodings tried on a parameter name: enough for `%2574oken` (double-encoded) and a little more. */
const MAX_NAME_DECODINGS = 3;

/**
 * Whether a query parameter name means a secret, in any spelling a service could read it as: services decode
 * names (`%74oken` is `token`, `+` is a space), some twice, so every decoding is checked, not only the raw
 * text. A name that does not decode cleanly is judged on what it decoded to so far.
 */
export function isSecretName(rawName: string): boolean {
  let name = rawName.replaceAll('+', ' ');
  for (let round = 0; round <= MAX_NAME_DECODINGS; round++) {
    if (SECRET_QUERY_PARAM.test(name)) return true;
    // Malformed escapes are left as they are and the well-formed ones decoded (`%zz%74oken` still reads as `...token`).
    const decoded = percentDecodedLeniently(name);
    if (decoded === name) return false;
    name = decoded;
  }
  return SECRET_QUERY_PARAM.test(name);
}

/**
 * What a redacted value is replaced by: `REDACTED`, as the HTTP semantic conventions write it in `url.full` and
 * `url.query` (the name is kept: `sig=REDACTED`). The access log uses the same marker, so one search finds both.
 */
export const REDACTED = 'REDACTED';

/**
 * A query (without its `?`) with the value of every secret-looking parameter replaced, each occurrence. `;`
 * separates parameters for some servers (HTML 4's recommendation; older Rack, Python < 3.10), so a name after one is
 * judged too; but most (Node's querystring, URLSearchParams, Koa) split on `&` only and read `password=abc;def` as
 * `abc;def`: a secret's value is replaced up to the next `&`, whatever `;` it holds (it was up to the `;`, and `def`
 * reached the logs and spans).
 */
export function redactQuery(query: string): string {
  if (!query.includes('=')) return redactCredentialShapes(query);
  return redactCredentialShapes(query.split('&').map(redactParameter).join('&'));
}

/** A parameter's start inside a value (a URL, a query string): its name and `=`, at the start or after `?`, `&`, `;`, `#`. */
const NESTED_PARAMETER = /(?:^|[?&;#])([^=?&;#]*)=/g;

/**
 * Whether a parameter's value carries a secret of its own, as sent or decoded (to MAX_NAME_DECODINGS decodings): a
 * secret-looking parameter (a redirect's URL, `redirect_uri=https://app/cb?access_token=...`,
 * `next=%2Fcb%3Ftoken%3D...`; a signed URL passed on, `url=https://bucket/k?X-Amz-Signature=...`), a JSON Web Token
 * encoded past its shape (`%253D` before it), or a URL's password (`https://alice:s3cret@host/`). Only the outer names
 * were looked at, and these went to the logs and spans whole. Each decoding is the whole value's, so a name found in
 * it is tested as it reads there, not decoded again (isSecretName's own decodings made this ~3x the cost).
 */
function holdsNestedSecret(value: string): boolean {
  let text = value;
  for (let round = 0; round <= MAX_NAME_DECODINGS; round++) {
    if (text.includes('=')) {
      NESTED_PARAMETER.lastIndex = 0;
      for (let found = NESTED_PARAMETER.exec(text); found !== null; found = NESTED_PARAMETER.exec(text)) {
        if (SECRET_QUERY_PARAM.test(found[1]!)) return true;
      }
    }
    if ((text.includes('eyJ') && JWT_FOUND.test(text)) || (text.includes('@') && URL_PASSWORD.test(text))) return true;
    const decoded = percentDecodedLeniently(text);
    if (decoded === text) return false;
    text = decoded;
  }
  return false;
}

/**
 * One `&`-separated parameter: its `;`-separated parts judged in turn, the first named as a secret and everything
 * after it replaced (`a=1;token=x;y` is `a=1;token=REDACTED`). In a loop: one call per part recursed as deep as a
 * query had parts, and a few thousand (`=;=;=;...`, 5 KB) overflowed the stack: a plain 500 with no access line
 * and no span.
 */
function redactParameter(parameter: string): string {
  const firstEquals = parameter.indexOf('=');
  if (firstEquals === -1) return parameter;
  let start = 0;
  for (;;) {
    const semicolon = parameter.indexOf(';', start);
    const end = semicolon === -1 ? parameter.length : semicolon;
    // Looked for within this part only: searched to the next `=` anywhere, a query of `;`s then one `=` was read
    // once per part.
    let equals = start;
    while (equals < end && parameter.charCodeAt(equals) !== 0x3d) equals++;
    if (equals < end && isSecretName(parameter.slice(start, equals))) return `${parameter.slice(0, equals)}=${REDACTED}`;
    if (semicolon === -1) break;
    start = semicolon + 1;
  }
  // No part named a secret: the value as the services read it (to the next `&`, its `;`s and all), judged for one of
  // its own, whole (`next=%2Fcb;%3Faccess_token%3D...` is `/cb;?access_token=...` to Koa).
  return holdsNestedSecret(parameter.slice(firstEquals + 1)) ? `${parameter.slice(0, firstEquals)}=${REDACTED}` : parameter;
}

/**
 * Text that may hold URLs (a refused config value, JSON-quoted) with every URL's password masked: whatever stands
 * between the user's `:` and the last `@` before the end of the quoted value (a pasted base64 password holds `/`,
 * `+`, `?` or `#`, the reason such a URL is refused; a `"` in it is `\"` there, a blank as it is), and the value of
 * every secret-looking query parameter (isSecretName: the `password=` option ioredis reads, a JWKS URL's
 * `api_key=`): a refused value goes to stderr, the reload's log line and the 422 answer of `POST /admin/reload`.
 */
export function hideUrlPasswords(text: string): string {
  return hideSecretParameters(text.replace(/(\/\/[^/?#@\s:"]*:)(?:[^"\\]|\\.)*@/g, '$1***@'));
}

/** A parameter's start in text that may hold URLs: `?`, `&` or `;`, its name, `=`. */
const PARAMETER_START = /[?&;]([^=?&;#"\s\\]*)=/g;

/**
 * `text` with the value of every secret-looking parameter masked, up to the next `&`, `#`, quote or blank: past any
 * `;` or `?` in it (a password may hold them: cut there, its rest was shown). Every parameter start is looked at, in
 * a value too: `?db=0?password=...` hides the password.
 */
function hideSecretParameters(text: string): string {
  let written = '';
  let from = 0;
  PARAMETER_START.lastIndex = 0;
  for (let start = PARAMETER_START.exec(text); start !== null; start = PARAMETER_START.exec(text)) {
    if (!isSecretName(start[1]!)) continue;
    const valueStart = start.index + start[0].length;
    let end = valueStart;
    while (end < text.length && !'&#" \t\n\r'.includes(text[end]!)) end += text[end] === '\\' ? 2 : 1;
    written += `${text.slice(from, valueStart)}***`;
    from = Math.min(end, text.length);
    PARAMETER_START.lastIndex = from;
  }
  return from === 0 ? text : written + text.slice(from);
}

/** An absolute-form target's userinfo (`http://alice:secret@host/`): a password, whatever the gateway answers it. */
const USERINFO = /^([a-z][a-z0-9+.-]*:\/\/)[^/?#]*@/i;

/**
 * A request target (path and query, or an absolute-form URL) with the value of every secret-looking query parameter
 * replaced, each occurrence, any userinfo (a refused absolute-form target's `alice:secret@`, which reached the
 * access line as sent) and any gateway API key, in the path too.
 */
export function redactUrl(url: string): string {
  const target = url.replace(USERINFO, `$1${REDACTED}@`);
  const queryStart = target.indexOf('?');
  if (queryStart === -1) return redactCredentialShapes(target);
  return `${redactCredentialShapes(target.slice(0, queryStart))}?${redactQuery(target.slice(queryStart + 1))}`;
}
