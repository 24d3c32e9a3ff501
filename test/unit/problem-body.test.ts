import { GatewayError, MAX_QUOTED_PATH_LENGTH, quotedPath } from '../../src/errors';
import { problemBody } from '../../src/middleware/errors';

describe('quotedPath (what an error body quotes of the request path)', () => {
  it('quotes a path up to the limit as it is', () => {
    const path = `/api/${'a'.repeat(MAX_QUOTED_PATH_LENGTH - 5)}`;
    expect(quotedPath(path)).toBe(path);
  });

  it('quotes only the start of a longer path, marked as cut', () => {
    expect(quotedPath(`/api/${'a'.repeat(16_000)}`)).toBe(`/api/${'a'.repeat(MAX_QUOTED_PATH_LENGTH - 5)}...`);
  });

  it('never cuts a character in half: a pair across the limit goes whole or not at all', () => {
    const quoted = quotedPath(`/${'a'.repeat(MAX_QUOTED_PATH_LENGTH - 2)}😀${'b'.repeat(100)}`);
    expect(quoted).toBe(`/${'a'.repeat(MAX_QUOTED_PATH_LENGTH - 2)}...`);
    expect(quoted).not.toMatch(/[\ud800-\udbff](?![\udc00-\udfff])/);
  });

  it('is what a problem body names as its instance', () => {
    const path = `/api/${'a'.repeat(3000)}`;
    expect(problemBody(new GatewayError('uri_too_long', 'The request path is too long.'), 'id-1', path).instance).toBe(quotedPath(path));
  });
});
