import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { freePort } from './servers';

/**
 * The real `prometheus` binary (Debian's package, which .ci/run installs), on a free loopback port with its own
 * storage in a temporary directory, and its HTTP API as Grafana calls it.
 */

/** The binary's version, `[major, minor]`, or undefined when `prometheus` is not installed. */
export function prometheusVersion(): [number, number] | undefined {
  const run = spawnSync('prometheus', ['--version'], { encoding: 'utf8' });
  if (run.status !== 0) return undefined;
  const match = /version (\d+)\.(\d+)\./.exec(`${run.stdout}${run.stderr}`);
  return match ? [Number(match[1]), Number(match[2])] : undefined;
}

export interface PrometheusProcess {
  readonly url: string;
  /** GET an API path (`/api/v1/query`, ...) with these parameters; the `data` of a `success` answer, else throws. */
  api<T = unknown>(apiPath: string, params: Record<string, string | string[]>): Promise<T>;
  /** An instant query's vector: `[labels, value]` per series. */
  vector(query: string, time: number): Promise<{ metric: Record<string, string>; value: number }[]>;
  /** Its stderr so far (scrape errors, config errors). */
  log(): string;
  stop(): Promise<void>;
}

/** `promtool check config` on `config`: undefined when valid, else its output. */
export function checkConfig(config: Record<string, unknown>): string | undefined {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'promtool-'));
  try {
    const file = path.join(dir, 'prometheus.yaml');
    writeFileSync(file, stringify(config));
    const run = spawnSync('promtool', ['check', 'config', file], { encoding: 'utf8' });
    return run.status === 0 ? undefined : `${run.stdout}${run.stderr}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Starts `prometheus` with `config` and `flags` (beside its config, storage and listen address); resolves once ready. */
export async function startPrometheus(config: Record<string, unknown>, flags: readonly string[]): Promise<PrometheusProcess> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'prometheus-'));
  writeFileSync(path.join(dir, 'prometheus.yaml'), stringify(config));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child: ChildProcess = spawn(
    'prometheus',
    [`--config.file=${path.join(dir, 'prometheus.yaml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, ...flags],
    { cwd: dir, env: { PATH: process.env.PATH ?? '' }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      child.kill('SIGTERM');
      await exited;
      clearTimeout(killer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`prometheus exited with ${child.exitCode}:\n${stderr}`);
    }
    const ready = await fetch(`${url}/-/ready`).then((r) => r.ok, () => false);
    if (ready) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`prometheus not ready within 20 s:\n${stderr}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  async function api<T>(apiPath: string, params: Record<string, string | string[]>): Promise<T> {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) for (const each of [value].flat()) query.append(key, each);
    const response = await fetch(`${url}${apiPath}?${query}`);
    const body = (await response.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`${apiPath} ${JSON.stringify(params)}: ${body.error ?? response.status}`);
    return body.data;
  }
  return {
    url,
    api,
    async vector(query, time) {
      const data = await api<{ resultType: string; result: { metric: Record<string, string>; value: [number, string] }[] }>('/api/v1/query', { query, time: String(time) });
      if (data.resultType !== 'vector') throw new Error(`${query}: a ${data.resultType}, not a vector`);
      return data.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
    },
    log: () => stderr,
    stop,
  };
}
