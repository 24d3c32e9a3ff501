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

  it("reads this process's own list from /proc", () => {
    const cpus = evaluate<number[]>('m.allowedCpus()');
    expect(cpus.length).toBeGreaterThan(0);
    expect(cpus).toEqual([...cpus].sort((a, b) => a - b));
  });
});
