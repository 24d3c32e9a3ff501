/**
 * Query secrets kept out of telemetry: the access log's `url`, the gateway's SERVER span's `url.query` and its
 * upstream CLIENT spans' `url.full`, and the services' SERVER spans' `url.query` (the gateway forwards the query
 * byte for byte, and the http instrumentation records it, redacting only a few exact names) all go through here.
 */

/** Query parameters whose values never reach a log (tokens in URLs are still tokens). */
// `sig`: Azure SAS and other signed URLs; `jwt`, `session`, `pwd`, `credential`, `assertion` (SAML), `otp`: the
// other names secrets travel under. A harmless name that contains one (`design`) is redacted too: only safer.
const SECRET_QUERY_PARAM = /token|password|passwd|pwd|secret|key|code|sig|auth|jwt|session|credential|assertion|otp/i;

/** Decodings tried on a parameter name: enough for `%2574oken` (double-encoded) and a little more. */
const MAX_NAME_DECODINGS = 3;

/**
 * Whether a query parameter name means a secret, in any spelling a service could read it as: services decode
 * names (`%74oken` is `token`, `+` is a space), some twice, so every decoding is checked, not only the raw
 * text. A name that does not decode cleanly is judged on what it decoded to so far.
 */
function isSecretName(rawName: string): boolean {
  let name = rawName.replaceAll('+', ' ');
  for (let round = 0; round <= MAX_NAME_DECODINGS; round++) {
    if (SECRET_QUERY_PARAM.test(name)) return true;
    if (!name.includes('%')) return false;
    try {
      name = decodeURIComponent(name);
    } catch {
      // Malformed escapes: decode the well-formed ones only (`%zz%74oken` still reads as `...token`).
      name = name.replace(/%[0-9a-f]{2}/gi, (escape) => String.fromCharCode(parseInt(escape.slice(1), 16)));
    }
  }
  return SECRET_QUERY_PARAM.test(name);
}

/**
 * What a redacted value is replaced by: `REDACTED`, as the HTTP semantic conventions write it in `url.full` and
 * `url.query` (the name is kept: `sig=REDACTED`). The access log uses the same marker, so one search finds both.
 */
export const REDACTED = 'REDACTED';

/** A query (without its `?`) with the value of every secret-looking parameter replaced, each occurrence. */
export function redactQuery(query: string): string {
  // `;` separates parameters for some servers too (HTML 4's recommendation; older Rack, Python < 3.10).
  return query.replace(/(^|[&;])([^&;=]*)=([^&;]*)/g, (pair, separator: string, name: string) => (isSecretName(name) ? `${separator}${name}=${REDACTED}` : pair));
}

/** A request target (path and query) with the value of every secret-looking query parameter replaced, each occurrence. */
export function redactUrl(url: string): string {
  const queryStart = url.indexOf('?');
  if (queryStart === -1) return url;
  return `${url.slice(0, queryStart)}?${redactQuery(url.slice(queryStart + 1))}`;
}
