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
export function resolveProtoImport(target: string, relative: string | null, exists: (file: string) => boolean = existsSync): { file: string; bundled: boolean } {
  if (target.startsWith('google/')) {
    const bundled = path.join(PROTOBUFJS_ROOT, target);
    if (existsSync(bundled)) return { file: bundled, bundled: true };
    // timestamp.proto, struct.proto, ...: protobufjs knows them by this name without a file.
    if (target.startsWith('google/protobuf/')) return { file: target, bundled: true };
  }
  if (relative !== null && exists(relative)) return { file: relative, bundled: false };
  if (path.isAbsolute(target)) return { file: target, bundled: false };
  return { file: path.join(APP_ROOT, 'proto', target), bundled: false };
}

/**
 * `import "x.proto";` or `import 'x.proto';` (and `import public` / `import weak`), anywhere outside comments, with
 * or without a blank before the quote (`import"x.proto";`, `import public"x.proto";` are protobuf too, and were missed).
 */
const IMPORT = /\bimport\s*(?:(?:public|weak)\s*)?(["'])([^"'\n]+)\1\s*;/g;

/**
 * The proto sources a config's gRPC routes load, read once: each file and every file it imports (protobufjs' own
 * `google/*` ones aside), in the order met, by absolute path; null for a file that could not be read. The config
 * version is their digest, and the gateway is built from them (imports resolved among them too), not from the disk
 * again (loadProtoRoot; only a file they do not name at all is read from the disk): a cluster's workers
 * (src/workers.ts) read the files themselves, so one started later (a crash, the watchdog) ran an edit nobody had
 * reloaded, or one a reload refused, under the running version, or failed to start on a broken file the running
 * version never had; and a rollback "restored" what the disk held by then.
 */
export type ProtoSources = Record<string, string | null>;

export function readProtoSources(files: readonly string[]): ProtoSources {
  const sources: ProtoSources = {};
  const visit = (file: string) => {
    if (Object.hasOwn(sources, file)) return;
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      sources[file] = null;
      return;
    }
    sources[file] = text;
    for (const [, , target] of text.replace(/\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, '').matchAll(IMPORT)) {
      const imported = resolveProtoImport(target!, path.resolve(path.dirname(file), target!));
      if (!imported.bundled) visit(imported.file);
    }
  };
  for (const file of files) visit(resolveProtoPath(file));
  return sources;
}

/**
 * SHA-256 (hex) of proto sources (readProtoSources), path and content. A reload after an edit of a .proto alone (a
 * new HTTP rule) was `unchanged`, the version over the config's JSON only, and the edit never served until a restart.
 */
export function protoSourcesDigest(sources: ProtoSources): string {
  const digest = createHash('sha256');
  for (const [file, text] of Object.entries(sources)) digest.update(text === null ? `${file}\0missing\0` : `${file}\0${text.length}\0${text}\0`);
  return digest.digest('hex');
}
