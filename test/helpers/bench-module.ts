import { spawnSync } from 'node:child_process';
import path from 'node:path';

// bench/*.mjs modules are ESM and this Jest loads CommonJS only (no --experimental-vm-modules): each check runs
// the module in a node child process, `expression` seeing its exports as `m` and the JSON `input` as `input`,
// its value (awaited, when a promise) back as JSON with Maps as objects.
const RUNNER = `
import fs from 'node:fs';
const m = await import(process.argv[1]);
const input = JSON.parse(fs.readFileSync(0, 'utf8'));
const value = await new Function('m', 'input', 'return (' + process.argv[2] + ');')(m, input);
process.stdout.write(JSON.stringify(value, (key, v) => (v instanceof Map ? Object.fromEntries(v) : v)));
`;

/** An evaluator of expressions over bench/<file>'s exports. */
export function benchModule(file: string): <T>(expression: string, input?: unknown) => T {
  const module = path.join(__dirname, '../../bench', file);
  return <T>(expression: string, input: unknown = null): T => {
    const run = spawnSync(process.execPath, ['--input-type=module', '-e', RUNNER, module, expression], { input: JSON.stringify(input), encoding: 'utf8' });
    if (run.status !== 0) throw new Error(`${expression} failed: ${run.stderr}`);
    return JSON.parse(run.stdout) as T;
  };
}
