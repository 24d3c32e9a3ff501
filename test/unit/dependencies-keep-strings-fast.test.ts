import fs from 'node:fs';
import path from 'node:path';

/**
 * One `class X extends String` anywhere in the process makes V8 give up its fast String.prototype.charCodeAt
 * (and kin) for the whole process, for good: a charCodeAt loop runs about 8x slower. ioredis 6.0.0 has one
 * (resp/verbatim-string.js, loaded with the client): with it the gateway spent 5% more instructions per
 * request untraced and 14% more traced (docs/architecture.md). This keeps every package the gateway and the
 * services run in production free of it, lazily loaded ones included: the check reads their files, it does
 * not depend on what one test happens to load.
 */
const ROOT = path.resolve(__dirname, '../..');
const STRING_SUBCLASS = /\bclass\s+[A-Za-z_$][\w$]*\s+extends\s+String\b/;

/** The folders of the production packages package-lock.json installs (devDependencies left out). */
function productionPackageFolders(): string[] {
  const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
  return Object.entries(lock.packages)
    .filter(([where, entry]) => where.startsWith('node_modules/') && !entry.dev)
    .map(([where]) => path.join(ROOT, where))
    .filter((folder) => fs.existsSync(folder));
}

/** Script files of one package, not descending into packages nested inside it (they have entries of their own). */
function scriptFiles(folder: string): string[] {
  const found: string[] = [];
  for (const entry of fs.readdirSync(folder, { withFileTypes: true })) {
    const full = path.join(folder, entry.name);
    if (entry.isDirectory()) {
      if (entry.name !== 'node_modules') found.push(...scriptFiles(full));
    } else if (/\.(c|m)?js$/.test(entry.name)) {
      found.push(full);
    }
  }
  return found;
}

describe('production dependencies keep V8 string access fast', () => {
  it('finds the pattern where it is (the check itself can fail)', () => {
    expect(STRING_SUBCLASS.test('class VerbatimString extends String {')).toBe(true);
    expect(STRING_SUBCLASS.test('class Stringly extends Stringify {')).toBe(false);
  });

  it('has no class that extends String in any production package', () => {
    const folders = productionPackageFolders();
    // ioredis, koa, undici, winston, jose and the OpenTelemetry packages at least.
    expect(folders.length).toBeGreaterThan(50);
    const offenders = folders.flatMap(scriptFiles).filter((file) => STRING_SUBCLASS.test(fs.readFileSync(file, 'utf8')));
    expect(offenders.map((file) => path.relative(ROOT, file))).toEqual([]);
  });
});
