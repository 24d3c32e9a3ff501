/** A UTF-16 surrogate standing alone: with the `u` flag a pair is one code point, which `\p{Surrogate}` never matches. */
const LONE_SURROGATE = /\p{Surrogate}/u;

/**
 * Whether a string is Unicode text (String.prototype.isWellFormed, before the project's TypeScript lib names it): no
 * unpaired surrogate, which UTF-8 (a hash's input, a protobuf string, a header) can only write as U+FFFD.
 */
export function isWellFormedText(text: string): boolean {
  return !LONE_SURROGATE.test(text);
}

/** U+FFFD, what a decoder writes for bytes that are not UTF-8. */
const REPLACEMENT_CHARACTER = '\ufffd';

/**
 * Whether a credential (a password, the email it goes with) is the text its sender meant: well formed
 * (isWellFormedText), and without U+FFFD, which the body parsers (the gateway's login, the services') write for every
 * byte that is not UTF-8. `caf\xE9` and `caf\xFF` were both `caf\uFFFD`: a password sent as Latin-1 made each of its
 * accented letters a wildcard that any other such byte matched. A client that means U+FFFD itself is refused too:
 * no password needs it.
 */
export function isIntactCredential(text: string): boolean {
  return isWellFormedText(text) && !text.includes(REPLACEMENT_CHARACTER);
}

/**
 * What no name or SKU holds: control characters (C0, DEL, C1); the bidirectional controls (embeddings, overrides,
 * isolates, marks); the line and paragraph separators (U+2028, U+2029: line breaks to whatever prints them); and the
 * invisible format characters that make `Admin` look-alikes or names that show as nothing (zero-width space, word
 * joiner and the invisible operators, the byte-order mark, the soft hyphen, the interlinear annotation marks), and
 * noncharacters. Not the zero-width (non-)joiner (U+200C, U+200D: Persian, Indic scripts, emoji sequences), nor
 * variation selectors or tag characters (emoji presentation, subdivision flags).
 */
// eslint-disable-next-line no-control-regex
const CONTROL_OR_BIDI = /[\p{Cc}\p{Zl}\p{Zp}\u00ad\u061c\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb\ufdd0-\ufdef\ufffe\uffff]/u;

/**
 * Whether a short text a person sees (a name, a SKU) is plain text as sent: intact (isIntactCredential: no U+FFFD
 * the parser made of bytes that are not UTF-8, no unpaired surrogate), and without a control character or a
 * bidirectional control. A stored `\u202eAdmin` showed reversed in the admin's user list, a NUL or line feed broke
 * the lines of whatever printed it, and `caf\xE9` and `caf\xFF` (both `caf\uFFFD`) were one SKU to the idempotency
 * check, which replayed one order for three different bodies.
 */
export function isPlainText(text: string): boolean {
  return isIntactCredential(text) && !CONTROL_OR_BIDI.test(text);
}

/** What a refusal of isPlainText says (a zod refinement's message). */
export const PLAIN_TEXT_RULE = { message: 'must be plain UTF-8 text (no control or bidirectional-control characters, no bytes that are not UTF-8)' };

/** Charsets whose text is UTF-8 as it is: UTF-8's names, and US-ASCII (a subset of it), lower case. */
const UTF8_READABLE_CHARSETS: ReadonlySet<string> = new Set(['utf-8', 'utf8', 'us-ascii', 'ascii']);

/**
 * Whether a body declared in `charset` (a Content-Type parameter, any case; '' for none) reads as UTF-8, as JSON is
 * (RFC 8259 8.1) and as the body parsers read every body: another (Latin-1, UTF-16) was read as other text than its
 * client sent, each byte that is not UTF-8 a U+FFFD. US-ASCII is UTF-8 already: refused, older clients that name it
 * were refused every write.
 */
export function readsAsUtf8(charset: string): boolean {
  return charset === '' || UTF8_READABLE_CHARSETS.has(charset.toLowerCase());
}
