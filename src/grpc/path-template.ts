/**
 * `google.api.http` path templates (google/api/http.proto, "Path template syntax"), parsed once at start-up
 * and matched against request paths without any per-request parsing of the template:
 *
 *   Template = "/" Segments ;  Segment = "*" | "**" | LITERAL | Variable ;
 *   Variable = "{" FieldPath [ "=" Segments ] "}" ;  FieldPath = IDENT { "." IDENT } ;
 *
 * A variable without `=` is one segment (`{id}` = `{id=*}`); `**` (only last) matches the rest of the path, which
 * may be no segment at all. `*` and each segment `**` takes are never empty: a trailing slash fits no template.
 * Verbs (`:cancel`) are not supported: a template with one is refused at start-up.
 */

interface LiteralSegment {
  kind: 'literal';
  text: string;
}
interface WildcardSegment {
  kind: 'one' | 'rest';
}
type Segment = LiteralSegment | WildcardSegment;

interface Variable {
  /** Field path, as written in the proto (`user.id`). */
  fieldPath: string[];
  /** Segment range [start, end) of the template the variable covers; `end` is Infinity for a trailing `**`. */
  start: number;
  end: number;
}

export interface PathTemplate {
  readonly source: string;
  readonly segments: readonly Segment[];
  readonly variables: readonly Variable[];
}

/** A variable's value is refused beyond this many characters (decoded), whatever the field. */
export const MAX_PATH_VARIABLE_LENGTH = 1024;

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
const LITERAL = /^[A-Za-z0-9._~!$&'()+,;=@-]+$/;

export function parsePathTemplate(source: string): PathTemplate {
  const fail = (why: string): never => {
    throw new Error(`path template "${source}": ${why}`);
  };
  if (!source.startsWith('/')) fail('must start with /');
  const segments: Segment[] = [];
  const variables: Variable[] = [];
  // Split on "/" outside braces, so `{name=shelves/*}` stays one piece.
  const pieces: string[] = [];
  let depth = 0;
  let current = '';
  for (const char of source.slice(1)) {
    if (char === '{') depth++;
    if (char === '}') depth--;
    if (depth < 0 || depth > 1) fail('unbalanced braces');
    if (char === '/' && depth === 0) {
      pieces.push(current);
      current = '';
    } else current += char;
  }
  if (depth !== 0) fail('unbalanced braces');
  pieces.push(current);

  const plain = (text: string): Segment => {
    if (text === '*') return { kind: 'one' };
    if (text === '**') return { kind: 'rest' };
    if (text.includes(':')) fail('verbs (":verb") are not supported');
    if (!LITERAL.test(text) || text === '.' || text === '..') fail(`"${text}" is not a literal segment`);
    return { kind: 'literal', text };
  };
  for (const piece of pieces) {
    if (piece === '') fail('empty segment');
    if (piece.startsWith('{')) {
      if (!piece.endsWith('}')) fail(`"${piece}" mixes a variable and text in one segment`);
      const [field, pattern] = piece.slice(1, -1).split('=', 2) as [string, string | undefined];
      const fieldPath = field.split('.');
      if (!fieldPath.every((name) => IDENT.test(name))) fail(`"${field}" is not a field path`);
      const start = segments.length;
      for (const part of (pattern ?? '*').split('/')) segments.push(plain(part));
      variables.push({ fieldPath, start, end: segments.at(-1)!.kind === 'rest' ? Infinity : segments.length });
    } else segments.push(plain(piece));
  }
  segments.forEach((segment, index) => {
    if (segment.kind === 'rest' && index !== segments.length - 1) fail('"**" must be the last segment');
  });
  return { source, segments, variables };
}

/** Each segment kind's place when templates compete for a path: a literal, then `*`, then `**`. */
const SEGMENT_RANK = { literal: 0, one: 1, rest: 2 } as const;

/**
 * Which of two templates a path both fit goes to, as the reference matcher decides (grpc-httpjson-transcoding's
 * path matcher, which Envoy's transcoder uses: segment by segment from the left, a literal before `*` before `**`):
 * negative when `a` comes first. Where one is the other plus segments, the shorter first (`/v1/files` before
 * `/v1/files/**`). Sorted by their literal counts instead, `/v1/{name=**}` took `/v1/x/y` from `/v1/{a}/{b}`, and
 * at equal counts the proto's order decided (`/v1/{p=files/**}` before `/v1/files/{id}`).
 */
export function comparePrecedence(a: PathTemplate, b: PathTemplate): number {
  const shared = Math.min(a.segments.length, b.segments.length);
  for (let index = 0; index < shared; index++) {
    const difference = SEGMENT_RANK[a.segments[index]!.kind] - SEGMENT_RANK[b.segments[index]!.kind];
    if (difference !== 0) return difference;
  }
  return a.segments.length - b.segments.length;
}

/** Why a path variable was refused (-> 400 before anything reaches the service). */
export class PathVariableError extends Error {
  override name = 'PathVariableError';
}

export interface PathBinding {
  fieldPath: string[];
  value: string;
}

/**
 * The variables of `path` (the route's upstream path, as the client spelled it) when it fits the template,
 * or undefined (also when a wildcard would take an empty segment). Each segment is percent-decoded on its own; a
 * decoded value that could change which resource is meant (a `/` inside one segment, a dot segment, a control character) or is over
 * MAX_PATH_VARIABLE_LENGTH is refused with PathVariableError rather than passed to the service.
 */
export function matchPathTemplate(template: PathTemplate, path: string): PathBinding[] | undefined {
  const parts = path.split('/').slice(1);
  const { segments } = template;
  const hasRest = segments.at(-1)?.kind === 'rest';
  // `**` matches zero or more segments (google/api/http.proto): `/v1/{name=files/**}` takes `/v1/files` too.
  if (hasRest ? parts.length < segments.length - 1 : parts.length !== segments.length) return undefined;
  for (let index = 0; index < segments.length; index++) {
    const segment = segments[index]!;
    if (segment.kind === 'literal' && parts[index] !== segment.text) return undefined;
    // An empty segment (a trailing slash: `/v1/things/` for `{id}`, `/v1/files/a/` for `**`) is no segment a
    // wildcard takes: the path fits no template (404, as any unmatched path), never a call with an empty value.
    if (segment.kind === 'one' && parts[index] === '') return undefined;
    if (segment.kind === 'rest' && parts.slice(index).includes('')) return undefined;
  }
  return template.variables.map(({ fieldPath, start, end }) => {
    const covered = parts.slice(start, end === Infinity ? undefined : end);
    return { fieldPath, value: covered.map(decodeSegment).join('/') };
  });
}

function decodeSegment(raw: string): string {
  let value: string;
  try {
    value = decodeURIComponent(raw);
  } catch {
    throw new PathVariableError('a path variable is not valid percent-encoding');
  }
  if (value === '' || value === '.' || value === '..') throw new PathVariableError('a path variable is empty or a dot segment');
  if (value.includes('/') || value.includes('\\')) throw new PathVariableError('a path variable contains a slash');
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(value)) throw new PathVariableError('a path variable contains a control character');
  if (value.length > MAX_PATH_VARIABLE_LENGTH) throw new PathVariableError(`a path variable is longer than ${MAX_PATH_VARIABLE_LENGTH} characters`);
  return value;
}
