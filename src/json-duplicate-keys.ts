/**
 * The first key an object of a JSON text names twice, as a config key path (`routes.3.auth`), or undefined.
 *
 * JSON.parse keeps the last of two equal keys without a word (RFC 8259 4: names SHOULD be unique, and parsers
 * differ on which one wins), so a route with `"auth": "required"` above an `"auth": "public"` left over from an
 * edit was served without a token, and a reviewer reading the first one saw a protected route. Keys are compared as
 * JSON.parse reads them: `"auth"` and `"\u0061uth"` are the same key. `text` must be valid JSON (JSON.parse took it).
 */
export function duplicateJsonKey(text: string): string | undefined {
  let at = 0;
  const skipSpace = () => {
    while (at < text.length && ' \t\n\r'.includes(text[at]!)) at++;
  };
  /** The raw string token starting at `at` (its quotes included), leaving `at` after it. */
  const readString = (): string => {
    const start = at++;
    while (text[at] !== '"') at += text[at] === '\\' ? 2 : 1;
    at++;
    return text.slice(start, at);
  };
  const readValue = (path: readonly (string | number)[]): string | undefined => {
    skipSpace();
    const first = text[at];
    if (first === '{') {
      at++;
      const seen = new Set<string>();
      skipSpace();
      if (text[at] === '}') return void at++;
      for (;;) {
        skipSpace();
        const key = JSON.parse(readString()) as string;
        if (seen.has(key)) return [...path, key].join('.');
        seen.add(key);
        skipSpace();
        at++; // the colon
        const found = readValue([...path, key]);
        if (found !== undefined) return found;
        skipSpace();
        if (text[at++] === '}') return undefined;
      }
    }
    if (first === '[') {
      at++;
      skipSpace();
      if (text[at] === ']') return void at++;
      for (let index = 0; ; index++) {
        const found = readValue([...path, index]);
        if (found !== undefined) return found;
        skipSpace();
        if (text[at++] === ']') return undefined;
      }
    }
    if (first === '"') return void readString();
    // A number, true, false or null: up to the next delimiter.
    while (at < text.length && !',]} \t\n\r'.includes(text[at]!)) at++;
    return undefined;
  };
  return readValue([]);
}
