import { benchModule } from '../helpers/bench-module';

// bench/allocations.mjs: bytes per request from a sampling heap profile, checked on a hand-made one. The root calls
// `handle` (gateway code, 1,000 bytes self), which calls `parse` (undici, 3,000) and `handle` again (recursion,
// 500); the root also calls Node's `emit` (500). Over 10 requests: 500 bytes per request in all.
const evaluate = benchModule('allocations.mjs');

const frame = (functionName: string, url: string, lineNumber = 0) => ({ functionName, url, lineNumber, columnNumber: 0, scriptId: '0' });
let id = 0;
const node = (callFrame: ReturnType<typeof frame>, selfSize: number, children: unknown[] = []) => ({ callFrame, selfSize, id: ++id, children });
const HANDLE = frame('handle', '/repo/dist/src/gateway.js', 9);
const PROFILE = {
  head: node(frame('(root)', ''), 0, [
    node(HANDLE, 1000, [node(frame('parse', '/repo/node_modules/undici/lib/parse.js', 4), 3000), node(HANDLE, 500)]),
    node(frame('emit', 'node:events', 488), 500),
  ]),
  samples: [],
};

interface Summary {
  bytesPerRequest: number;
  self: [string, number][];
  areas: [string, number][];
  inclusive: [string, number][];
}

describe('summariseAllocations', () => {
  let summary: Summary;
  beforeAll(() => {
    summary = evaluate<Summary>('m.summariseAllocations(input, 10)', PROFILE);
  });

  it('divides the bytes sampled by the requests served', () => {
    expect(summary.bytesPerRequest).toBe(500);
  });

  it('counts self bytes by function, a recursive call with its caller, largest first', () => {
    expect(summary.self).toEqual([
      ['parse parse.js:5', 300],
      ['handle gateway.js:10', 150],
      ['emit node:events:489', 50],
    ]);
  });

  it('counts self bytes by area: the package, the dist/ folder, Node', () => {
    expect(summary.areas).toEqual([
      ['undici', 300],
      ['src/gateway', 150],
      ['node:events', 50],
    ]);
  });

  it('counts a function once per stack inclusively, however often it recurs in it', () => {
    expect(Object.fromEntries(summary.inclusive)).toEqual({
      '(root)': 500,
      'handle gateway.js:10': 450,
      'parse parse.js:5': 300,
      'emit node:events:489': 50,
    });
  });
});
