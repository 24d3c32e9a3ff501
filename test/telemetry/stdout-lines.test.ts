import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { childEnvironment } from '../helpers/process-stack';

const root = path.join(__dirname, '../..');

/** Runs a script against the built logger (dist/) in a fresh process: its exit status and stdout lines. */
function runLogger(script: string): { status: number | null; stdout: string; lines: () => Record<string, unknown>[] } {
  const prelude = `const { createLogger } = require(${JSON.stringify(path.join(root, 'dist/otel/logger.js'))}); const logger = createLogger({ serviceName: 'probe', exportToOtel: false });`;
  const { status, stdout } = spawnSync(process.execPath, ['-e', prelude + script], { cwd: root, env: childEnvironment({ OTEL_SDK_DISABLED: 'true' }), encoding: 'utf8', timeout: 15_000, maxBuffer: 64 * 1024 * 1024 });
  const lines = () =>
    stdout
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  return { status, stdout, lines };
}

describe('log lines on stdout (gathered per event-loop turn)', () => {
  it('writes every line, whole and in order, when many are logged in one turn', () => {
    const lines = runLogger(`for (let i = 0; i < 3000; i++) logger.info('line', { i, padding: 'x'.repeat(100) });`).lines();
    expect(lines).toHaveLength(3000);
    expect(lines.map((line) => line.i)).toEqual(Array.from({ length: 3000 }, (_, i) => i));
    expect(lines[0]).toMatchObject({ level: 'info', message: 'line', 'service.name': 'probe', timestamp: expect.any(String) });
  });

  it('still writes the pending lines when the process exits at once after logging', () => {
    const run = runLogger(`logger.error('fatal: cannot start', { reason: 'test' }); process.exit(3);`);
    expect(run.status).toBe(3);
    expect(run.lines()).toEqual([expect.objectContaining({ level: 'error', message: 'fatal: cannot start', reason: 'test' })]);
  });

  it('still writes the pending lines when the process dies of an uncaught exception', () => {
    const result = runLogger(`logger.warn('about to fail'); setTimeout(() => {}, 1000); throw new Error('boom');`);
    expect(result.status).not.toBe(0);
    expect(result.stdout).toContain('"message":"about to fail"');
  });
});
