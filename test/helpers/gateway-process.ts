import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { childEnvironment, onJsonLines } from './process-stack';

/**
 * The built gateway (dist/) as a real process for workers and reload tests: its config in a file of its own
 * the test rewrites, an explicit environment, every JSON log line collected (a cluster's workers write to the
 * primary's stdout).
 */
const ROOT = path.resolve(__dirname, '../..');
const REGISTER = path.join(ROOT, 'dist/otel/register.js');

export interface GatewayProcess {
  child: ChildProcess;
  lines: Record<string, unknown>[];
  /** Public and internal (admin) listener URLs, from the start-up lines. */
  url: string;
  adminUrl: string;
  configFile: string;
  writeConfig(config: unknown): void;
  /** The first line (after `from` lines) for which `match` holds; throws after `timeoutMs` or when the process exited. */
  waitForLine(match: (line: Record<string, unknown>) => boolean, options?: { timeoutMs?: number; from?: number }): Promise<Record<string, unknown>>;
  stderr(): string;
  exited(): Promise<number | null>;
}

export interface StartOptions {
  config: unknown;
  env?: Record<string, string>;
  /** Preload the telemetry bootstrap, as production does (`--require dist/otel/register.js`). */
  telemetry?: boolean;
  /** Acts on the process before it listens (after its first lines, say); it must still come to listen. */
  whileStarting?: (starting: Pick<GatewayProcess, 'child' | 'lines' | 'writeConfig' | 'waitForLine'>) => Promise<void>;
}

export async function startGatewayProcess(options: StartOptions): Promise<GatewayProcess> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gateway-config-'));
  const configFile = path.join(dir, 'gateway.config.json');
  const writeConfig = (config: unknown) => writeFileSync(configFile, typeof config === 'string' ? config : JSON.stringify(config, null, 2));
  writeConfig(options.config);
  const child = spawn(process.execPath, [...(options.telemetry ? ['--require', REGISTER] : []), path.join(ROOT, 'dist/src/main.js')], {
    cwd: ROOT,
    env: childEnvironment({ PORT: '0', ADMIN_PORT: '0', GATEWAY_CONFIG: configFile, NODE_ENV: 'test', ...(options.telemetry ? {} : { OTEL_SDK_DISABLED: 'true' }), ...options.env }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Record<string, unknown>[] = [];
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  onJsonLines(child.stdout!, (line) => lines.push(line));
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));

  async function waitForLine(match: (line: Record<string, unknown>) => boolean, { timeoutMs = 30_000, from = 0 } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = lines.slice(from).find(match);
      if (line) return line;
      if (Date.now() > deadline || child.exitCode !== null || child.signalCode !== null) throw new Error(`no matching log line; stderr:\n${stderr}\nlines:\n${lines.map((l) => JSON.stringify(l)).join('\n')}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
  try {
    await options.whileStarting?.({ child, lines, writeConfig, waitForLine });
    const listening = await waitForLine((line) => line.message === 'gateway listening');
    const admin = await waitForLine((line) => line.message === 'admin listener started');
    return { child, lines, url: String(listening.url), adminUrl: String(admin.url), configFile, writeConfig, waitForLine, stderr: () => stderr, exited: () => exit };
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  }
}

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/**
 * One request on a connection of its own (no keep-alive), so the kernel and the cluster primary may hand
 * each to another worker.
 */
export function requestOnNewConnection(url: string, init: { method?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  return requestThrough(false, url, init);
}

/** One request through `agent` (a kept-alive one keeps a test's requests on one connection, so on one worker), its body read whole. */
export function requestThrough(agent: http.Agent | false, url: string, init: { method?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const request = http.request(url, { method: init.method ?? 'GET', headers: init.headers, agent }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode!, headers: response.headers, body }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end();
  });
}

/**
 * Requests `url` back to back until stopped (one at a time, each on a new connection): the continuous load
 * under which reloads and crashes must not fail a request. Bounded by `maxRequests`.
 */
export function startLoad(url: string, maxRequests = 5_000) {
  const answers: { status: number; error?: string }[] = [];
  let running = true;
  const done = (async () => {
    while (running && answers.length < maxRequests) {
      try {
        const { status } = await requestOnNewConnection(url);
        answers.push({ status });
      } catch (error) {
        answers.push({ status: 0, error: (error as Error).message });
      }
    }
  })();
  return {
    answers,
    async stop() {
      running = false;
      await done;
      return answers;
    },
  };
}

/** An upstream that answers JSON naming itself and counts the connections it accepted. */
export async function namedUpstream(name: string, handler?: (req: http.IncomingMessage, res: http.ServerResponse) => boolean) {
  let connections = 0;
  const server = http.createServer((req, res) => {
    if (handler?.(req, res)) return;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ upstream: name, path: req.url }));
  });
  server.on('connection', () => connections++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    connections: () => connections,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
