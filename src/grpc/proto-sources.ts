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

/** protobufjs ships google/api/{annotations,http}.proto and google/protobuf/descriptor.proto beside its code (found, not loaded). */
const PROTOBUFJS_ROOT = path.dirname(require.resolve('protobufjs/package.json'));

/**
 * The file an import of a proto file names, for loadProtoRoot and the version alike: `google/api/*` and
 * `google/protobuf/*` are protobufjs' own (`bundled`: a file beside its code, or a well-known type it knows by name
 * without one); any other is `relative` (the target against the importing file, as the caller resolves it) when that
 * exists, the target itself when absolute (missing: said so as named), else the app's `proto/` directory's.
 */
export function resolveProtoImport(target: string, relative: string | null): { file: string; bundled: boolean } {
  if (target.startsWith('google/')) {
    const bundled = path.join(PROTOBUFJS_ROOT, target);
    if (existsSync(bundled)) return { file: bundled, bundled: true };
    // timestamp.proto, struct.proto, ...: protobufjs knows them by this name without a file.
    if (target.startsWith('google/protobuf/')) return { file: target, bundled: true };
  }
  if (relative !== null && existsSync(relative)) return { file: relative, bundled: false };
  if (path.isAbsolute(target)) return { file: target, bundled: false };
  return { file: path.join(APP_ROOT, 'proto', target), bundled: false };
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
      const imported = resolveProtoImport(target!, path.resolve(path.dirname(file), target!));
      if (!imported.bundled) visit(imported.file);
    }
  };
  for (const file of files) visit(resolveProtoPath(file));
  return digest.digest('hex');
}
