/**
 * Runs test/fixtures/telemetry-app.js as a child process with the telemetry bootstrap preloaded, the way every
 * service runs: `node --require <compiled otel>/register.js <entry>`.
 *
 * The bootstrap is compiled from otel/*.ts into node_modules/.cache (inside the repo, so the compiled files
 * resolve the project's node_modules), once per source content: the tests exercise the sources as they are,
 * without depending on, or racing with, a build into dist/.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { childEnvironment } from '../helpers/process-stack';

const ROOT = path.resolve(__dirname, '../..');
const FIXTURE = path.join(ROOT, 'test/fixtures/telemetry-app.js');
const CACHE = path.join(ROOT, 'node_modules/.cache/koa-gateway-telemetry-tests');

/** Compiles otel/ (once per content) and returns the folder holding register.js, logger.js, telemetry.js. */
export async function compileTelemetryBootstrap(): Promise<string> {
  const sources = fs
    .readdirSync(path.join(ROOT, 'otel'))
    .filter((name) => name.endsWith('.ts'))
    .sort();
  const hash = createHash('sha256');
  for (const name of [...sources.map((s) => path.join('otel', s)), 'tsconfig.build.json']) {
    hash.update(name).update(fs.readFileSync(path.join(ROOT, name)));
  }
  const target = path.join(CACHE, hash.digest('hex').slice(0, 16));
  const otelDir = path.join(target, 'otel');
  if (fs.existsSync(path.join(otelDir, 'register.js'))) return otelDir;
  pruneOldBuilds();

  // Build beside the target and rename, so concurrent test files never see a half-written folder.
  fs.mkdirSync(CACHE, { recursive: true });
  const work = fs.mkdtempSync(path.join(CACHE, 'build-'));
  const tsconfig = path.join(work, 'tsconfig.json');
  fs.writeFileSync(
    tsconfig,
    JSON.stringify({
      extends: path.join(ROOT, 'tsconfig.build.json'),
      compilerOptions: { rootDir: ROOT, outDir: path.join(work, 'out'), sourceMap: false, incremental: false },
      include: [path.join(ROOT, 'otel')],
    }),
  );
  const tsc = path.join(ROOT, 'node_modules/typescript/bin/tsc');
  try {
    await promisify(execFile)(process.execPath, [tsc, '-p', tsconfig], { cwd: ROOT });
  } catch (error) {
    const { stdout = '' } = error as { stdout?: string };
    throw new Error(`compiling otel/ failed:\n${stdout}`);
  }
  try {
    fs.renameSync(path.join(work, 'out'), target);
  } catch {
    // Another test file finished the same build first; theirs is identical.
  }
  fs.rmSync(work, { recursive: true, force: true });
  return otelDir;
}

/** Builds of earlier sources, left by earlier runs; an hour is far longer than any run that could use them. */
function pruneOldBuilds(): void {
  const hourAgo = Date.now() - 3_600_000;
  for (const entry of fs.existsSync(CACHE) ? fs.readdirSync(CACHE) : []) {
    const dir = path.join(CACHE, entry);
    if (fs.statSync(dir).mtimeMs < hourAgo) fs.rmSync(dir, { recursive: true, force: true });
  }
}

export interface InstrumentedApp {
  /** e.g. http://127.0.0.1:40123 */
  readonly url: string;
  readonly process: ChildProcess;
  /** Parsed JSON lines of stdout so far (non-JSON lines skipped). */
  logLines(): Array<Record<string, unknown>>;
  stdout(): string;
  stderr(): string;
  /** Resolves when the process has ended. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Kills the process (SIGKILL) if it is still running. */
  kill(): void;
}

const running = new Set<ChildProcess>();

/**
 * Starts the fixture with exactly `env` (nothing of the runner's environment but PATH) and waits for
 * its `listening` log line. `fixture`: another script that does the same (reads FIXTURE_OTEL_DIR, logs
 * `listening` with its port); default test/fixtures/telemetry-app.js.
 */
export async function startInstrumentedApp(
  env: Readonly<Record<string, string | undefined>>,
  { fixture = FIXTURE }: { fixture?: string } = {},
): Promise<InstrumentedApp> {
  const otelDir = await compileTelemetryBootstrap();
  const child = spawn(process.execPath, ['--require', path.join(otelDir, 'register.js'), fixture], {
    cwd: ROOT,
    env: childEnvironment({ NODE_ENV: 'test', FIXTURE_OTEL_DIR: otelDir, ...env }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    });
  });

  const logLines = () =>
    stdout
      .split('\n')
      .filter((line) => line.startsWith('{"'))
      .flatMap((line) => {
        try {
          return [JSON.parse(line) as Record<string, unknown>];
        } catch {
          return [];
        }
      });

  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`fixture did not start within 15 s\nstdout:\n${stdout}\nstderr:\n${stderr}`));
    }, 15_000);
    const check = () => {
      const listening = logLines().find((line) => line.message === 'listening');
      if (listening !== undefined) {
        clearTimeout(timer);
        child.stdout!.off('data', check);
        resolve(Number(listening.port));
      }
    };
    child.stdout!.on('data', check);
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`fixture exited (code ${code}, signal ${signal})\nstdout:\n${stdout}\nstderr:\n${stderr}`));
    });
  });

  return {
    url: `http://127.0.0.1:${port}`,
    process: child,
    logLines,
    stdout: () => stdout,
    stderr: () => stderr,
    exited,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/** Kills every fixture still running; for afterAll. */
export async function stopAllInstrumentedApps(): Promise<void> {
  const exits = [...running].map((child) => {
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    return gone;
  });
  await Promise.all(exits);
}

/** A W3C `traceparent` with fresh random ids, and the ids, for a request that continues a known trace. */
export function newTraceparent(): { traceparent: string; traceId: string; parentSpanId: string } {
  const traceId = randomBytes(16).toString('hex');
  const parentSpanId = randomBytes(8).toString('hex');
  return { traceparent: `00-${traceId}-${parentSpanId}-01`, traceId, parentSpanId };
}
