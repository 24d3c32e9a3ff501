/** A UTF-16 surrogate standing alone: with the `u` flag a pair is one code point, which `\p{Surrogate}` never matches. */
const LONE_SURROGATE = /\p{Surrogate}/u;

/**
 * Whether a string is Unicode text (String.prototype.isWellFormed, before the project's TypeScript lib names it): no
 * unpaired surrogate, which UTF-8 (a hash's input, a protobuf string, a header) can only write as U+FFFD.
 */
export function isWellFormedText(text: string): boolean {
  return !LONE_SURROGATE.test(text);
}
