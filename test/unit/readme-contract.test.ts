import { readFileSync } from 'node:fs';
import path from 'node:path';
import { RESTART_ONLY_KEYS } from '../../src/config-reload';
import { ERROR_CATALOG } from '../../src/errors';

/**
 * The README's error table is what a client codes against: every code the gateway can answer with is in it, at its
 * status. Seven, and the nine `grpc_*` of a gRPC service's statuses, were not (`header_not_allowed`, `invalid_api_key`,
 * `host_not_allowed`, `config_invalid`, `upstream_busy`, `upstream_unimplemented`, `internal`), though clients meet them.
 */
const readme = readFileSync(path.join(__dirname, '../../README.md'), 'utf8');
const table = readme.slice(readme.indexOf('| status | code | when |'));
const rows = table
  .slice(0, table.indexOf('\n\n'))
  .split('\n')
  .slice(2)
  .map((line) => {
    const [, status = '', codes = ''] = line.split('|').map((cell) => cell.trim());
    const [low, high = low] = status.split('-').map(Number);
    return { low: low!, high: high!, codes: [...codes.matchAll(/`([a-z_]+)`/g)].map((match) => match[1]!) };
  });

describe("the README's error table", () => {
  it.each(Object.entries(ERROR_CATALOG).map(([code, { status }]) => ({ code, status })))('names $code at $status', ({ code, status }) => {
    expect(rows.filter((row) => row.codes.includes(code)).map((row) => status >= row.low && status <= row.high)).toEqual([true]);
  });
});

describe("the README's reload paragraph", () => {
  // `tls` was left out: an operator who changed `minVersion` or `hsts` and reloaded was told nothing by the docs of
  // what `pendingRestart` then said.
  const paragraph = readme.slice(readme.indexOf('An invalid file changes nothing'), readme.indexOf('until a restart.'));
  it.each(RESTART_ONLY_KEYS)('names %s among the keys that apply only after a restart', (key) => {
    expect(paragraph).toContain(`\`${key}\``);
  });
});
