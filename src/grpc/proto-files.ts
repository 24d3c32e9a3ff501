import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as protobuf from 'protobufjs';
import { resolveProtoImport, resolveProtoPath, type ProtoSources } from './proto-sources';

/**
 * Loading .proto files with protobufjs (not @grpc/proto-loader: it drops the `google.api.http` options the
 * gateway maps requests by). Used by the gateway and by the example services alike.
 */

/**
 * Loads a proto file and its imports, resolved (every type reference checked), with field names in
 * lowerCamelCase as the JSON mapping names them. `google/api/*` and `google/protobuf/*` imports come from
 * protobufjs (the common well-known types are built into it); other imports resolve against the importing
 * file, then the app's `proto/` directory. Throws, naming the file, when anything is missing.
 * With `sources` (readProtoSources, the config version's), the files are read from them, never from the disk: a
 * file they lack is missing, whatever the disk holds now (protobufjs' own `google/*` files aside).
 */
export function loadProtoRoot(file: string, sources?: ProtoSources): protobuf.Root {
  const root = new protobuf.Root();
  const resolveRelative = root.resolvePath.bind(root);
  root.resolvePath = (origin, target) => resolveProtoImport(target, resolveRelative(origin, target)).file;
  const resolved = resolveProtoPath(file);
  // loadSync reads each file through protobufjs' util.fs (its own `fetch` hook serves the asynchronous load only):
  // swapped for the call, which runs to its end synchronously, so nothing else ever reads through it.
  const disk = protobuf.util.fs;
  if (sources) protobuf.util.fs = { readFileSync: (name: string) => readFromSources(sources, name) };
  try {
    root.loadSync(resolved, { keepCase: false });
    root.resolveAll();
  } catch (error) {
    throw new Error(`proto ${file}: ${(error as Error).message}`, { cause: error });
  } finally {
    protobuf.util.fs = disk;
  }
  return root;
}

/** protobufjs' own files beside its code (google/api/*.proto, descriptor.proto): part of the install, read as they are. */
const PROTOBUFJS_FILES = path.dirname(require.resolve('protobufjs/package.json')) + path.sep;

function readFromSources(sources: ProtoSources, name: string): Buffer {
  const text = Object.hasOwn(sources, name) ? sources[name] : undefined;
  if (typeof text === 'string') return Buffer.from(text, 'utf8');
  if (text === undefined && name.startsWith(PROTOBUFJS_FILES)) return readFileSync(name);
  throw Object.assign(new Error(`ENOENT: no such file or directory, open '${name}'`), { code: 'ENOENT' });
}
