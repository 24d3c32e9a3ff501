import { GatewayError } from '../../src/errors';
import { MAX_INSTANCE_LENGTH, problemBody } from '../../src/middleware/errors';

describe('problemBody', () => {
  const error = new GatewayError('uri_too_long', 'The request path is too long.');

  it('quotes a path up to the limit as it is', () => {
    const path = `/api/${'a'.repeat(MAX_INSTANCE_LENGTH - 5)}`;
    expect(problemBody(error, 'id-1', path).instance).toBe(path);
  });

  it('quotes only the start of a longer path, marked as cut', () => {
    const instance = problemBody(error, 'id-1', `/api/${'a'.repeat(16_000)}`).instance;
    expect(instance).toBe(`/api/${'a'.repeat(MAX_INSTANCE_LENGTH - 5)}...`);
  });

  it('never cuts a character in half: a pair across the limit goes whole or not at all', () => {
    const path = `/${'a'.repeat(MAX_INSTANCE_LENGTH - 2)}😀${'b'.repeat(100)}`;
    const instance = problemBody(error, 'id-1', path).instance;
    expect(instance).toBe(`/${'a'.repeat(MAX_INSTANCE_LENGTH - 2)}...`);
    expect(instance).not.toMatch(/[\ud800-\udbff](?![\udc00-\udfff])/);
  });
});
