import { existsSync } from 'node:fs';
import path from 'node:path';
import * as protobuf from 'protobufjs';

/**
 * Loading .proto files with protobufjs (not @grpc/proto-loader: it drops the `google.api.http` options the
 * gateway maps requests by). Used by the gateway and by the example services alike.
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

/** protobufjs ships google/api/{annotations,http}.proto and google/protobuf/descriptor.proto beside its code. */
const PROTOBUFJS_ROOT = path.dirname(require.resolve('protobufjs/package.json'));

export function resolveProtoPath(file: string): string {
  return path.resolve(APP_ROOT, file);
}

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
