// The benchmark's processes: start them with their output in files, read their CPU time and peak memory
// from /proc, and make sure every one of them ends, whatever happens to the runner.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

const running = new Set();

// Last resort: a runner that dies still takes its children with it.
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export { freePort } from './free-port.cjs';

/**
 * Starts `command args` with stdout and stderr appended to files (a server started again in the next round
 * adds to its log; the callers start from an empty folder). Returns the child; `exited` resolves with its exit
 * code (or signal).
 */
export function start(name, command, args, { cwd, env, stdoutFile, stderrFile }) {
  const out = fs.openSync(stdoutFile, 'a');
  const err = stderrFile === stdoutFile ? out : fs.openSync(stderrFile, 'a');
  const child = spawn(command, args, { cwd, env, stdio: ['ignore', out, err] });
  fs.closeSync(out);
  if (err !== out) fs.closeSync(err);
  running.add(child);
  child.benchName = name;
  child.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      running.delete(child);
      resolve(code ?? signal);
    });
    child.once('error', (error) => {
      running.delete(child);
      resolve(`failed to start: ${error.message}`);
    });
  });
  return child;
}

/** SIGTERM, then SIGKILL after `graceMs`. */
export async function stop(child, graceMs = 5000) {
  if (!running.has(child)) return child.exited;
  child.kill('SIGTERM');
  const outcome = await Promise.race([child.exited, sleep(graceMs).then(() => 'timeout')]);
  if (outcome !== 'timeout') return outcome;
  child.kill('SIGKILL');
  return child.exited;
}

export async function stopAll() {
  await Promise.all([...running].map((child) => stop(child)));
}

/**
 * Resolves once GET `url` answers 200, or rejects after `timeoutMs` (or as soon as `child` exits). Each try
 * gives up after `attemptTimeoutMs`: a process under valgrind on a busy machine needs more than a second.
 */
export async function waitUntilServing(url, { headers = {}, timeoutMs = 20_000, attemptTimeoutMs = 1000, child } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (child && !running.has(child)) throw new Error(`${child.benchName} exited (${await child.exited}) before serving ${url}`);
    try {
      const response = await fetch(url, { headers, signal: AbortSignal.timeout(attemptTimeoutMs) });
      const body = await response.text();
      if (response.status === 200) return body;
      last = `${response.status} ${body.slice(0, 200)}`;
    } catch (error) {
      last = error.cause?.code ?? error.message;
    }
    await sleep(100);
  }
  throw new Error(`${url} did not answer 200 within ${timeoutMs} ms (last: ${last})`);
}

/** The fields of a /proc `stat` file after the command name, which is in parentheses and may itself contain spaces. */
function statFields(file) {
  const stat = fs.readFileSync(file, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** utime + stime of a process so far, and of its waited-for children (cutime + cstime), in clock ticks. */
export function cpuTicks(pid) {
  const fields = statFields(`/proc/${pid}/stat`);
  return { own: Number(fields[11]) + Number(fields[12]), children: Number(fields[13]) + Number(fields[14]) };
}

/** utime + stime so far of a process's main thread and of its other threads together, in clock ticks. */
export function threadCpuTicks(pid) {
  const ticks = { main: 0, other: 0 };
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    let fields;
    try {
      fields = statFields(`/proc/${pid}/task/${task}/stat`);
    } catch {
      continue; // a thread that ended between the listing and the read
    }
    ticks[Number(task) === pid ? 'main' : 'other'] += Number(fields[11]) + Number(fields[12]);
  }
  return ticks;
}

/** Peak resident set size (VmHWM) and current one (VmRSS), in MiB. */
export function memoryMiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (key) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { peak: Math.round(kib('VmHWM') / 102.4) / 10, current: Math.round(kib('VmRSS') / 102.4) / 10 };
}

/** Direct children of `pid` (nginx's worker under its master). */
export function childPids(pid) {
  try {
    return fs
      .readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return fs
      .readdirSync('/proc')
      .filter((entry) => /^\d+$/.test(entry))
      .filter((entry) => {
        try {
          const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
          return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid;
        } catch {
          return false;
        }
      })
      .map(Number);
  }
}

/**
 * Counts the lines containing `marker` appended to a file since the last call, reading only the new bytes
 * (the gateway's access log grows to tens of MB during a run).
 */
/** The text of `file` from byte `start` to byte `end` (empty when there is none). */
export function readRange(file, start, end) {
  if (end <= start) return '';
  const buffer = Buffer.alloc(end - start);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, buffer, 0, buffer.length, start);
  } finally {
    fs.closeSync(fd);
  }
  return buffer.toString('utf8');
}

export class LineCounter {
  #offset = 0;
  #count = 0;
  #partial = '';
  constructor(file, marker) {
    this.file = file;
    this.marker = marker;
  }

  count() {
    const size = fs.statSync(this.file).size;
    if (size > this.#offset) {
      const text = readRange(this.file, this.#offset, size);
      this.#offset = size;
      const lines = (this.#partial + text).split('\n');
      this.#partial = lines.pop();
      for (const line of lines) if (line.includes(this.marker)) this.#count++;
    }
    return this.#count;
  }
}

/** The CPUs this process may run on (`Cpus_allowed_list` of /proc/self/status), in order. */
export function allowedCpus() {
  return cpuList(/^Cpus_allowed_list:\s*(.*)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '');
}

/**
 * Where the bench places its processes (bench/README.md): with `pin` and 2 CPUs or more, the measured servers on the
 * last of `cpus` (by default the CPUs this process may use: `servers`) and everything else (the runner, wrk, the
 * upstream, the sinks) on the others (`others`), as taskset CPU lists; unpinned, anywhere.
 */
export function cpuPlacement(pin, cpus = allowedCpus()) {
  if (!pin || cpus.length < 2) return { pinned: false };
  return { pinned: true, servers: String(cpus.at(-1)), others: cpus.slice(0, -1).join(',') };
}

/** A kernel CPU list (`0-1`, `0,2-3`) as the CPU numbers it names, in order. */
export function cpuList(list) {
  const cpus = [];
  for (const part of list.trim().split(',').filter(Boolean)) {
    const [from, to = from] = part.split('-').map(Number);
    for (let cpu = from; cpu <= to; cpu++) cpus.push(cpu);
  }
  return cpus;
}

/**
 * Keeps every thread of `pid` on `cpus` (a list such as `1` or `0-2`; util-linux's taskset). Threads it starts
 * later inherit it from the thread that starts them.
 */
export function pinTo(pid, cpus) {
  const result = spawnSync('taskset', ['--all-tasks', '--cpu-list', '--pid', cpus, String(pid)], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`taskset could not pin ${pid} to CPUs ${cpus}: ${result.error?.message ?? result.stderr.trim()}`);
}
