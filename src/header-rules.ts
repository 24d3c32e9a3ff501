import type { Context } from 'koa';
import { z } from 'zod';
import { withoutEdgeWhitespace } from '../otel/field-whitespace';
import { CGI_HAZARD_HEADERS, dashedSpelling, FIELD_NAME_TOKEN, GATEWAY_OWNED_HEADER_PREFIXES, HEADER, IDENTITY_HEADERS, isListedForwardingHeader, isLookAlikeName, REQUEST_REWRITE_HEADERS } from '../otel/wire-names';

/**
 * Per-route header rules: headers added, set or removed on the request a service receives and on the
 * response a client receives, with values templated from the request (`{requestId}`, `{userId}`, `{route}`,
 * `{consumerId}`). Everything is checked and compiled once at startup; a request only fills in the values.
 *
 * A rule never touches a header the gateway vouches for (identity, request id, forwarding chain, trace
 * context, framing): the config refuses such names, and the proxy writes its own headers after the rules run,
 * so they would win anyway.
 */

/** An HTTP field name (RFC 9110 5.1: a token). */
/** Literal text of a value: visible ASCII, space and tab; no CR, LF, NUL or other control characters. */
const LITERAL = /^[\x20-\x7e\t]*$/;
const PLACEHOLDERS = ['requestId', 'userId', 'route', 'consumerId'] as const;
type Placeholder = (typeof PLACEHOLDERS)[number];
const PLACEHOLDER_PATTERN = new RegExp(`\\{(${PLACEHOLDERS.join('|')})\\}`, 'g');
/** Longest rule value, characters, before filling in. */
const MAX_VALUE_LENGTH = 1024;
/** Most names in one list of one rule. */
const MAX_RULES = 32;

/** Framing and connection headers: Node and undici write them; a rule cannot. */
const FRAMING = ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate', 'expect', 'http2-settings', 'content-length', 'host'];

/**
 * Why a request header name belongs to the gateway, or undefined when a rule may touch it. Checked on the
 * name and its `_`-to-`-` twin (CGI, PHP, Rack and WSGI backends read `x_user_id` as `x-user-id`, PHP `x.user.id` too).
 */
export function ownedRequestHeader(name: string): string | undefined {
  for (const candidate of new Set([name.toLowerCase(), cgiSpelling(name)])) {
    if ((IDENTITY_HEADERS as readonly string[]).includes(candidate) || candidate === HEADER.consumerId || GATEWAY_OWNED_HEADER_PREFIXES.some((prefix) => candidate.startsWith(prefix))) return 'an identity header the gateway writes from a verified credential';
    if (candidate === HEADER.requestId) return 'the request id the gateway writes';
    // The listed ones: the gateway writes or rebuilds them. Another `X-Forwarded-*` (Envoy's -Client-Cert) only
    // passes from a trusted proxy, and a rule may still keep it from a service or set it.
    if (isListedForwardingHeader(candidate)) return 'a forwarding header the gateway writes';
    if ((REQUEST_REWRITE_HEADERS as readonly string[]).includes(candidate)) return 'a request-rewriting header the gateway always removes';
    if ((CGI_HAZARD_HEADERS as readonly string[]).includes(candidate)) return 'a header CGI servers take as their outbound proxy (httpoxy)';
    if (candidate === HEADER.traceparent || candidate === HEADER.tracestate || candidate === HEADER.baggage) return 'trace context the gateway writes';
    // Its own hop added, by the client's HTTP version (`1.0`, `1.1`, `2 koa-gateway`): a service's `Vary: Via` keyed on
    // the client's Via alone served an HTTP/1.0 client's answer to HTTP/1.1 and HTTP/2 ones.
    if (candidate === 'via') return 'the Via the gateway writes';
    if (FRAMING.includes(candidate)) return 'a framing or connection header';
  }
  return undefined;
}

/**
 * Response headers the gateway writes on every answer: the request id and trace it logged, and its rate limit's
 * state. A service's own (its framework's request id, its own limiter) would replace them and name an id or a
 * limit the gateway never had, so a service's copies are dropped and a rule cannot write them. So are the fields
 * earlier drafts of the rate-limit headers named (`RateLimit-Limit`, `-Remaining`, `-Reset`): a service's limiter
 * writing those went out beside the gateway's `RateLimit`, a second and contrary account of the client's limit.
 */
export const GATEWAY_RESPONSE_HEADERS: readonly string[] = [HEADER.requestId, HEADER.traceresponse, 'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset', 'ratelimit', 'ratelimit-policy', 'ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset'];

/** Why a response header name belongs to the gateway, or undefined when a rule may touch it. */
export function ownedResponseHeader(name: string): string | undefined {
  const lower = name.toLowerCase();
  if (GATEWAY_RESPONSE_HEADERS.includes(lower)) return 'written by the gateway on every response';
  if (lower.startsWith('access-control-')) return 'written by the cors policy';
  // Merged by the gateway: `Origin` for the cors policy. A rule's `set` replaced it, and a cache in front (a CDN)
  // keyed an answer with the policy's Access-Control-Allow-Origin without the origin.
  if (lower === 'vary') return 'merged by the gateway (Origin, for the cors policy)';
  if (FRAMING.includes(lower)) return 'a framing or connection header';
  return undefined;
}

const headerValue = z
  .string()
  .max(MAX_VALUE_LENGTH)
  .regex(LITERAL, 'must be visible ASCII, spaces and tabs (no CR, LF or control characters)')
  // No part of a field value (RFC 9110 5.5); sent to an HTTP/2 client, a malformed field (RFC 9113 8.2.1).
  .refine((value) => !/^[ \t]|[ \t]$/.test(value), { message: 'must not start or end with a space or tab (a field value has none there, RFC 9110 5.5)' })
  .refine((value) => !/[{}]/.test(value.replace(PLACEHOLDER_PATTERN, '')), {
    message: `may use only the placeholders ${PLACEHOLDERS.map((name) => `{${name}}`).join(', ')}; no other { or }`,
  });

function ruleSchema(owned: (name: string) => string | undefined) {
  return z
    .strictObject({
      /** Appended as another field line (the service's or client's own value stays). */
      add: z.record(z.string(), headerValue).optional(),
      /** Replaces whatever value the header had. */
      set: z.record(z.string(), headerValue).optional(),
      /** Removed. */
      remove: z.array(z.string()).max(MAX_RULES).optional(),
    })
    .superRefine((rule, ctx) => {
      const lists = { add: Object.keys(rule.add ?? {}), set: Object.keys(rule.set ?? {}), remove: rule.remove ?? [] };
      const seen = new Map<string, string>();
      for (const [list, names] of Object.entries(lists)) {
        if (names.length > MAX_RULES) ctx.addIssue({ code: 'custom', path: [list], message: `has more than ${MAX_RULES} headers`, input: names.length });
        names.forEach((name, position) => {
          // Record keys are reported under their name, list entries under their position.
          const path = [list, list === 'remove' ? position : name];
          const reason = owned(name);
          if (!FIELD_NAME_TOKEN.test(name) || name.length > 128) ctx.addIssue({ code: 'custom', path, message: 'must be a header name (letters, digits and !#$%&\'*+.^_`|~-, at most 128)', input: name });
          else if (reason) ctx.addIssue({ code: 'custom', path, message: `is ${reason}; a header rule cannot set or remove it`, input: name });
          // `x-a` and `x_a` are one header to CGI, PHP, Rack and WSGI: `set x-a` beside `remove x_a` would leave the
          // service with whichever rule ran last.
          const other = seen.get(cgiSpelling(name));
          if (other !== undefined) ctx.addIssue({ code: 'custom', path, message: `names ${name} again (also in ${other}, in this or another spelling): one rule per header`, input: name });
          seen.set(cgiSpelling(name), list);
        });
      }
    });
}

/** `headers` of a route: rules for the request to the service and the response to the client. Applied in the order remove, set, add. */
export const headerRulesSchema = z.strictObject({
  request: ruleSchema(ownedRequestHeader).optional(),
  response: ruleSchema(ownedResponseHeader).optional(),
});
export type HeaderRulesConfig = z.output<typeof headerRulesSchema>;
type RuleConfig = NonNullable<HeaderRulesConfig['request']>;

/** A header object as the proxy assembles it (lower-case names). */
export type HeaderObject = Record<string, string | string[] | number | undefined>;

/** A value with its placeholders resolved against a request. */
type Template = (ctx: Context) => string;

/**
 * A template value rendered safe for a header: anything outside visible ASCII and space is percent-encoded
 * (as its UTF-8 bytes), so no CR/LF or control character can reach a header line, whatever a value holds.
 * Request ids, user ids and route names are already restricted to safe characters; this is the last word.
 */
export function headerSafe(value: string): string {
  if (/^[\x20-\x7e]*$/.test(value)) return value;
  return value.replace(/[^\x20-\x7e]/gu, (char) => [...Buffer.from(char, 'utf8')].map((byte) => `%${byte.toString(16).toUpperCase().padStart(2, '0')}`).join(''));
}

const PLACEHOLDER_VALUE: Record<Placeholder, (ctx: Context) => string> = {
  requestId: (ctx) => ctx.state.requestId,
  userId: (ctx) => ctx.state.user?.id ?? '',
  route: (ctx) => ctx.state.route?.name ?? '',
  // Set when an API key identified the caller (then there is no user); empty otherwise.
  consumerId: (ctx) => ctx.state.consumer?.id ?? '',
};

/** Splits a value into literal parts and placeholders once; a value without placeholders is a constant. */
function compileTemplate(value: string): Template {
  // Split on the placeholders, kept: odd indexes hold their names.
  const parts = value.split(new RegExp(`\\{(${PLACEHOLDERS.join('|')})\\}`));
  const pieces = parts.map((part, index) => (index % 2 === 1 ? PLACEHOLDER_VALUE[part as Placeholder] : part)).filter((piece) => piece !== '');
  if (pieces.every((piece) => typeof piece === 'string')) {
    const constant = pieces.join('');
    return () => constant;
  }
  return (ctx) => {
    let text = '';
    for (const piece of pieces) text += typeof piece === 'string' ? piece : headerSafe(piece(ctx));
    // Without the spaces a placeholder left at an end (`user {userId}` for a caller with no user): sent to an HTTP/2
    // client, a field ending in whitespace is malformed (RFC 9113 8.2.1), and nghttp2's clients reset the stream over it.
    return withoutEdgeWhitespace(text);
  };
}

/** One rule list compiled: the transform it applies to a header object, in place. */
type Transform = (headers: HeaderObject, ctx: Context) => void;

function compileRule(rule: RuleConfig | undefined, alsoRemove: readonly string[] = []): Transform | undefined {
  const remove = [...new Set([...alsoRemove, ...(rule?.remove ?? [])].map((name) => name.toLowerCase()))];
  const set = Object.entries(rule?.set ?? {}).map(([name, value]) => [name.toLowerCase(), compileTemplate(value)] as const);
  const add = Object.entries(rule?.add ?? {}).map(([name, value]) => [name.toLowerCase(), compileTemplate(value)] as const);
  if (remove.length + set.length + add.length === 0) return undefined;
  return function applyHeaderRules(headers, ctx) {
    // Most names are absent (the hidden list is long, a service sends few of them): `in` is an inline-cached
    // lookup, a `delete` of an absent property a call into V8's runtime each (~4k instructions per answer).
    for (const name of remove) if (name in headers) delete headers[name];
    for (const [name, value] of set) headers[name] = value(ctx);
    for (const [name, value] of add) {
      const existing = headers[name];
      headers[name] = existing === undefined ? value(ctx) : [...(Array.isArray(existing) ? existing : [String(existing)]), value(ctx)];
    }
  };
}

/**
 * A header name as CGI, PHP, Rack and WSGI read it: lower case, `_` (and, to PHP, `.`) as `-` (`X_Caller`,
 * `X.Caller` and `x-caller` are all `HTTP_X_CALLER`).
 */
function cgiSpelling(name: string): string {
  return dashedSpelling(name.toLowerCase());
}

/**
 * A test for the client headers that are another spelling of a name in `names` (lower case): the same once `_`
 * and `.` read as `-`, but not that name itself, which the rule handles. Undefined when there are no names. A name
 * without either is looked up as it is (it can only be the `-` spelling of a rule's `_` name); one with them is
 * respelt first.
 */
function otherSpellingsOf(names: ReadonlySet<string>): ((name: string) => boolean) | undefined {
  if (names.size === 0) return undefined;
  const spelt = new Set([...names].map(cgiSpelling));
  const dashedOnly = new Set([...spelt].filter((name) => !names.has(name)));
  return function isOtherSpelling(name) {
    return isLookAlikeName(name) ? !names.has(name) && spelt.has(cgiSpelling(name)) : dashedOnly.has(name);
  };
}

export interface RouteHeaderRules {
  /** Applied to the service's request after the client's headers were filtered, before the gateway writes its own. */
  readonly request?: Transform;
  /**
   * Client request headers (lower-case names) dropped before the request rules run: other spellings of a name a
   * rule sets, adds or removes (`x_caller` for `x-caller`, `x-legacy-auth` for `x_legacy_auth`), which CGI, PHP, Rack and WSGI read
   * as that header. Under `headersWithUnderscores: allow` the client would otherwise put a value next to the
   * one the rule vouches for, or bring back a header the rule removed. Undefined without request rules.
   */
  readonly isRequestRuleTwin?: (name: string) => boolean;
  /** Applied to every response from the service (and to cached copies of it) before the client gets it. */
  readonly response?: Transform;
  /**
   * Whether `response` writes anything (a `set` or `add`, whose values may come from the request): without, it
   * only removes names, and a stored copy's headers come out of it the same for every request (the cache
   * prepares them once per copy).
   */
  readonly responseWrites: boolean;
  /** Request header names a rule changes: a service's `Vary` on one of them says nothing about the client's request. */
  readonly rewrittenRequestHeaders: ReadonlySet<string>;
  /** Request header names whose client value never reaches the service (a rule sets or removes them; `add` keeps it). */
  readonly replacedRequestHeaders: ReadonlySet<string>;
}

export interface CompileHeaderRulesOptions {
  rules?: HeaderRulesConfig;
  /** Service response headers never passed to clients (config `proxy.hideUpstreamHeaders`), removed before the rules run. */
  hideUpstreamHeaders: readonly string[];
}

/** Compiles one route's rules (see RouteHeaderRules); called once per route at startup. */
export function compileHeaderRules(options: CompileHeaderRulesOptions): RouteHeaderRules {
  const { rules } = options;
  const request = rules?.request;
  const rewrittenRequestHeaders = new Set([...Object.keys(request?.add ?? {}), ...Object.keys(request?.set ?? {}), ...(request?.remove ?? [])].map((name) => name.toLowerCase()));
  return {
    request: compileRule(request),
    isRequestRuleTwin: otherSpellingsOf(rewrittenRequestHeaders),
    response: compileRule(rules?.response, options.hideUpstreamHeaders),
    responseWrites: Object.keys(rules?.response?.set ?? {}).length + Object.keys(rules?.response?.add ?? {}).length > 0,
    rewrittenRequestHeaders,
    replacedRequestHeaders: new Set([...Object.keys(request?.set ?? {}), ...(request?.remove ?? [])].map((name) => name.toLowerCase())),
  };
}
