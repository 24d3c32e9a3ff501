import { benchModule } from '../helpers/bench-module';

// bench/processes.mjs: the CPU list the bench reads to place its processes (bench/run.mjs cpuPlacement): the
// measured servers go on the last CPU named, everything else on the ones before it.
const evaluate = benchModule('processes.mjs');

describe('bench processes: CPU lists', () => {
  it.each([
    ['0-1', [0, 1]],
    ['0', [0]],
    ['0,2-3', [0, 2, 3]],
    ['1-2,4,6-7\n', [1, 2, 4, 6, 7]],
    ['', []],
  ])('reads %j as the CPUs it names', (list, cpus) => {
    expect(evaluate<number[]>('m.cpuList(input)', list)).toEqual(cpus);
  });

  it('places the servers on the last CPU and the rest on the others, or nowhere in particular', () => {
    const cpus = evaluate<number[]>('m.allowedCpus()');
    const placement = evaluate<{ pinned: boolean; servers?: string; others?: string }>('m.cpuPlacement(true)');
    if (cpus.length < 2) expect(placement).toEqual({ pinned: false });
    else expect(placement).toEqual({ pinned: true, servers: String(cpus.at(-1)), others: cpus.slice(0, -1).join(',') });
    expect(evaluate('m.cpuPlacement(false)')).toEqual({ pinned: false });
  });

  it("reads this process's own list from /proc", () => {
    const cpus = evaluate<number[]>('m.allowedCpus()');
    expect(cpus.length).toBeGreaterThan(0);
    expect(cpus).toEqual([...cpus].sort((a, b) => a - b));
  });
});
