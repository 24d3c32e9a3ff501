import type { Middleware } from 'koa';
import { GatewayError } from '../errors';

/** Longest path accepted, bytes of the raw (still percent-encoded) path. */
export const MAX_PATH_LENGTH = 2048;

/** A whole segment that is `.` or `..` (what splitting on `/` would find, without building the array per request). */
const DOT_SEGMENT = /(?:^|\/)\.{1,2}(?:\/|$)/;

/**
 * Why a path is refused, or undefined when it is safe to route. Routing and the upstream see the same raw
 * path, so anything that a server behind us could decode into a different route is refused rather than
 * "fixed": dot segments (plain, encoded or double-encoded), encoded slashes and backslashes, empty
 * segments, NUL and control characters, and malformed or overlong UTF-8 (which `decodeURIComponent`
 * rejects).
 */
export function pathProblem(rawPath: string): string | undefined {
  if (rawPath.length > MAX_PATH_LENGTH) return `the path is longer than ${MAX_PATH_LENGTH} characters`;
  if (!rawPath.startsWith('/')) return 'the path must start with /';
  if (/%(2f|5c)/i.test(rawPath)) return 'encoded slashes are not allowed';
  let decoded: string;
  try {
    decoded = decodeURIComponent(rawPath);
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
  if (/%(2e|2f|5c)/i.test(decoded)) return 'double-encoded dots or slashes are not allowed';
  return undefined;
}

/** Refuses ambiguous paths with 400 before anything routes, limits or forwards on them. */
export function createPathGuard(): Middleware {
  // Not async: nothing to do after next(), so no promise and await of its own per request (a throw still rejects).
  return function guardPath(ctx, next) {
    const problem = pathProblem(ctx.path);
    if (problem !== undefined) throw new GatewayError('bad_path', `${problem}.`);
    return next();
  };
}
