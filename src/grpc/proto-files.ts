import { existsSync } from 'node:fs';
import path from 'node:path';
import * as protobuf from 'protobufjs';
import { APP_ROOT, resolveProtoPath } from './proto-sources';

/**
 * Loading .proto files with protobufjs (not @grpc/proto-loader: it drops the `google.api.http` options the
 * gateway maps requests by). Used by the gateway and by the example services alike.
 */

/** protobufjs ships google/api/{annotations,http}.proto and google/protobuf/descriptor.proto beside its code. */
const PROTOBUFJS_ROOT = path.dirname(require.resolve('protobufjs/package.json'));

/**
 * Loads a proto file and its imports, resolved (every type reference checked), with field names in
 * lowerCamelCase as the JSON mapping names them. `google/api/*` and `google/protobuf/*` imports come from
 * protobufjs (the common well-known types are built into it); other imports resolve against the importing
 * file, then the app's `proto/` directory. Throws, naming the file, when anything is missing.
 */
export function loadProtoRoot(file: string): protobuf.Root {
  const root = new protobuf.Root();
  const resolveRelative = root.resolvePath.bind(root);
  root.resolvePath = (origin, target) => {
    if (target.startsWith('google/')) {
      const bundled = path.join(PROTOBUFJS_ROOT, target);
      if (existsSync(bundled)) return bundled;
      // timestamp.proto, struct.proto, ...: protobufjs knows them by this name without a file.
      if (target.startsWith('google/protobuf/')) return target;
    }
    const relative = resolveRelative(origin, target);
    if (relative !== null && existsSync(relative)) return relative;
    // The file asked for by its absolute path (resolveProtoPath's answer): it is missing, and said so as named.
    if (path.isAbsolute(target)) return target;
    return path.join(APP_ROOT, 'proto', target);
  };
  const resolved = resolveProtoPath(file);
  try {
    root.loadSync(resolved, { keepCase: false });
    root.resolveAll();
  } catch (error) {
    throw new Error(`proto ${file}: ${(error as Error).message}`, { cause: error });
  }
  return root;
}
