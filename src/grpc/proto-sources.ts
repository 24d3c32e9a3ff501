import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

/**
 * Where proto files are found, and what they hold, without protobufjs: the config version covers the proto sources of
 * its gRPC routes, and every process computes it (the cluster primary too, which never loads protobufjs).
 */

/** The repository (or image) root: the nearest directory above this file with a package.json. */
function findAppRoot(start: string): string {
  let directory = start;
  while (!existsSync(path.join(directory, 'package.json'))) {
    const parent = path.dirname(directory);
    if (parent === directory) return process.cwd();
    directory = parent;
  }
  return directory;
}

/**
 * Relative proto paths (config `routes[].grpc.proto`) resolve against the app root, not the working
 * directory, so `proto/notifications.proto` is the same file from `npm start`, the image and the tests.
 */
export const APP_ROOT = findAppRoot(__dirname);

export function resolveProtoPath(file: string): string {
  return path.resolve(APP_ROOT, file);
}

/**
 * An import a proto file names, as loadProtoRoot resolves it: against the importing file, then the app's `proto/`
 * directory. A `google/*` import found in neither is protobufjs' own (bundled with the installed package), not the
 * app's sources.
 */
function resolveImport(importing: string, target: string): string | undefined {
  const relative = path.resolve(path.dirname(importing), target);
  if (existsSync(relative)) return relative;
  const shared = path.join(APP_ROOT, 'proto', target);
  return target.startsWith('google/') && !existsSync(shared) ? undefined : shared;
}

/** `import "x.proto";` or `import 'x.proto';` (and `import public` / `import weak`), anywhere outside comments. */
const IMPORT = /\bimport\s+(?:public\s+|weak\s+)?(["'])([^"'\n]+)\1\s*;/g;

/**
 * SHA-256 (hex) of the proto sources the given files load: each file and every file it imports, in the order met,
 * path and content (a missing file counts as missing). A reload after an edit of a .proto alone (a new HTTP rule)
 * was `unchanged`, the version over the config's JSON only, and the edit never served until a restart.
 */
export function protoSourcesDigest(files: readonly string[]): string {
  const digest = createHash('sha256');
  const seen = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (error) {
      digest.update(`${file}\0missing ${(error as NodeJS.ErrnoException).code ?? 'error'}\0`);
      return;
    }
    digest.update(`${file}\0${text.length}\0${text}\0`);
    for (const [, , target] of text.replace(/\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, '').matchAll(IMPORT)) {
      const imported = resolveImport(file, target!);
      if (imported !== undefined) visit(imported);
    }
  };
  for (const file of files) visit(resolveProtoPath(file));
  return digest.digest('hex');
}
