import { upstreamFailure } from '../../src/errors';

/** A failure as undici or Node report one: an Error with an errno-style code (sometimes on its cause). */
const failure = (code: string, nested = false) => (nested ? Object.assign(new TypeError('fetch failed'), { cause: Object.assign(new Error(code), { code }) }) : Object.assign(new Error(code), { code }));

describe('upstreamFailure: a failed exchange with a service, in the catalog', () => {
  // undici's parser error for bytes that are not HTTP carries no code, only its name.
  it('reads an HTTPParserError without a code as a response it cannot forward', () => {
    const parserError = Object.assign(new Error('Response does not match the HTTP/1.1 protocol (Expected HTTP/, RTSP/ or ICE/)'), { name: 'HTTPParserError', code: undefined });
    const error = upstreamFailure('orders', parserError);
    expect(error.code).toBe('upstream_bad_response');
    expect(error.message).toMatch(/not HTTP the gateway can forward\.$/);
    expect(error.cause).toBe(parserError);
  });

  it.each([
    { code: 'ECONNREFUSED', expected: 'upstream_refused', detail: /refused the connection/ },
    // Said apart from a reset: a name that does not resolve is a configuration or DNS problem an operator looks for.
    { code: 'ENOTFOUND', expected: 'upstream_refused', detail: /could not be reached/ },
    { code: 'EAI_AGAIN', expected: 'upstream_refused', detail: /could not be reached/ },
    { code: 'EHOSTUNREACH', expected: 'upstream_refused', detail: /could not be reached/ },
    // The service answered, but not with HTTP the gateway can read: a response it cannot forward.
    { code: 'HPE_INVALID_CONSTANT', expected: 'upstream_bad_response', detail: /not HTTP the gateway can forward/ },
    // HTTP, with a head larger than the gateway reads: said so, not called "not HTTP".
    { code: 'UND_ERR_HEADERS_OVERFLOW', expected: 'upstream_bad_response', detail: /headers larger than the gateway reads/ },
    { code: 'UND_ERR_HEADERS_TIMEOUT', expected: 'upstream_timeout', detail: /did not answer in time/ },
    { code: 'ECONNRESET', expected: 'upstream_reset', detail: /failed/ },
    { code: 'UND_ERR_SOCKET', expected: 'upstream_reset', detail: /failed/ },
  ])('$code is $expected', ({ code, expected, detail }) => {
    for (const nested of [false, true]) {
      const error = upstreamFailure('orders', failure(code, nested));
      expect(error.code).toBe(expected);
      expect(error.message).toMatch(detail);
      // Every client is shown the detail: the errno stays in the cause, which the log line and the span carry.
      expect(error.message).not.toContain(code);
      expect(error.cause).toBeDefined();
    }
  });
});
