import { RequestedTraceIdGenerator, withTraceId } from '../../otel/trace-ids';

/**
 * The ids the gateway makes for its spans are what the SDK's RandomIdGenerator makes: lower-case hex of 16 and
 * 32 characters from Math.random's bits in the same order, never the invalid all-zero id.
 */
describe('RequestedTraceIdGenerator', () => {
  afterEach(() => jest.restoreAllMocks());

  it('makes lower-case hex ids of the W3C lengths, with every digit used', () => {
    const generator = new RequestedTraceIdGenerator();
    const digits = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const traceId = generator.generateTraceId();
      const spanId = generator.generateSpanId();
      expect(traceId).toMatch(/^[0-9a-f]{32}$/);
      expect(spanId).toMatch(/^[0-9a-f]{16}$/);
      for (const digit of traceId + spanId) digits.add(digit);
    }
    expect([...digits].sort().join('')).toBe('0123456789abcdef');
  });

  it('writes the random bits in order, high word first, as the SDK does', () => {
    const words = [0x0123_4567, 0x89ab_cdef, 0xfedc_ba98, 0x7654_3210];
    let call = 0;
    jest.spyOn(Math, 'random').mockImplementation(() => words[call++ % words.length]! / 2 ** 32);
    const generator = new RequestedTraceIdGenerator();
    expect(generator.generateTraceId()).toBe('0123456789abcdeffedcba9876543210');
    expect(generator.generateSpanId()).toBe('0123456789abcdef');
  });

  it('never makes the invalid all-zero id: its last byte becomes 01, as the SDK makes it', () => {
    jest.spyOn(Math, 'random').mockReturnValue(0);
    const generator = new RequestedTraceIdGenerator();
    expect(generator.generateTraceId()).toBe('00000000000000000000000000000001');
    expect(generator.generateSpanId()).toBe('0000000000000001');
  });

  it('gives a root span the trace id the gateway asked for, once', () => {
    const generator = new RequestedTraceIdGenerator();
    expect(withTraceId('0af7651916cd43dd8448eb211c80319c', () => generator.generateTraceId())).toBe('0af7651916cd43dd8448eb211c80319c');
    expect(generator.generateTraceId()).not.toBe('0af7651916cd43dd8448eb211c80319c');
  });
});
