import net from 'node:net';
import type { Middleware } from 'koa';
import { isForwardingHeader } from '../../otel/wire-names';

export interface TrustedProxiesOptions {
  /** Honour `X-Forwarded-*` at all (Koa `app.proxy`). Default false. */
  trustProxy: boolean;
  /**
   * Addresses or CIDR ranges of the proxies in front (`10.0.0.0/8`, `fd00::/8`, `192.0.2.10`). Forwarding
   * headers are honoured only when the TCP peer is one of them. Undefined: any peer is trusted, which is safe
   * only when nothing but the proxy can reach the gateway.
   */
  trustedProxies?: readonly string[];
  /**
   * How many trusted proxies are in front (`trustedProxyHops`, Koa's `maxIpsCount`). Default 1. Each appends to
   * the `X-Forwarded-*` lists, so the entry this many from the right is what the outermost one saw; the ones
   * before it are the client's own.
   */
  trustedProxyHops?: number;
}

/**
 * What the client addressed, one entry per proxy that appended to them. Koa and the gateway read one value of
 * each (Koa the leftmost, which a client that sends its own gets to choose), so the trusted one is settled here.
 */
const ADDRESSED_HEADERS = ['x-forwarded-host', 'x-forwarded-proto', 'x-forwarded-port'] as const;

/**
 * Decides, per connection, whether the forwarding headers (`X-Forwarded-For`, `-Proto`, `-Host`, any other
 * `X-Forwarded-*`, `Forwarded`, ...: isForwardingHeader) came from a proxy we trust; from anyone else they are removed, so `ctx.ip` is the peer itself and a
 * client that reaches the gateway directly cannot pick its rate-limit bucket. Which `X-Forwarded-For` entry is
 * the client is then Koa's `maxIpsCount` (`trustedProxyHops`), counted from the right; `X-Forwarded-Host`,
 * `-Proto` and `-Port` from a trusted proxy are cut here to their entry at the same place, so `ctx.host`,
 * `ctx.protocol` and everything built on them (the services' `X-Forwarded-*`, `Location` rewriting, the host
 * guard, the cache key, spans and logs) read what the outermost trusted proxy saw, not what a client prepended;
 * `Forwarded`, passed on as it came, keeps only the elements the trusted proxies appended, for the same reason.
 *
 * Runs first in the pipeline: Koa caches `ctx.ip` on first read, and tracing reads it for the server span.
 * (Without `trustProxy` Koa ignores these headers anyway; they are removed so no service sees them either.)
 */
export function createTrustedProxies(options: TrustedProxiesOptions): Middleware {
  const trusted = options.trustProxy && options.trustedProxies ? trustedPeerList(options.trustedProxies) : undefined;
  const trustsEveryPeer = options.trustProxy && !trusted;
  const hops = options.trustedProxyHops ?? 1;

  // Not async: nothing to do after next(), so no promise and await of its own per request (a throw still rejects).
  return function trustForwardedHeaders(ctx, next) {
    const headers = ctx.req.headers;
    if (!trustsEveryPeer) {
      const peer = ctx.req.socket.remoteAddress;
      const fromTrustedProxy = trusted !== undefined && peer !== undefined && trusted.check(peer, net.isIPv6(peer) ? 'ipv6' : 'ipv4');
      if (!fromTrustedProxy) {
        // By the request's own names (a handful), not the list's: any `X-Forwarded-*` is one, and a `delete` of
        // an absent key still costs a runtime call.
        for (const name in headers) if (isForwardingHeader(name)) delete headers[name];
        return next();
      }
    }
    // A `Connection` naming a forwarding header is not obeyed here: a proxy that passed its client's `Connection` on
    // would let the client erase X-Forwarded-For and be taken for the proxy itself (its rate-limit bucket, the address
    // services see). What a trusted proxy wrote stands.
    for (const name of ADDRESSED_HEADERS) {
      const value = headers[name];
      if (value !== undefined) headers[name] = trustedEntry(value, hops);
    }
    const forwarded = headers.forwarded;
    if (forwarded !== undefined) {
      const kept = trustedElements(forwarded, hops);
      if (kept === undefined) delete headers.forwarded;
      else headers.forwarded = kept;
    }
    return next();
  };
}

/**
 * The entry `hops` from the right of a comma-separated list (the leftmost when there are fewer), trimmed: where
 * Koa finds the client in `X-Forwarded-For`. A single value (the common case) is returned as it is.
 */
function trustedEntry(value: string | string[], hops: number): string {
  const text = Array.isArray(value) ? value.join(',') : value;
  if (!text.includes(',')) return text;
  const entries = text.split(',');
  return entries[Math.max(0, entries.length - hops)]!.trim();
}

/**
 * The last `hops` elements of a `Forwarded` value (RFC 7239 4), the ones the trusted proxies appended: a service
 * reading `Forwarded` (Spring prefers it to `X-Forwarded-*`) takes the first element's `host` and `proto`, which
 * a client behind an appending proxy would otherwise choose by sending its own. Commas inside quoted strings
 * separate nothing. A single element (the common case) is returned as it is.
 *
 * Undefined (the field is dropped) when its quotes do not parse: a quoted string opens only at a value's start
 * (right after `=`) and closes before the next `;` or `,`. Read by a toggle on every `"`, a client's
 * `host=evil.example"` hid the proxy's comma: the whole value was one element and went on as it came, the
 * client's host first.
 */
function trustedElements(value: string | string[], hops: number): string | undefined {
  const text = Array.isArray(value) ? value.join(',') : value;
  if (!text.includes(',')) return text;
  const elements: string[] = [];
  let start = 0;
  let index = 0;
  while (index < text.length) {
    const char = text.charCodeAt(index);
    if (char === QUOTE) {
      if (text.charCodeAt(index - 1) !== EQUALS) return undefined;
      index = closingQuote(text, index);
      if (index < 0) return undefined;
      const next = text.charCodeAt(nextNonSpace(text, index + 1));
      if (!(next === COMMA || next === SEMICOLON || Number.isNaN(next))) return undefined;
    } else if (char === COMMA) {
      elements.push(text.slice(start, index).trim());
      start = index + 1;
    }
    index++;
  }
  elements.push(text.slice(start).trim());
  return elements.length <= hops ? text : elements.slice(-hops).join(', ');
}

const QUOTE = 0x22;
const EQUALS = 0x3d;
const COMMA = 0x2c;
const SEMICOLON = 0x3b;
const BACKSLASH = 0x5c;

/** The index of the `"` that closes the quoted string opened at `open` (quoted-pairs skipped), or -1. */
function closingQuote(text: string, open: number): number {
  for (let index = open + 1; index < text.length; index++) {
    const char = text.charCodeAt(index);
    if (char === BACKSLASH) index++;
    else if (char === QUOTE) return index;
  }
  return -1;
}

/** The index of the first character from `at` on that is not a space or tab (text.length if none). */
function nextNonSpace(text: string, at: number): number {
  let index = at;
  while (index < text.length && isSpace(text.charCodeAt(index))) index++;
  return index;
}

function isSpace(char: number): boolean {
  return char === 0x20 || char === 0x09;
}

/** Each config's trustedProxies as a BlockList, built on first use (configs are frozen, the array stays the same). */
const trustedPeerLists = new WeakMap<readonly string[], net.BlockList>();

/** `trustedProxies` as one BlockList for every step that asks about a peer (X-Forwarded-*, trace context). */
function trustedPeerList(entries: readonly string[]): net.BlockList {
  let list = trustedPeerLists.get(entries);
  if (!list) trustedPeerLists.set(entries, (list = blockListOf(entries)));
  return list;
}

/**
 * Whether a TCP peer is a proxy the config trusts to name its clients: any peer under `trustProxy` without a
 * `trustedProxies` list, a listed one with it, none without `trustProxy`.
 */
export function isTrustedProxyPeer(options: TrustedProxiesOptions, peer: string): boolean {
  if (!options.trustProxy) return false;
  const entries = options.trustedProxies;
  if (entries === undefined) return true;
  return trustedPeerList(entries).check(peer, net.isIPv6(peer) ? 'ipv6' : 'ipv4');
}

/**
 * Which TCP peers' trace context (`traceparent`, `tracestate`, `baggage`, and the other formats) the gateway
 * continues: none without `trustTraceparent`; with it, the peers in `trustedProxies` when that list is set, as
 * their `X-Forwarded-*` are (a client that reaches the gateway beside the proxy could otherwise still choose its
 * trace id, parent and sampling), and every peer when it is not (a gateway only the front end can reach). Decided
 * per request by the tracing and client-header steps alike, from one list built here once.
 */
export function traceContextTrust(trustTraceparent: boolean, trustedProxies: readonly string[] | undefined): (peer: string | undefined) => boolean {
  if (!trustTraceparent) return () => false;
  if (trustedProxies === undefined) return () => true;
  const list = trustedPeerList(trustedProxies);
  return (peer) => peer !== undefined && list.check(peer, net.isIPv6(peer) ? 'ipv6' : 'ipv4');
}

/** net.BlockList matches IPv4 rules against IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`) too. */
function blockListOf(entries: readonly string[]): net.BlockList {
  const list = new net.BlockList();
  for (const entry of entries) {
    const [address = '', prefix] = entry.split('/');
    const type = net.isIPv6(address) ? 'ipv6' : 'ipv4';
    if (prefix === undefined) list.addAddress(address, type);
    else list.addSubnet(address, Number(prefix), type);
  }
  return list;
}
