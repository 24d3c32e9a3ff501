import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { HEADER } from '../../otel/wire-names';
import type { AuthMethod } from '../config';
import { GatewayError, type ErrorCode } from '../errors';
import { challengesGatewaySignature, SIGNATURE_REFUSED_HINT } from '../gateway-signature';
import { authenticationChallenge, DEFAULT_REALM } from '../middleware/authenticate';
import { MAX_GRPC_MESSAGE_BYTES } from './message-limits';

/**
 * gRPC status -> the gateway's error catalog, once, at the gRPC boundary (as upstreamFailure does for HTTP).
 * The statuses a service uses to tell the client what is wrong with its request (4xx) carry the service's
 * message as the detail, bounded; for the others the gateway speaks (the service's words may be internals).
 * The table follows google/rpc/code.proto's HTTP mapping, which grpc-gateway and Envoy share, except that
 * UNKNOWN, INTERNAL, DATA_LOSS and a CANCELLED from the service are 502: the gateway is reporting on its
 * upstream, not failing itself.
 */
const CODE_BY_STATUS: Readonly<Record<number, ErrorCode>> = {
  [GrpcStatus.INVALID_ARGUMENT]: 'grpc_invalid_argument',
  [GrpcStatus.FAILED_PRECONDITION]: 'grpc_failed_precondition',
  [GrpcStatus.OUT_OF_RANGE]: 'grpc_out_of_range',
  [GrpcStatus.UNAUTHENTICATED]: 'grpc_unauthenticated',
  [GrpcStatus.PERMISSION_DENIED]: 'grpc_permission_denied',
  [GrpcStatus.NOT_FOUND]: 'grpc_not_found',
  [GrpcStatus.ALREADY_EXISTS]: 'grpc_already_exists',
  [GrpcStatus.ABORTED]: 'grpc_aborted',
  [GrpcStatus.RESOURCE_EXHAUSTED]: 'grpc_resource_exhausted',
  [GrpcStatus.UNIMPLEMENTED]: 'upstream_unimplemented',
  // Service down, refusing, or saying so itself: the instance is unavailable; the client may retry (503 + Retry-After).
  [GrpcStatus.UNAVAILABLE]: 'upstream_unavailable',
  [GrpcStatus.DEADLINE_EXCEEDED]: 'upstream_timeout',
};

/** Longest service message shown as a problem's detail, characters. */
export const MAX_GRPC_DETAIL_LENGTH = 256;

/** The name of a gRPC status code (`NOT_FOUND`), or its number for one outside the table. */
export function grpcStatusName(code: number): string {
  return GrpcStatus[code] ?? String(code);
}

/**
 * Whether `code` is one of gRPC's 17 statuses. A service can send any `grpc-status` text (grpc-js reads `abc` as
 * NaN, and keeps 99), and grpc-js fails some broken answers (a compressed message without `grpc-encoding`) with no
 * code at all. Anything else reads as UNKNOWN, as grpc-java's Status.fromCodeValue reads it.
 */
export function isGrpcStatus(code: unknown): code is GrpcStatus {
  return Number.isInteger(code) && (code as number) >= GrpcStatus.OK && (code as number) <= GrpcStatus.UNAUTHENTICATED;
}

/** `code` if it is a gRPC status, else UNKNOWN (see isGrpcStatus). */
export function knownGrpcStatus(code: unknown): GrpcStatus {
  return isGrpcStatus(code) ? code : GrpcStatus.UNKNOWN;
}

/**
 * grpc-js's own RESOURCE_EXHAUSTED for an answer over the gateway's receive limit (stream-decoder.js), or one that
 * inflates past it (compression-filter.js: grpc-js offers gzip and deflate to every service): no quota of the
 * caller's. Told by the limit it names: the gateway never sends a message over that size, nor a compressed one, so
 * a service cannot have received one. A gzipped answer past it was 413, the client told its request was too large.
 */
const OVER_OWN_RECEIVE_LIMIT = new RegExp(`^Received message (?:larger than max \\(\\d+ vs ${MAX_GRPC_MESSAGE_BYTES}\\)|that decompresses to a size larger than ${MAX_GRPC_MESSAGE_BYTES})$`);
/**
 * A service refusing the request as over its own receive limit, in the words of grpc-js and grpc-core ("Received
 * message larger than max"), grpc-go ("grpc: received message larger than max") and grpc-java ("gRPC message
 * exceeds maximum size"), or a decompressed size over it: the request is too large for the service (413), never
 * the service's answer too large for the gateway, nor a quota the caller may wait out.
 */
const OVER_SERVICE_RECEIVE_LIMIT = /received message larger than max|message exceeds maximum size|decompresses to a size larger than/i;

/**
 * grpc-js's own UNIMPLEMENTED for a unary answer of the wrong cardinality (client.js): OK with no message, or a
 * second message. The service broke the protocol (grpc-go and grpc-java report INTERNAL); it implements the method.
 */
const WRONG_UNARY_CARDINALITY = /^(?:No message received|Too many responses received)$/;

/**
 * Whether a failed call is the service's bad answer: a status grpc-js cannot read, a message past the gateway's
 * receive limit, a unary answer of the wrong cardinality, a refusal of the gateway's signature. grpcFailure answers
 * each 502 upstream_bad_response; the call's outcome is `bad_response`, as an HTTP answer that does not parse.
 */
export function isBadAnswer(failure: ServiceError): boolean {
  return (
    !isGrpcStatus(failure.code) ||
    (failure.code === GrpcStatus.RESOURCE_EXHAUSTED && OVER_OWN_RECEIVE_LIMIT.test(failure.details ?? '')) ||
    (failure.code === GrpcStatus.UNIMPLEMENTED && WRONG_UNARY_CARDINALITY.test(failure.details ?? '')) ||
    refusesGatewaySignature(failure)
  );
}

/**
 * Whether a service's UNAUTHENTICATED refuses the gateway's own signature, not a credential of the client's: its
 * trailers carry the challenge its HTTP side sends then (`www-authenticate: GatewaySignature realm="koa-gateway"`,
 * services/notifications/grpc-server.ts). The gateway's and the service's keys or clocks are apart, which nothing the
 * client could send would fix; answered 401 with the service's words, the client was told to sign in again.
 */
export function refusesGatewaySignature(failure: ServiceError): boolean {
  if (failure.code !== GrpcStatus.UNAUTHENTICATED) return false;
  return challengesGatewaySignature((failure.metadata?.get(HEADER.wwwAuthenticate) ?? []).map(String));
}

/**
 * `authMethods`: the route's (src/routes.ts), named in the challenge of an UNAUTHENTICATED answer: a 401 carries
 * one (RFC 9110 11.6.1), a bearer token where the route names none (a public route whose service wants a caller).
 * An UNAUTHENTICATED refusing the gateway's signature (refusesGatewaySignature) is 502, as the HTTP proxy answers a
 * 401 that names SIGNATURE_CHALLENGE_SCHEME: a fault of the gateway's deployment, logged as its own, no challenge.
 */
export function grpcFailure(service: string, failure: ServiceError, authMethods: ReadonlySet<AuthMethod> = new Set()): GatewayError {
  if (refusesGatewaySignature(failure)) {
    return new GatewayError('upstream_bad_response', `The ${service} service refused the gateway's signature.`, { cause: new Error(SIGNATURE_REFUSED_HINT, { cause: failure }) });
  }
  if (!isGrpcStatus(failure.code)) {
    // grpc-js's own message would read "NaN undefined: " or "undefined undefined: undefined" in the logs.
    const cause = new Error(`no gRPC status (grpc-js reported code ${String(failure.code)}${failure.details ? `: ${failure.details}` : ''})`, { cause: failure });
    return new GatewayError('upstream_bad_response', `The ${service} service answered a malformed gRPC response.`, { cause });
  }
  if (failure.code === GrpcStatus.RESOURCE_EXHAUSTED && OVER_OWN_RECEIVE_LIMIT.test(failure.details ?? '')) {
    return new GatewayError('upstream_bad_response', `The ${service} service answered a message larger than the gateway forwards.`, { cause: failure });
  }
  if (failure.code === GrpcStatus.UNIMPLEMENTED && WRONG_UNARY_CARDINALITY.test(failure.details ?? '')) {
    return new GatewayError('upstream_bad_response', `The ${service} service answered a unary call with ${failure.details === 'No message received' ? 'no message' : 'more than one message'}.`, { cause: failure });
  }
  if (failure.code === GrpcStatus.RESOURCE_EXHAUSTED && OVER_SERVICE_RECEIVE_LIMIT.test(failure.details ?? '')) {
    return new GatewayError('payload_too_large', `The request message is larger than the ${service} service accepts.`, { cause: failure });
  }
  const code = CODE_BY_STATUS[failure.code] ?? 'upstream_bad_response';
  const name = grpcStatusName(failure.code);
  if (code.startsWith('grpc_')) {
    // Printable text only, and bounded: the message ends up in a JSON body and in logs.
    const message = (failure.details ?? '').replace(/[^\x20-\x7e\u00a0-\uffff]/g, ' ').trim();
    const detail = message === '' ? `The ${service} service answered ${name}.` : message.length > MAX_GRPC_DETAIL_LENGTH ? `${message.slice(0, MAX_GRPC_DETAIL_LENGTH - 3)}...` : message;
    const headers = code === 'grpc_unauthenticated' ? authenticationChallenge(DEFAULT_REALM, authMethods.size > 0 ? authMethods : ['jwt']) : undefined;
    return new GatewayError(code, detail, { cause: failure, headers });
  }
  if (code === 'upstream_timeout') return new GatewayError(code, `The ${service} service did not answer in time.`, { cause: failure });
  // grpc-js says UNAVAILABLE for a service that refused the connection or never answered as well as for one that did
  // say so: "answered UNAVAILABLE" told the client of an answer there may not have been.
  if (code === 'upstream_unavailable') return new GatewayError(code, `The ${service} service is unavailable.`, { cause: failure });
  return new GatewayError(code, `The ${service} service answered ${name}.`, { cause: failure });
}
