import type { IncomingHttpHeaders } from 'node:http';
import type { Context } from 'koa';
import { CLIENT_ADDRESS_HEADERS, HEADER, isForwardingHeader } from '../otel/wire-names';
import { requestHeaderValue } from './response-cache';
import { forwardedHost, forwardedPrefix, REBUILT_FORWARDING, stopsAtThisHop } from './upstream-headers';

/**
 * The origin the gateway forwards to the service, as the response cache keys it (part of every variant): a service
 * may build absolute links and decisions from any of it, so two requests it may answer differently never share
 * a copy, and two it would answer alike (another spelling of one Host, another client address) do.
 */

/** A request header's value as the service hears it: none when it stops at this hop (hop-by-hop, or named in the request's `Connection`). */
export function heardByService(headers: IncomingHttpHeaders): (name: string) => string | null {
  const stopsHere = stopsAtThisHop(headers.connection);
  return (name) => (stopsHere(name) ? null : requestHeaderValue(headers[name]));
}

/**
 * Forwarding headers left out of this part of the key: the ones the gateway rebuilds are keyed through what it
 * rebuilds them from (forwardedOrigin), and the client-address ones, like X-Forwarded-For, would give each client an
 * entry of its own (so is `Forwarded`'s `for=`: forwardedWithoutClients).
 */
const UNKEYED_FORWARDING_HEADERS = new Set<string>([...CLIENT_ADDRESS_HEADERS, ...REBUILT_FORWARDING]);

/**
 * The forwarding headers a trusted proxy sent that pass on to the service as they came (the listed ones and any
 * other `X-Forwarded-*`: frameworks build absolute links and decisions from them), as the service hears them,
 * one `name: value` per line in name order: part of the variant (a write drops the copies stored under every
 * value). From anyone else they were removed before this.
 */
function keyedForwardingHeaders(headers: IncomingHttpHeaders, heard: (name: string) => string | null): string {
  const keyed: string[] = [];
  for (const name in headers) {
    if (!isForwardingHeader(name) || UNKEYED_FORWARDING_HEADERS.has(name)) continue;
    const value = heard(name);
    if (value !== null) keyed.push(`${name}: ${name === 'forwarded' ? forwardedWithoutClients(value) : value}`);
  }
  return keyed.sort().join('\n');
}

/**
 * A `Forwarded` pair (RFC 7239 4) and the separator after it: a token or a quoted string without escapes as its value.
 * The blanks after `=` are taken whole (a lookahead and a backreference: V8 has no atomic group): as `\s*` beside the
 * `\s*` after an empty value, a long run of them was split every way before the match failed (16 KiB: 0.3-0.45 s).
 */
const FORWARDED_PAIR = /\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=(?=(\s*))\2("[^"\\]*"|[!#$%&'*+.^_`|~0-9A-Za-z-]*)\s*([;,]|$)/y;

/** A `for=` value that is only a node (an address, a port, an obfuscated name): no other pair can hide in it. */
const FORWARDED_NODE = /^"?[0-9A-Za-z.:[\]_-]*"?$/;

/**
 * `Forwarded` as keyed: without its `for=` pairs, which name the client as X-Forwarded-For does (unkeyed, or each
 * client would get an entry of its own), and keep `host`, `proto`, `by`. A value that is not plainly that (a
 * `for` value with a `;host=` inside its quotes, which a lax parser such as Spring's reads as the host) is keyed
 * whole: leaving anything out of the key must never hide what a service may read.
 */
export function forwardedWithoutClients(value: string): string {
  let kept = '';
  FORWARDED_PAIR.lastIndex = 0;
  while (FORWARDED_PAIR.lastIndex < value.length) {
    const pair = FORWARDED_PAIR.exec(value);
    if (!pair) return value;
    const [text, name, , nodeOrValue, separator] = pair;
    // The other pairs as they came, spacing included: two spellings a lax parser may read apart stay apart.
    if (name!.toLowerCase() !== 'for') kept += text;
    else if (FORWARDED_NODE.test(nodeOrValue!)) kept += separator;
    else return value;
  }
  return kept;
}

/** The port each scheme means when the Host names none; a switch, not an object (a scheme `__proto__` found its prototype). */
function defaultPortSuffix(protocol: string): string | undefined {
  return protocol === 'https' ? ':443' : protocol === 'http' ? ':80' : undefined;
}

/**
 * The Host as keyed: lower case, without the scheme's default port, so `api.example:80` over http is
 * `api.example` (RFC 3986 6.2.3): one variant whichever spelling a client used, and a service building links
 * from either builds equivalent ones. Only from a host name or a bracketed IP literal: a Host that is not one
 * keeps its spelling.
 */
function hostKey(host: string, protocol: string): string {
  const lower = host.toLowerCase();
  const port = defaultPortSuffix(protocol);
  if (port === undefined || !lower.endsWith(port)) return lower;
  const name = lower.slice(0, -port.length);
  return name !== '' && (!name.includes(':') || (name.startsWith('[') && name.endsWith(']'))) ? name : lower;
}

/**
 * The scheme, the Host (as the service is told it: with none, an HTTP/1.0 request's, the local address the client
 * connected to), a trusted proxy's `X-Forwarded-Port` and `X-Forwarded-Prefix` and its other forwarding headers, as
 * keyed. The rebuilt ones are keyed from what the gateway rebuilds them from, whatever the request's `Connection`
 * names (the proxy does not obey it for them): keyed as heard, a prefix named there was keyed as none while the
 * service built its links from it, and every caller without a prefix got that copy.
 */
export function forwardedOrigin(ctx: Context, heard: (name: string) => string | null): (string | null)[] {
  const { headers } = ctx.req;
  return [
    ctx.protocol,
    hostKey(forwardedHost(ctx), ctx.protocol),
    requestHeaderValue(headers['x-forwarded-port']),
    forwardedPrefix(headers[HEADER.forwardedPrefix], '') ?? null,
    keyedForwardingHeaders(headers, heard),
  ];
}
