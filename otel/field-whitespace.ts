/**
 * Optional whitespace (RFC 9110 5.6.3: spaces and tabs) and runs of one character cut from the ends of a field value,
 * by a scan from each end: linear in the value's length. A regular expression such as `/[ \t]+$/` is quadratic on
 * a value with a long run of them before a last other character (V8 retries the run from each of its positions):
 * 16 KiB of such a header, which a client or a service chooses, held the event loop for 0.2-0.5 s.
 */

const SPACE = 0x20;
const TAB = 0x09;

const isSpaceOrTab = (code: number) => code === SPACE || code === TAB;

/** `value` without the spaces and tabs at its end. */
export function withoutTrailingWhitespace(value: string): string {
  let end = value.length;
  while (end > 0 && isSpaceOrTab(value.charCodeAt(end - 1))) end--;
  return end === value.length ? value : value.slice(0, end);
}

/** `value` without the spaces and tabs at its start. */
export function withoutLeadingWhitespace(value: string): string {
  let start = 0;
  while (start < value.length && isSpaceOrTab(value.charCodeAt(start))) start++;
  return start === 0 ? value : value.slice(start);
}

/** `value` without the spaces and tabs at either end. */
export function withoutEdgeWhitespace(value: string): string {
  return withoutLeadingWhitespace(withoutTrailingWhitespace(value));
}

/** `value` without every `character` (one UTF-16 code unit) at its end. */
export function withoutTrailing(value: string, character: string): string {
  const code = character.charCodeAt(0);
  let end = value.length;
  while (end > 0 && value.charCodeAt(end - 1) === code) end--;
  return end === value.length ? value : value.slice(0, end);
}
