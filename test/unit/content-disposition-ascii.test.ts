import fc from 'fast-check';
import { asciiContentDisposition } from '../../src/content-disposition-ascii';

/** `text`'s UTF-8 bytes as undici hands a field value over: one character per byte (latin1). */
const asReceived = (text: string) => Buffer.from(text, 'utf8').toString('latin1');

describe('asciiContentDisposition', () => {
  it.each([
    ['an ASCII value, as it is', 'attachment; filename="report.pdf"; size=12', 'attachment; filename="report.pdf"; size=12'],
    ['a UTF-8 file name, as RFC 8187 with an ASCII fallback', `attachment; filename="${asReceived('čĊ.pdf')}"`, `attachment; filename="??.pdf"; filename*=UTF-8''%C4%8D%C4%8A.pdf`],
    ['an ISO-8859-1 file name (bytes that are not UTF-8), as the text it is', 'inline; filename="caf\xe9.txt"', `inline; filename="caf?.txt"; filename*=UTF-8''caf%C3%A9.txt`],
    ['a filename* beside a raw fallback, from the filename*', `attachment; filename="${asReceived('ü')}.pdf"; filename*=UTF-8''%E2%82%AC.pdf`, `attachment; filename="?.pdf"; filename*=UTF-8''%E2%82%AC.pdf`],
    ['a filename* of Latin-1 letters (decoded already), as the text it is', `attachment; filename="${asReceived('é')}"; filename*=UTF-8''caf%C3%A9.txt`, `attachment; filename="caf?.txt"; filename*=UTF-8''caf%C3%A9.txt`],
    // `filename*` quoted in another parameter is no filename* parameter: the raw name is still read as UTF-8.
    // Decoded from filename*, `Ã©` is what the service named (not the bytes of `é`).
    ['a filename* whose name reads like UTF-8 bytes, as it is', `attachment; filename*=UTF-8''%C3%83%C2%A9.pdf; x="${asReceived('é')}"`, `attachment; filename="??.pdf"; filename*=UTF-8''%C3%83%C2%A9.pdf`],
    ['a raw UTF-8 name beside a parameter quoting "filename*"', `attachment; note="filename*"; filename="${asReceived('čaj')}.pdf"`, `attachment; filename="?aj.pdf"; filename*=UTF-8''%C4%8Daj.pdf`],
    ['a type alone with a byte outside ASCII elsewhere, as percent-escapes', `attachment; note=${asReceived('é')}`, 'attachment; note=%C3%A9'],
    ['a value the parser refuses, as percent-escapes', `attachment; filename=${asReceived('č')}`, 'attachment; filename=%C4%8D'],
  ])('writes %s', (_desc, given, expected) => {
    expect(asciiContentDisposition(given)).toBe(expected);
  });

  it('writes every value a service can send (visible ASCII, space, tab, bytes 0x80-0xFF) as ASCII without a control, and an ASCII one as it is (generated)', () => {
    const fieldCharacter = fc.oneof(fc.integer({ min: 0x20, max: 0x7e }), fc.constant(0x09), fc.integer({ min: 0x80, max: 0xff })).map((code) => String.fromCharCode(code));
    const value = fc.oneof(
      fc.string({ unit: fieldCharacter, maxLength: 60 }),
      fc.string({ unit: fieldCharacter, maxLength: 40 }).map((name) => `attachment; filename="${name.replace(/["\\]/g, '')}"`),
      fc.string({ unit: 'grapheme', maxLength: 20 }).map((name) => `inline; filename="${asReceived(name.replace(/["\\\u0000-\u001f\u007f]/g, ''))}"`),
    );
    fc.assert(
      fc.property(value, (given) => {
        const written = asciiContentDisposition(given);
        // eslint-disable-next-line no-control-regex
        return /^[\t\x20-\x7e]*$/.test(written) && (!/[^\x00-\x7f]/.test(given) ? written === given : true);
      }),
      { seed: 20261207, numRuns: 500 },
    );
  });
});
