import { readFileSync } from 'node:fs';
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
 * With `sources` (readProtoSources, the config version's), the files they name are read from them, and imports
 * resolved among them, whatever the disk holds now: one they hold as missing is missing. A file they do not name
 * (an import the version's scan did not see) is looked for on the disk, as without them.
 */
export function loadProtoRoot(file: string, sources?: ProtoSources): protobuf.Root {
  const root = new protobuf.Root();
  const resolveRelative = root.resolvePath.bind(root);
  // Resolved on the disk, an import whose file had moved since the version was read named a path the sources lack,
  // and one created beside its importer since then took the place of the file the version had read.
  const exists = sources && ((name: string) => typeof sources[name] === 'string' && Object.hasOwn(sources, name));
  root.resolvePath = (origin, target) => resolveProtoImport(target, resolveRelative(origin, target), exists).file;
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

function readFromSources(sources: ProtoSources, name: string): Buffer {
  if (!Object.hasOwn(sources, name)) return readFileSync(name);
  const text = sources[name];
  if (typeof text === 'string') return Buffer.from(text, 'utf8');
  throw Object.assign(new Error(`ENOENT: no such file or directory, open '${name}'`), { code: 'ENOENT' });
}
