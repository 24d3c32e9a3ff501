import contentDisposition, { parse as parseContentDisposition } from 'content-disposition';

/** Any character outside ASCII. */
// eslint-disable-next-line no-control-regex
const NON_ASCII = /[^\x00-\x7f]/;

/** A disposition's type, then one parameter after another: the grammar of the `content-disposition` parser's own (RFC 6266). */
const DISPOSITION_TYPE = /^[!#$%&'*+.0-9A-Z^_`a-z|~-]+[\t ]*(?:$|;)/;
// eslint-disable-next-line no-control-regex
const PARAMETER = /;[\t ]*([!#$%&'*+.0-9A-Z^_`a-z|~-]+)[\t ]*=[\t ]*("(?:[\x20!\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\x20-\x7e])*"|[!#$%&'*+.0-9A-Z^_`a-z|~-]+)[\t ]*/y;

/** The names of a value's parameters, lower case, as the parser read them (a value it took: parsed already). */
function parameterNames(value: string): string[] {
  const type = DISPOSITION_TYPE.exec(value);
  if (!type) return [];
  const names: string[] = [];
  PARAMETER.lastIndex = type[0].endsWith(';') ? type[0].length - 1 : type[0].length;
  for (let match = PARAMETER.exec(value); match; match = PARAMETER.exec(value)) names.push(match[1]!.toLowerCase());
  return names;
}

/** Decodes bytes as UTF-8, refusing any that are not. */
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A service's `Content-Disposition` value as the gateway passes it on: as it is when it is ASCII (as nearly always),
 * else written in ASCII (RFC 6266 4.3: the name as `filename*=UTF-8''...`, RFC 8187, with an ASCII `filename`
 * beside it).
 *
 * Why: a file name in raw UTF-8 (`filename="č.pdf"`, bytes C4 8D) arrives from undici as one character per byte
 * (latin1), and Node's http module writes this one field of an answer with a Content-Length its own way
 * (_http_outgoing processHeader, nodejs/node#46528, #58240): the value's bytes read back as UTF-8, then written one
 * byte per character, each character cut to its low byte. `č` (U+010D) went out as a carriage return and `Ċ`
 * (U+010A) as a line feed: a service's valid field became the client's `Set-Cookie` and any header, and the
 * response cache kept it for every later client (an outside review did both). Written in ASCII the field is the same
 * bytes whichever way Node writes it, over HTTP/1.1 and HTTP/2.
 *
 * The service's bytes are read as UTF-8 where they are (what services send), else as ISO-8859-1 (RFC 6266's own
 * `filename` charset). Of the parameters only the disposition type and the file name are kept: nothing standard
 * but those is sent in HTTP (RFC 6266 4.3), and no standard sender puts bytes outside ASCII into this field at all. A
 * value the parser does not take has each byte outside ASCII written as `%XX`: still no line break.
 */
export function asciiContentDisposition(value: string): string {
  if (!NON_ASCII.test(value)) return value;
  try {
    const { type, parameters } = parseContentDisposition(value);
    const given = parameters.filename;
    if (given === undefined) return contentDisposition(undefined, { type });
    // From `filename*` the parser decoded it already (RFC 8187); from a quoted `filename` it is the service's bytes,
    // one character per byte. Told by the parameters the value has (a look for `filename*` anywhere in it found one
    // quoted in another parameter, and left a raw UTF-8 name garbled; one by the name's characters took a decoded
    // `Ã©` for the bytes of `é`).
    const name = parameterNames(value).includes('filename*') ? given : fieldValueAsText(given);
    // eslint-disable-next-line no-control-regex
    return contentDisposition(name, { type, fallback: name.replace(/[^\x20-\x7e]/g, '?') });
  } catch {
    return percentEncodedBytes(value);
  }
}

/**
 * A field value as undici and Node hand it over, one character per byte (latin1), read as the text it is: UTF-8
 * where the bytes are, else ISO-8859-1.
 */
export function fieldValueAsText(latin1: string): string {
  try {
    return strictUtf8.decode(Buffer.from(latin1, 'latin1'));
  } catch {
    return latin1;
  }
}

/** Each character outside ASCII (one byte of a latin1 string; any other as its UTF-8 bytes) as `%XX`. */
function percentEncodedBytes(value: string): string {
  // eslint-disable-next-line no-control-regex
  return value.replace(/[^\x00-\x7f]/g, (character) => {
    const code = character.charCodeAt(0);
    const bytes = code <= 0xff ? [code] : [...Buffer.from(character, 'utf8')];
    return bytes.map((byte) => `%${byte.toString(16).toUpperCase().padStart(2, '0')}`).join('');
  });
}
