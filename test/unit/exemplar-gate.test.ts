import { TraceFlags, type SpanContext } from '@opentelemetry/api';
import { createExemplarGate, EXEMPLAR_INTERVAL_MS } from '../../src/metrics';

const sampled = (traceId: string): SpanContext => ({ traceId, spanId: '1'.repeat(16), traceFlags: TraceFlags.SAMPLED });
const unsampled = (traceId: string): SpanContext => ({ traceId, spanId: '1'.repeat(16), traceFlags: TraceFlags.NONE });

describe('exemplar gate', () => {
  let clock: number;
  let gate: ReturnType<typeof createExemplarGate>;
  beforeEach(() => {
    clock = 1_000_000;
    gate = createExemplarGate([0.01, 0.1, 1], () => clock);
  });

  it('gives a sampled observation its trace id, and an unsampled one none', () => {
    expect(gate('a', 0.005, sampled('a'.repeat(32)))).toEqual({ trace_id: 'a'.repeat(32) });
    expect(gate('b', 0.005, unsampled('b'.repeat(32)))).toBeUndefined();
    expect(gate('c', 0.005, undefined)).toBeUndefined();
  });

  it('gives one series and bucket at most one exemplar per interval, then the next one', () => {
    expect(gate('a', 0.005, sampled('1'.repeat(32)))).toBeDefined();
    expect(gate('a', 0.006, sampled('2'.repeat(32)))).toBeUndefined();
    clock += EXEMPLAR_INTERVAL_MS - 1;
    expect(gate('a', 0.007, sampled('3'.repeat(32)))).toBeUndefined();
    clock += 1;
    expect(gate('a', 0.008, sampled('4'.repeat(32)))).toEqual({ trace_id: '4'.repeat(32) });
  });

  it('never lets a hot bucket or series take the exemplar of a rare one (the slow tail)', () => {
    expect(gate('a', 0.005, sampled('1'.repeat(32)))).toBeDefined();
    expect(gate('a', 0.5, sampled('2'.repeat(32)))).toEqual({ trace_id: '2'.repeat(32) });
    expect(gate('a', 5, sampled('3'.repeat(32)))).toEqual({ trace_id: '3'.repeat(32) });
    expect(gate('b', 0.005, sampled('4'.repeat(32)))).toEqual({ trace_id: '4'.repeat(32) });
  });
});
