import fs from 'node:fs';
import path from 'node:path';
import { benchModule } from '../helpers/bench-module';

// bench/callgrind-functions.mjs: the accounting behind `node bench/instructions.mjs --functions`, checked on a
// hand-written dump (test/fixtures/callgrind/): a JS function at 0x1010 that calls the runtime through CEntry
// (inclusive 1000) and a megamorphic IC (inclusive 300), the IC calling itself once ('2), a function at 0x2050
// recursing into itself ('2), one more JS address, one address no perf map entry covers, and libc.
const FIXTURES = path.join(__dirname, '../fixtures/callgrind');
const callgrind = fs.readFileSync(path.join(FIXTURES, 'gateway.callgrind.out.4242.1'), 'utf8');
const perfMap = fs.readFileSync(path.join(FIXTURES, 'perf-4242.map'), 'utf8');

const CENTRY = 'Builtins_CEntry_Return1_ArgvOnStack_NoBuiltinExit';
const RUNTIME = 'v8::internal::Runtime_DefineKeyedOwnPropertyInLiteral(int, unsigned long*, v8::internal::Isolate*)';
const MEGAMORPHIC = 'Builtins_KeyedLoadIC_Megamorphic';
const HANDLE = '*handle /repo/dist/src/gateway.js:10:3';
const GET_HOST = "+'get host /repo/node_modules/koa/lib/request.js:253:12";

const evaluate = benchModule('callgrind-functions.mjs');

interface Profile {
  total: number;
  summary: number;
  self: Record<string, number>;
  calls: Record<string, Record<string, number>>;
}

const NAMED = 'm.nameFunctions(m.parseCallgrind(input.callgrind), m.parsePerfMap(input.perfMap))';

describe('parseCallgrind', () => {
  let raw: Profile;
  beforeAll(() => {
    raw = evaluate<Profile>('m.parseCallgrind(input)', callgrind);
  });

  it("counts a call's cost line as the callee's inclusive cost, not as the caller's self cost", () => {
    expect(raw.self['0x0000000000001010']).toBe(40 + 20 + 5 + 10);
    expect(raw.calls['0x0000000000001010']).toEqual({ [CENTRY]: 1000, [MEGAMORPHIC]: 300 });
  });

  it('sums self costs to the totals line callgrind wrote, and keeps its summary line apart', () => {
    expect(raw.total).toBe(1434);
    expect(Object.values(raw.self).reduce((sum, ir) => sum + ir, 0)).toBe(1434);
    expect(raw.summary).toBe(1430);
  });

  it('resolves compressed names first defined by cfn= when fn= later uses them by id alone', () => {
    expect(raw.self[CENTRY]).toBe(100);
    expect(raw.self[RUNTIME]).toBe(700 + 150 + 50);
    expect(raw.calls[CENTRY]).toEqual({ [RUNTIME]: 900 });
  });

  it('keeps recursion suffixes on the names as written (nameFunctions merges them)', () => {
    expect(raw.self[`${MEGAMORPHIC}'2`]).toBe(40);
    expect(raw.self["0x0000000000002050'2"]).toBe(12);
  });

  it('reads the cost after as many position columns as the positions: line declares', () => {
    const twoPositions = ['positions: instr line', 'events: Ir', 'fn=(1) f', '0x40 3 7', '+4 * 5', 'cfn=(2) g', 'calls=1 0x80 9', '+2 * 11', ''].join('\n');
    expect(evaluate<Profile>('m.parseCallgrind(input)', twoPositions)).toEqual({ total: 12, summary: 0, self: { f: 12 }, calls: { f: { g: 11 } } });
  });

  it('refuses a compressed id used before any line defined it', () => {
    expect(() => evaluate('m.parseCallgrind(input)', 'events: Ir\nfn=(7)\n0 1\n')).toThrow(/compressed name \(7\) used before it was defined/);
  });
});

describe('nameAddresses', () => {
  let named: Record<string, string>;
  beforeAll(() => {
    named = evaluate<Record<string, string>>('m.nameAddresses(m.parsePerfMap(input), [0x1010, 0x1080, 0x2050, 0x9000, 0x10ff, 0x1100])', perfMap);
  });

  it('takes the entry written last among those covering an address, not the one starting nearest', () => {
    expect(named[0x2050]).toBe("JS:+'get host /repo/node_modules/koa/lib/request.js:253:12");
    expect(named[0x1010]).toBe('JS:*handle /repo/dist/src/gateway.js:10:3');
  });

  it('covers [start, start + size): the end is outside', () => {
    expect(named[0x1080]).toBe('JS:~handle /repo/dist/src/gateway.js:10:3');
    expect(named[0x10ff]).toBe('JS:~handle /repo/dist/src/gateway.js:10:3');
    expect(named[0x1100]).toBeUndefined();
    expect(named[0x9000]).toBeUndefined();
  });
});

describe('nameFunctions', () => {
  let profile: Profile;
  beforeAll(() => {
    profile = evaluate<Profile>(NAMED, { callgrind, perfMap });
  });

  it("names addresses from the perf map without V8's JS: prefix, recursion suffixes merged into one function", () => {
    expect(profile.self).toEqual({
      [HANDLE]: 75,
      '~handle /repo/dist/src/gateway.js:10:3': 8,
      [GET_HOST]: 30 + 12,
      [CENTRY]: 100,
      [RUNTIME]: 900,
      [MEGAMORPHIC]: 260 + 40,
      '(unnamed code: address not in the perf map)': 3,
      _int_malloc: 6,
    });
    expect(profile.total).toBe(1434);
  });

  it('names callers and callees of calls the same way', () => {
    expect(profile.calls[HANDLE]).toEqual({ [CENTRY]: 1000, [MEGAMORPHIC]: 300 });
    expect(profile.calls[GET_HOST]).toEqual({ [GET_HOST]: 12 });
    expect(profile.calls[MEGAMORPHIC]).toEqual({ [MEGAMORPHIC]: 40 });
  });
});

describe('mergeProfiles', () => {
  it("adds the processes' totals, self costs and calls", () => {
    const merged = evaluate<Profile>(`m.mergeProfiles([${NAMED}, ${NAMED}])`, { callgrind, perfMap });
    expect(merged.total).toBe(2868);
    expect(merged.summary).toBe(2860);
    expect(merged.self[HANDLE]).toBe(150);
    expect(merged.calls[HANDLE]).toEqual({ [CENTRY]: 2000, [MEGAMORPHIC]: 600 });
  });
});

describe('areaOf', () => {
  const cases: { desc: string; name: string; area: string }[] = [
    { desc: 'TurboFan', name: 'v8::internal::compiler::JSHeapBroker::TryGetOrCreateData(v8::internal::Tagged<v8::internal::Object>)', area: 'V8 optimizing compiler' },
    { desc: 'Maglev, even inside a std:: container', name: 'std::map<v8::internal::maglev::NodeBase const*, int>::operator[](v8::internal::maglev::NodeBase const* const&)', area: 'V8 optimizing compiler' },
    { desc: 'the scavenger', name: 'heap::base::SlotCallbackResult v8::internal::Scavenger::ScavengeObject<v8::internal::FullHeapObjectSlot>(v8::internal::FullHeapObjectSlot)', area: 'garbage collector' },
    { desc: "the write barrier, the collector's cost at every pointer store", name: 'Builtins_RecordWriteSaveFP', area: 'garbage collector' },
    { desc: 'a megamorphic keyed load', name: 'Builtins_KeyedLoadIC_Megamorphic', area: 'inline caches, megamorphic' },
    { desc: 'a monomorphic load', name: 'Builtins_LoadIC', area: 'other V8 builtins' },
    { desc: 'a runtime function', name: 'v8::internal::Runtime_DefineKeyedOwnPropertyInLiteral(int, unsigned long*, v8::internal::Isolate*)', area: 'V8 runtime' },
    { desc: "V8's regexp builtin", name: 'Builtins_RegExpPrototypeTest', area: 'regular expressions' },
    { desc: 'a compiled regular expression', name: "RegExp.> src: '^[\\^_`a-zA-Z\\-0-9!#$%&'*+.|~]+$' flags: ''", area: 'regular expressions' },
    { desc: 'a compiled regular expression whose source reads like a Node file', name: "RegExp.> src: '^    at node:internal/' flags: ''", area: 'regular expressions' },
    { desc: 'malloc', name: '_int_malloc', area: 'C and C++ libraries (libc, libstdc++, abseil, ICU)' },
    { desc: 'memcpy', name: '__memcpy_avx_unaligned_erms', area: 'C and C++ libraries (libc, libstdc++, abseil, ICU)' },
    { desc: "Node's C++ (node:: is not node:)", name: 'node::AsyncHooks::pop_async_context(double)', area: "Node's C++ (libuv, llhttp)" },
    { desc: "Node's JavaScript", name: "+'nextTick node:internal/process/task_queues:113:18", area: "Node's JS" },
    { desc: 'undici', name: "*'search /work/main/node_modules/undici/lib/core/tree.js:91:10", area: 'undici' },
    { desc: "undici's wasm parser", name: 'wasm-function[20]-20-turbofan', area: 'undici' },
    { desc: 'the OpenTelemetry API', name: '+BaseContext.self.setValue /work/main/node_modules/@opentelemetry/api/dist/context/context.cjs:25:19', area: 'OpenTelemetry' },
    { desc: "the gateway's telemetry bootstrap", name: "+'logLine /work/main/dist/otel/logger.js:54:17", area: 'OpenTelemetry' },
    { desc: 'Koa', name: "+'get host /work/main/node_modules/koa/lib/request.js:253:12", area: 'Koa' },
    { desc: 'koa-compose', name: '*dispatch /work/main/node_modules/koa-compose/index.js:37:21', area: 'Koa' },
    { desc: '@koa/router', name: '^dispatch /work/main/node_modules/@koa/router/dist/index.js:99:1', area: 'Koa' },
    { desc: "koa's delegates", name: '*get /work/main/node_modules/delegates/index.js:71:30', area: 'Koa' },
    { desc: "the gateway's own Koa accessors", name: '*get method /work/main/dist/src/koa-context-accessors.js:12:5', area: "the gateway's own code" },
    { desc: "the gateway's own code", name: "+'trustForwardedHeaders /work/main/dist/src/middleware/trusted-proxies.js:21:48", area: "the gateway's own code" },
    { desc: 'a JS function named like a regexp, in another package', name: '*parseRegExp /work/main/node_modules/path-to-regexp/dist/index.js:5:1', area: 'other packages' },
    { desc: 'a package whose name starts like koa', name: '^ratelimit /work/main/node_modules/koa-ratelimit/index.js:60:34', area: 'Koa' },
    { desc: 'unnamed code', name: '(unnamed code: address not in the perf map)', area: 'unknown' },
  ];
  let areas: string[];
  beforeAll(() => {
    areas = evaluate<string[]>('input.map((name) => m.areaOf(name))', cases.map((row) => row.name));
  });
  it.each(cases.map((row, i) => ({ ...row, i })))('$desc', ({ area, i }) => {
    expect(areas[i]).toBe(area);
  });
});

describe('entryPoints', () => {
  interface EntryPoint {
    name: string;
    inclusive: number;
    callers: [string, number][];
    callees: [string, number][];
  }
  let entryPoints: EntryPoint[];
  beforeAll(() => {
    entryPoints = evaluate<EntryPoint[]>(`m.entryPoints(${NAMED}, 15)`, { callgrind, perfMap });
  });

  it('lists the entry points by the inclusive cost of the calls to them, with their callers and callees', () => {
    expect(entryPoints).toEqual([
      { name: CENTRY, inclusive: 1000, callers: [[HANDLE, 1000]], callees: [[RUNTIME, 900]] },
      { name: MEGAMORPHIC, inclusive: 300, callers: [[HANDLE, 300]], callees: [] },
    ]);
  });

  it('leaves out a runtime function reached only through CEntry (it is among the callees of CEntry)', () => {
    expect(entryPoints.map((entryPoint) => entryPoint.name)).not.toContain(RUNTIME);
  });

  it('keeps the count it is given', () => {
    expect(evaluate<EntryPoint[]>(`m.entryPoints(${NAMED}, 1)`, { callgrind, perfMap }).map((entryPoint) => entryPoint.name)).toEqual([CENTRY]);
  });
});

describe('formatFunctionsReport', () => {
  let report: string[];
  beforeAll(() => {
    report = evaluate<string>(`m.formatFunctionsReport({ name: 'off', profile: ${NAMED}, requests: 2, root: '/repo' })`, { callgrind, perfMap }).split('\n');
  });

  it("gives the total per request, and callgrind's summary where it differs", () => {
    expect(report).toContainEqual(
      "717 instructions per request (1,434 over 2 requests), every thread of every process counted: the sum over functions, callgrind's `totals:` (its `summary:`, which the instructions table divides, says 715).",
    );
  });

  it('gives each area per request and as a share, largest first', () => {
    const areas = report.slice(report.indexOf('| area | per request | share |') + 2, report.indexOf('## Top 60 functions (self instructions)') - 1);
    expect(areas).toEqual([
      '| V8 runtime | 450 | 62.8% |',
      '| inline caches, megamorphic | 150 | 20.9% |',
      '| other V8 builtins | 50 | 7.0% |',
      "| the gateway's own code | 42 | 5.8% |",
      '| Koa | 21 | 2.9% |',
      '| C and C++ libraries (libc, libstdc++, abseil, ICU) | 3 | 0.4% |',
      '| unknown | 2 | 0.2% |',
    ]);
  });

  it('ranks functions by self instructions, paths under the root shortened', () => {
    expect(report).toContainEqual('| 1 | 450 | 62.8% | V8 runtime | `v8::internal::Runtime_DefineKeyedOwnPropertyInLiteral(int, unsigned long*, v8::internal::Isolate*)` |');
    expect(report).toContainEqual("| 4 | 38 | 5.2% | the gateway's own code | `*handle dist/src/gateway.js:10:3` |");
  });

  it("lists an entry point's callers and callees per request", () => {
    const at = report.indexOf(`| **\`${CENTRY}\`** | (all calls to it) | **500** |`);
    expect(at).toBeGreaterThan(0);
    expect(report.slice(at + 1, at + 3)).toEqual(['| | ← `*handle dist/src/gateway.js:10:3` | 500 |', `| | → \`${RUNTIME}\` | 450 |`]);
  });

  it('counts the major and minor collections in --trace-gc output mixed with what else the process writes to stdout', () => {
    const output = [
      '[9251:0x43ce4000]       91 ms: Scavenge 5.5 (6.5) -> 4.9 (7.5) MB, pooled: 0 MB, 2.13 / 0.00 ms  (average mu = 1.000, current mu = 1.000) allocation failure;',
      '{"level":"info","message":"request completed","url":"/api/users/42?note=Mark-Compact"}',
      '[9612:0xf689000:0]      435 ms: [IncrementalMarking] Start (allocation limit): (size/waste/limit/slack) v8: 15MB / 0MB / 15MB / 0MB',
      '[9612:0xf689000]      483 ms: Mark-Compact 21.9 (32.3) -> 18.4 (36.8) MB, pooled: 0 MB, 10.20 / 0.00 ms  (+ 0.6 ms in 25 steps since start of marking)',
      '[9251:0x43ce4000]    15840 ms: Scavenge 63.4 (73.0) -> 56.8 (73.0) MB, pooled: 0 MB, 1.08 / 0.00 ms  (average mu = 0.990, current mu = 0.990) task;',
      '[9251:0x43ce4000]    15900 ms: Minor Mark-Sweep 63.4 (73.0) -> 56.8 (73.0) MB, 1.08 / 0.00 ms  (average mu = 0.990) task;',
      'a line that ends ms: Mark-Compact',
    ].join('\n');
    const counted = evaluate<{ major: number; minor: number; majorPauseMs: number; minorPauseMs: number }>('m.collectionsIn(input)', output);
    expect({ major: counted.major, minor: counted.minor }).toEqual({ major: 1, minor: 3 });
    // The first figure of `<pause> / <elsewhere> ms`: 10.20 for the Mark-Compact, 2.13 + 1.08 + 1.08 for the minor ones.
    expect(counted.majorPauseMs).toBeCloseTo(10.2, 9);
    expect(counted.minorPauseMs).toBeCloseTo(4.29, 9);
    expect(evaluate('m.collectionsIn(input)', '')).toEqual({ major: 0, minor: 0, majorPauseMs: 0, minorPauseMs: 0 });
  });
});
