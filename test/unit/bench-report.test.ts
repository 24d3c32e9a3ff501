import { benchModule } from '../helpers/bench-module';

// bench/report.mjs: the verdicts `npm run bench` prints, checked on hand-made runs whose figures are known: the
// tracing's-floor table (what tracing costs the bare proxy, what it costs the gateway, the first as a share of
// the untraced gateway) and the RSS line compared round by round now that every round has fresh processes.
const evaluate = benchModule('report.mjs');

/** CPU µs per request of each case's 50-connection run, per round. */
type Cpu = Record<string, number[]>;

function results(cpu: Cpu, memoryMiB: Record<string, { peak: number; rounds?: number[] }> = {}) {
  const runs = [];
  for (const [id, perRound] of Object.entries(cpu)) {
    for (const [index, us] of perRound.entries()) {
      for (const shape of ['throughput', 'latency']) {
        runs.push({ round: index + 1, case: id, shape, rps: 1000, requests: 1000, errors: 0, latencyMs: { p50: 1, p99: 2 }, otherCpuPercent: 0, cpuUsPerRequest: { [id]: us } });
      }
    }
  }
  const cases = Object.fromEntries(Object.keys(cpu).map((id) => [id, { label: id, server: id }]));
  return { runs, cases, memoryMiB, loss: undefined };
}

/** The report's markdown for `input`, with a fixed machine, build and date and the bench's default settings overridden by `settings`. */
function markdownOf(input: unknown, settings: Record<string, unknown>): string {
  const all = { throughputSeconds: 8, slices: 4, warmupSeconds: 3, sliceWarmupSeconds: 1, latencySeconds: 5, connections: 50, ...settings };
  return evaluate<string>(
    `m.toMarkdown({ ...input, ...m.evaluate(input), date: '2026-12-02T00:00:00Z', durationSeconds: 1, machine: { cpus: 2, cpuModel: 'x', memoryGiB: 1, kernel: 'k', node: 'v24', wrk: 'wrk', loadAverageAtStart: [0, 0, 0] }, build: { commit: 'abc', uncommitted: [] }, settings: ${JSON.stringify(all)} })`,
    input,
  );
}

interface Packed {
  median: number | null;
  rounds: (number | null)[];
}
interface TracingFloor {
  floorCostUs: Packed;
  gatewayCostUs: Packed;
  floorShareOfUntracedPercent: Packed;
}
interface BudgetLine {
  id: string;
  measured: number | null;
  rounds: number[];
  result: string;
}

describe("bench report: tracing's floor", () => {
  const cpu: Cpu = {
    'node-floor': [50, 60, 55],
    'node-floor-traced': [70, 75, 85],
    'gateway-untraced': [200, 150, 300],
    gateway: [260, 180, 330],
  };

  it('takes, per round, traced floor minus floor, gateway minus untraced gateway, and the first over the untraced gateway', () => {
    const floor = evaluate<TracingFloor>('m.evaluate(input).tracingFloor', results(cpu));
    expect(floor.floorCostUs.rounds).toEqual([20, 15, 30]);
    expect(floor.floorCostUs.median).toBe(20);
    expect(floor.gatewayCostUs.rounds).toEqual([60, 30, 30]);
    expect(floor.gatewayCostUs.median).toBe(30);
    expect(floor.floorShareOfUntracedPercent.rounds).toEqual([10, 10, 10]);
    expect(floor.floorShareOfUntracedPercent.median).toBe(10);
  });

  it('is absent when one of its four cases did not run, and the markdown then has no such table', () => {
    const { 'node-floor-traced': _traced, ...withoutTracedFloor } = cpu;
    expect(evaluate<TracingFloor | null>('m.evaluate(input).tracingFloor', results(withoutTracedFloor))).toBeNull();
    const markdown = (input: unknown) => markdownOf(input, { rounds: 3 });
    expect(markdown(results(cpu))).toContain("## Tracing's floor");
    expect(markdown(results(cpu))).toContain('| 20.0 (20.0, 15.0, 30.0) | 30.0 (60.0, 30.0, 30.0) | 10.0% (10.0, 10.0, 10.0) |');
    expect(markdown(results(withoutTracedFloor))).not.toContain("## Tracing's floor");
  });
});

describe('bench report: peak RSS line', () => {
  const cpu: Cpu = { 'node-floor': [50, 50, 50], gateway: [150, 150, 150] };
  const rssLine = (input: unknown) => evaluate<BudgetLine[]>('m.evaluate(input).budget', input).find((line) => line.id === 'peak-rss')!;

  it('compares the gateway with the floor round by round when each round had its own processes', () => {
    // Medians alone would say 200 - 150 = +50 (FAIL); the rounds say +20, +60, +30, whose median is +30.
    const line = rssLine(results(cpu, { gateway: { peak: 200, rounds: [170, 200, 210] }, 'node-floor': { peak: 150, rounds: [150, 140, 180] } }));
    expect(line.rounds).toEqual([20, 60, 30]);
    expect(line.measured).toBe(30);
    expect(line.result).toBe('PASS');
  });

  it('falls back to the whole-run peaks when there are no rounds', () => {
    const line = rssLine(results(cpu, { gateway: { peak: 200 }, 'node-floor': { peak: 150 } }));
    expect(line.measured).toBe(50);
    expect(line.result).toBe('FAIL');
  });
});

describe('bench report: where the processes ran', () => {
  const markdown = (cpus: unknown) => markdownOf(results({ 'node-floor': [50, 50], gateway: [150, 150] }), { rounds: 2, cpus });

  it('says which CPU the measured servers had and which the load generator had', () => {
    const text = markdown({ pinned: true, servers: '1', others: '0' });
    expect(text).toContain("Each measured server on CPU 1 (the 2-worker gateway's processes all on it), load generator, upstream and sinks on CPU 0");
    expect(text).not.toContain('share the same cores');
  });

  it('says the cores were shared when nothing was pinned', () => {
    expect(markdown({ pinned: false })).toContain('Load generator, upstream, sink and servers share the same cores');
  });
});

describe('bench report: how lines are judged', () => {
  const lineOf = (input: unknown, id: string) => evaluate<BudgetLine[]>('m.evaluate(input).budget', input).find((line) => line.id === id)!;

  // Rounded first, 1.204x became 1.20x, "+20%", and passed a 20% limit it was over.
  it('judges a ratio unrounded: +20.4% fails a 20% limit, +19.96% passes it', () => {
    const over = lineOf(results({ 'gateway-untraced': [100_000, 100_000, 100_000], gateway: [120_400, 120_400, 120_400] }), 'tracing-cost');
    expect([over.measured, over.result]).toEqual([20.4, 'FAIL']);
    const under = lineOf(results({ 'gateway-untraced': [100_000, 100_000, 100_000], gateway: [119_960, 119_960, 119_960] }), 'tracing-cost');
    expect([under.measured, under.result]).toEqual([20, 'PASS']);
  });

  it('fails a line when requests failed in either case of its pair (they counted as throughput)', () => {
    const input = results({ 'gateway-untraced': [100, 100, 100], gateway: [110, 110, 110] }) as { runs: { case: string; errors: number }[] };
    expect(lineOf(input, 'tracing-cost').result).toBe('PASS');
    input.runs.find((run) => run.case === 'gateway-untraced')!.errors = 3;
    const line = lineOf(input, 'tracing-cost') as BudgetLine & { note?: string };
    expect([line.result, line.note]).toEqual(['FAIL', 'requests failed in gateway-untraced (3)']);
  });

  it('fails the spans-lost line when the load was not the rate it names, and when a CLIENT span is missing', () => {
    const paced = { sent: 6000, ok: 6000, non2xx: 0, errors: 0, skipped: 0, achievedRate: 100, latencyMs: { p50: 1, p99: 2 } };
    const withLoss = (load: Record<string, number | object>, spansLost = 0) => ({ ...results({ 'node-floor': [50], gateway: [150] }), loss: { targetRate: 100, peakRate: 200, seconds: 60, load: { ...paced, ...load }, requestsServed: 6000, serverSpansReceived: 6000, clientSpansReceived: 6000, spansLost } });
    expect(lineOf(withLoss({}), 'spans-lost').result).toBe('PASS');
    // A few sends skipped while the rate held: said, not failed.
    expect(lineOf(withLoss({ skipped: 12, achievedRate: 99 }), 'spans-lost')).toMatchObject({ result: 'PASS', note: '12 sends skipped at 32 in flight; 99 of 100 req/s answered' });
    // The loader says what it kept in flight (bench/run.mjs LOSS_CONNECTIONS): a result of before it said nothing, and held 32.
    expect(lineOf(withLoss({ skipped: 12, achievedRate: 99, maxInFlight: 128 }), 'spans-lost')).toMatchObject({ result: 'PASS', note: '12 sends skipped at 128 in flight; 99 of 100 req/s answered' });
    expect(lineOf(withLoss({ skipped: 600, achievedRate: 90 }), 'spans-lost').result).toBe('FAIL');
    expect(lineOf(withLoss({ achievedRate: 90 }), 'spans-lost').result).toBe('FAIL');
    expect(lineOf(withLoss({ non2xx: 1 }), 'spans-lost').result).toBe('FAIL');
    expect(lineOf(withLoss({}, 1), 'spans-lost').result).toBe('FAIL');
  });
});
