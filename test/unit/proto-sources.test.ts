import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { configVersion } from '../../src/config-reload';
import { loadProtoRoot } from '../../src/grpc/proto-files';
import { protoSourcesDigest, readProtoSources } from '../../src/grpc/proto-sources';
import { shippedConfigFile, testConfig } from '../helpers/test-config';

const digestOf = (files: string[]) => protoSourcesDigest(readProtoSources(files));

/** A proto that imports another beside it (and Google's, which protobufjs brings), in a directory of its own. */
function protoPair() {
  const dir = mkdtempSync(path.join(tmpdir(), 'proto-sources-'));
  const main = path.join(dir, 'main.proto');
  const imported = path.join(dir, 'types.proto');
  const write = (file: string, text: string) => writeFileSync(file, text);
  write(main, 'syntax = "proto3";\nimport "google/api/annotations.proto";\n// import "commented.proto";\nimport "types.proto";\nservice S { rpc Get (T) returns (T) { option (google.api.http) = { get: "/v1/t" }; } }\n');
  write(imported, 'syntax = "proto3";\nmessage T { string id = 1; }\n');
  return { main, imported, write };
}

describe('protoSourcesDigest', () => {
  it('changes with the file named and with each file it imports, and only then', () => {
    const { main, imported, write } = protoPair();
    const first = digestOf([main]);
    expect(digestOf([main])).toBe(first);
    write(imported, 'syntax = "proto3";\nmessage T { string id = 1; string name = 2; }\n');
    const second = digestOf([main]);
    expect(second).not.toBe(first);
    write(main, 'syntax = "proto3";\nimport "google/api/annotations.proto";\n// import "commented.proto";\nimport "types.proto";\nservice S { rpc Get (T) returns (T) { option (google.api.http) = { get: "/v2/t" }; } }\n');
    expect(digestOf([main])).not.toBe(second);
  });

  // Only `import "x";` at a line's start was read: an edit of a file imported otherwise stayed `unchanged`.
  it('follows imports in single quotes, several on a line, and an app-owned google/ file', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'proto-sources-'));
    const main = path.join(dir, 'main.proto');
    writeFileSync(main, "syntax = \"proto3\"; import 'a.proto'; import public \"b.proto\";\nimport \"google/type/own.proto\";\nimport \"google/api/annotations.proto\";\n");
    for (const name of ['a.proto', 'b.proto']) writeFileSync(path.join(dir, name), 'syntax = "proto3";\n');
    mkdirSync(path.join(dir, 'google/type'), { recursive: true });
    writeFileSync(path.join(dir, 'google/type/own.proto'), 'syntax = "proto3";\n');
    for (const name of ['a.proto', 'b.proto', 'google/type/own.proto']) {
      const before = digestOf([main]);
      writeFileSync(path.join(dir, name), `syntax = "proto3";\n// edited ${name}\n`);
      expect(digestOf([main])).not.toBe(before);
    }
  });

  it('counts a missing file as missing, and one that appears later as a change', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'proto-sources-'));
    const file = path.join(dir, 'later.proto');
    const missing = digestOf([file]);
    writeFileSync(file, 'syntax = "proto3";\n');
    expect(digestOf([file])).not.toBe(missing);
  });
});

describe('configVersion with gRPC routes', () => {
  // An edit of a .proto alone (a new HTTP rule) was reloaded as `unchanged`: the version covered the config's JSON only.
  it('changes when a proto source of a gRPC route changes, the config file unchanged', () => {
    const { main, imported, write } = protoPair();
    const origin = 'http://127.0.0.1:9';
    const config = () =>
      testConfig({ users: origin, orders: origin, notifications: origin }, {
        routes: [...(shippedConfigFile().routes as unknown[]), { name: 'rpc', prefix: '/rpc', service: 'notifications', upstreamPath: '', auth: 'public', grpc: { proto: main, service: 'x.v1.S' } }],
      });
    const before = configVersion(config());
    expect(configVersion(config())).toBe(before);
    write(imported, 'syntax = "proto3";\nmessage T { string id = 1; int32 n = 2; }\n');
    expect(configVersion(config())).not.toBe(before);
  });
});

// A version's build (a cluster's replaced worker, a rollback) must be the build of what the version read, whatever
// the disk holds by then: reads came from the sources, but imports were resolved on the disk.
describe('loadProtoRoot from a version\'s sources', () => {
  const fieldsOfT = (root: ReturnType<typeof loadProtoRoot>) => Object.keys(root.lookupType('T').fields).sort();

  it('builds what the version read after its files were edited, moved or shadowed on the disk', () => {
    const { main, imported, write } = protoPair();
    const sources = readProtoSources([main]);
    expect(fieldsOfT(loadProtoRoot(main, sources))).toEqual(['id']);
    // Edited: the version's text, not the disk's.
    write(imported, 'syntax = "proto3";\nmessage T { string id = 1; string edited = 2; }\n');
    expect(fieldsOfT(loadProtoRoot(main, sources))).toEqual(['id']);
    expect(fieldsOfT(loadProtoRoot(main))).toEqual(['edited', 'id']);
    // Broken: still the version's.
    write(main, 'this is no proto');
    expect(fieldsOfT(loadProtoRoot(main, sources))).toEqual(['id']);
  });

  it('resolves imports among the sources, not on the disk', () => {
    const { main, imported } = protoPair();
    const sources = readProtoSources([main]);
    // The imported file moved away: resolved on the disk, the import named another path, which the sources lack.
    require('node:fs').renameSync(imported, `${imported}.moved`);
    expect(fieldsOfT(loadProtoRoot(main, sources))).toEqual(['id']);
  });

  it('follows an import written without a blank before its quote', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'proto-sources-'));
    const main = path.join(dir, 'main.proto');
    writeFileSync(main, 'syntax = "proto3";\nimport"types.proto";\nmessage M { T t = 1; }\n');
    writeFileSync(path.join(dir, 'types.proto'), 'syntax = "proto3";\nmessage T { string id = 1; }\n');
    const sources = readProtoSources([main]);
    expect(Object.keys(sources)).toEqual([main, path.join(dir, 'types.proto')]);
    expect(fieldsOfT(loadProtoRoot(main, sources))).toEqual(['id']);
    // `import public` and `import weak` without a blank before the quote, as protobufjs reads them.
    writeFileSync(main, 'syntax = "proto3";\nimport public"types.proto";\nimport weak"other.proto";\nmessage M { T t = 1; }\n');
    writeFileSync(path.join(dir, 'other.proto'), 'syntax = "proto3";\nmessage O { string o = 1; }\n');
    expect(Object.keys(readProtoSources([main]))).toEqual([main, path.join(dir, 'types.proto'), path.join(dir, 'other.proto')]);
  });
});
