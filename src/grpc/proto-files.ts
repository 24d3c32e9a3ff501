import * as protobuf from 'protobufjs';
import { resolveProtoImport, resolveProtoPath } from './proto-sources';

/**
 * Loading .proto files with protobufjs (not @grpc/proto-loader: it drops the `google.api.http` options the
 * gateway maps requests by). Used by the gateway and by the example services alike.
 */

/**
 * Loads a proto file and its imports, resolved (every type reference checked), with field names in
 * lowerCamelCase as the JSON mapping names them. `google/api/*` and `google/protobuf/*` imports come from
 * protobufjs (the common well-known types are built into it); other imports resolve against the importing
 * file, then the app's `proto/` directory. Throws, naming the file, when anything is missing.
 */
export function loadProtoRoot(file: string): protobuf.Root {
  const root = new protobuf.Root();
  const resolveRelative = root.resolvePath.bind(root);
  root.resolvePath = (origin, target) => resolveProtoImport(target, resolveRelative(origin, target)).file;
  const resolved = resolveProtoPath(file);
  try {
    root.loadSync(resolved, { keepCase: false });
    root.resolveAll();
  } catch (error) {
    throw new Error(`proto ${file}: ${(error as Error).message}`, { cause: error });
  }
  return root;
}
