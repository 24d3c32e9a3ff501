import fs from 'node:fs';
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

describe('bench processes: server ports', () => {
  // The runner starts its servers again on the same ports every round; a port from the kernel's range for outgoing
  // connections could meanwhile be one of the run's own connections' local port (a run stopped on EADDRINUSE so).
  it("hands out distinct ports below the kernel's range for outgoing connections' local ports", () => {
    const lowestLocalPort = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    const ports = evaluate<number[]>('(async () => { const ports = []; for (let i = 0; i < 60; i++) ports.push(await m.freePort()); return ports; })()');
    expect(ports).toHaveLength(60);
    expect(new Set(ports).size).toBe(60);
    // Below that range when it leaves room (the default 32768-60999 does); else any free port.
    if (lowestLocalPort - 10_000 >= 1000) for (const port of ports) expect(port >= 10_000 && port < lowestLocalPort).toBe(true);
  });
});
