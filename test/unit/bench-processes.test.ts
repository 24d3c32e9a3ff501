import { benchModule } from '../helpers/bench-module';

// bench/processes.mjs: the CPU list the bench reads and where it places its processes (cpuPlacement, used by
// bench/run.mjs and bench/paired.mjs): the measured servers on the last CPU named, everything else on the others.
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

  it.each([
    [[0, 1], { pinned: true, servers: '1', others: '0' }],
    [[0, 2, 3, 5], { pinned: true, servers: '5', others: '0,2,3' }],
    [[3], { pinned: false }],
  ])('places the servers of CPUs %j', (cpus, placement) => {
    expect(evaluate('m.cpuPlacement(true, input)', cpus)).toEqual(placement);
    expect(evaluate('m.cpuPlacement(false, input)', cpus)).toEqual({ pinned: false });
  });

  it("reads this process's own list from /proc", () => {
    const cpus = evaluate<number[]>('m.allowedCpus()');
    expect(cpus.length).toBeGreaterThan(0);
    expect(cpus).toEqual([...cpus].sort((a, b) => a - b));
  });
});
