// Where a callgrind dump's instructions go, by function and by area: the `--functions` report of
// bench/instructions.mjs. Callgrind names native code from symbols, but V8's compiled JavaScript has none: it
// shows up as bare addresses (`0x000000000abc1234`), which the V8 perf map (`node --perf-basic-prof` writes
// `/tmp/perf-<pid>.map`) names. Pure functions over the files' text, so the accounting is testable on fixtures
// (test/unit/callgrind-functions.test.ts).

/**
 * A perf map's entries in the order V8 wrote them: `<hex start> <hex size> <name>` per line. V8 appends as it
 * compiles, and reuses code space after GC, so several entries can cover one address over time.
 */
export function parsePerfMap(text) {
  const entries = [];
  for (const line of text.split('\n')) {
    const match = /^([0-9a-fA-F]+) ([0-9a-fA-F]+) (.*)$/.exec(line);
    if (match) entries.push({ start: parseInt(match[1], 16), size: parseInt(match[2], 16), name: match[3] });
  }
  return entries;
}

/**
 * The name of each address: the entry covering it ([start, start + size)) that was written LAST, which is the
 * code that lived there most recently. Returns a Map address -> name (addresses no entry covers are absent).
 * Each entry paints the addresses it covers, in writing order, so later entries overwrite earlier ones.
 */
export function nameAddresses(entries, addresses) {
  const sorted = [...new Set(addresses)].sort((a, b) => a - b);
  const names = new Map();
  for (const { start, size, name } of entries) {
    for (let i = firstAtOrAbove(sorted, start); i < sorted.length && sorted[i] < start + size; i++) names.set(sorted[i], name);
  }
  return names;
}

function firstAtOrAbove(sorted, value) {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (sorted[middle] < value) low = middle + 1;
    else high = middle;
  }
  return low;
}

/**
 * One callgrind dump (`callgrind.out.<pid>.<n>`, the default `positions: line`, `events: Ir` or more) as
 *   total: the Ir of every cost line that is not a call's (equals the file's `totals:`),
 *   summary: the file's `summary:` Ir (callgrind's per-thread counters; bench/instructions.mjs's table uses it),
 *   self: Map function -> Ir spent in the function itself,
 *   calls: Map caller -> Map callee -> inclusive Ir of the calls (the cost line after each `calls=`).
 * Function names are as callgrind wrote them (compressed `(id) name` resolved, `fn=` and `cfn=` sharing one
 * table), recursion suffixes (`'2`) kept: `nameFunctions` drops them.
 */
export function parseCallgrind(text) {
  const self = new Map();
  const calls = new Map();
  const compressed = new Map();
  let positionColumns = 1;
  let irColumn = 0;
  let fn = '(no function)';
  let callee;
  let callPending = false;
  let total = 0;
  let summary = 0;
  const nameOf = (spec) => {
    const match = /^\((\d+)\)(?: (.*))?$/.exec(spec);
    if (!match) return spec;
    if (match[2] !== undefined) compressed.set(match[1], match[2]);
    const name = compressed.get(match[1]);
    if (name === undefined) throw new Error(`callgrind: compressed name (${match[1]}) used before it was defined`);
    return name;
  };
  for (const line of text.split('\n')) {
    const first = line.charCodeAt(0);
    // Cost lines start with a position: a number (decimal or 0x hex), or a relative one (+N, -N, *).
    if ((first >= 48 && first <= 57) || line[0] === '+' || line[0] === '-' || line[0] === '*') {
      const fields = line.trim().split(/\s+/);
      const ir = Number(fields[positionColumns + irColumn] ?? 0);
      if (callPending) {
        callPending = false;
        addTo(calls, fn, callee, ir);
      } else {
        self.set(fn, (self.get(fn) ?? 0) + ir);
        total += ir;
      }
    } else if (line.startsWith('fn=')) {
      fn = nameOf(line.slice(3));
    } else if (line.startsWith('cfn=')) {
      callee = nameOf(line.slice(4));
    } else if (line.startsWith('calls=')) {
      callPending = true;
    } else if (line.startsWith('summary:')) {
      summary = Number(line.slice(8).trim().split(/\s+/)[irColumn] ?? 0);
    } else if (line.startsWith('positions:')) {
      positionColumns = line.slice(10).trim().split(/\s+/).length;
    } else if (line.startsWith('events:')) {
      irColumn = Math.max(0, line.slice(7).trim().split(/\s+/).indexOf('Ir'));
    }
  }
  return { total, summary, self, calls };
}

function addTo(nested, outer, inner, value) {
  let map = nested.get(outer);
  if (!map) nested.set(outer, (map = new Map()));
  map.set(inner, (map.get(inner) ?? 0) + value);
}

/** Code callgrind could not name and no perf map entry covers (code V8 does not log there). */
export const UNNAMED = '(unnamed code: address not in the perf map)';

/**
 * `parseCallgrind`'s result with V8's names for the bare addresses (the last perf map entry covering each, its
 * `JS:` prefix removed), recursion suffixes (`'2`) dropped, and costs of functions that now share a name summed.
 */
export function nameFunctions(profile, perfEntries) {
  const bare = (name) => name.replace(/'\d+$/, '');
  const addresses = [];
  const visit = (name) => {
    if (/^0x[0-9a-fA-F]+$/.test(bare(name))) addresses.push(parseInt(bare(name), 16));
  };
  for (const name of profile.self.keys()) visit(name);
  for (const [caller, callees] of profile.calls) {
    visit(caller);
    for (const callee of callees.keys()) visit(callee);
  }
  const perfNames = nameAddresses(perfEntries, addresses);
  const rename = (name) => {
    const stripped = bare(name);
    if (!/^0x[0-9a-fA-F]+$/.test(stripped)) return stripped;
    const perfName = perfNames.get(parseInt(stripped, 16));
    return perfName === undefined ? UNNAMED : perfName.replace(/^JS:/, '');
  };
  return renamed(profile, rename);
}

function renamed({ total, summary, self, calls }, rename) {
  const named = { total, summary, self: new Map(), calls: new Map() };
  for (const [name, ir] of self) named.self.set(rename(name), (named.self.get(rename(name)) ?? 0) + ir);
  for (const [caller, callees] of calls) for (const [callee, ir] of callees) addTo(named.calls, rename(caller), rename(callee), ir);
  return named;
}

/** Several named profiles (one per process of a variant, e.g. a cluster's primary and workers) as one. */
export function mergeProfiles(profiles) {
  const merged = { total: 0, summary: 0, self: new Map(), calls: new Map() };
  for (const profile of profiles) {
    merged.total += profile.total;
    merged.summary += profile.summary;
    for (const [name, ir] of profile.self) merged.self.set(name, (merged.self.get(name) ?? 0) + ir);
    for (const [caller, callees] of profile.calls) for (const [callee, ir] of callees) addTo(merged.calls, caller, callee, ir);
  }
  return merged;
}

/**
 * Areas by name, first match wins. JavaScript is placed by its file (V8's perf map names it `<tier marker><name>
 * <file>:<line>:<column>`), native code by its symbol. The JIT-compiled regular expressions and the file rules go
 * first: a JS function may be called `parseRegExp`, but no native symbol has a path in it.
 */
export const AREAS = [
  ['regular expressions', /^RegExp[.:]/],
  ["Node's JS", /(^|\s)node:[a-z_]/],
  // The gateway's only WebAssembly is undici's HTTP parser (llhttp compiled to wasm).
  ['undici', /\/node_modules\/undici\/|^wasm-function|^wasm-to-js-/],
  ['OpenTelemetry', /\/node_modules\/@opentelemetry\/|\/dist\/otel\//],
  ['Koa', /\/node_modules\/(koa|koa-[^/]+|@koa\/[^/]+|delegates)\//],
  ["the gateway's own code", /\/dist\/src\//],
  ['other packages', /\/node_modules\//],
  ['V8 optimizing compiler', /v8::internal::compiler::|turboshaft|[Mm]aglev|v8::internal::wasm::|OptimizingCompile|v8::internal::Zone/],
  // The write barrier (RecordWrite) is the garbage collector's cost paid by every pointer store.
  ['garbage collector', /Scaveng|Heap::|v8::internal::Heap|MarkCompact|Marking|Sweep|Evacuat|heap::base|cppgc|MemoryAllocator|RememberedSet|SlotSet|PagedSpace|SemiSpace|LargeObjectSpace|Builtins_RecordWrite|EphemeronKeyBarrier/],
  ['inline caches, megamorphic', /Megamorphic/],
  ['regular expressions', /RegExp|Irregexp|regexp/],
  ['C and C++ libraries (libc, libstdc++, abseil, ICU)', /^(__|_int_|_IO_|_dl_|_itoa)|^(malloc|free|calloc|realloc|cfree|unlink_chunk|malloc_consolidate|sysmalloc|alloc_perturb|malloc_usable_size|posix_memalign)\b|^mem(cpy|set|move|cmp|chr)|^str[a-z]*$|^(read|write|writev|accept4|mprotect|sbrk|fwrite|fputc|vs?n?printf|vfprintf)$|@@GLIBC|^(pthread_|_pthread_|epoll_|operator (new|delete))|^std::|^absl::|^icu_\d+::|^fast_float::/],
  ['OpenSSL', /^(EVP_|HMAC|SHA\d|sha\d|CRYPTO_|ossl_|OPENSSL_|ERR_|BN_|evp_|OBJ_|EC_|RSA_|ASN1_)/],
  ["Node's C++ (libuv, llhttp)", /node::|^uv_|^uv__|llhttp|^ada::|simdutf|nghttp2|^ares_|ncrypto::/],
  ['other V8 builtins', /^Builtins_|^Builtin:|^BytecodeHandler:/],
  ['V8 runtime', /v8::|Runtime_|^halfsiphash/],
];

export function areaOf(name) {
  for (const [area, rule] of AREAS) if (rule.test(name)) return area;
  return 'unknown';
}

/** Self instructions per area, largest first: [area, Ir][]. */
export function areasOf(profile) {
  const byArea = new Map();
  for (const [name, ir] of profile.self) byArea.set(areaOf(name), (byArea.get(areaOf(name)) ?? 0) + ir);
  return [...byArea].sort((a, b) => b[1] - a[1]);
}

/** The functions with the most self instructions: [name, Ir][], largest first. */
export function topFunctions(profile, count) {
  return [...profile.self].sort((a, b) => b[1] - a[1]).slice(0, count);
}

/**
 * The V8 entry points a function pays for by calling them: megamorphic inline caches and the runtime (C++ reached
 * through the CEntry builtins), which cost far more than the call site shows.
 */
export const ENTRY_POINT = /Megamorphic|^Builtins_(Wasm)?CEntry|Runtime_/;

/**
 * The `count` entry points with the most instructions spent in calls to them (inclusive, from `calls=`), each
 * with its callers and its callees by inclusive instructions, largest first:
 *   [{ name, inclusive, callers: [[caller, Ir], ...], callees: [[callee, Ir], ...] }]
 * An entry point called only by other entry points (a `Runtime_*` function behind a CEntry builtin) is left
 * out: it is among its callers' callees, next to the JavaScript that calls them. A function calling itself
 * (recursion) is neither its own caller nor its own callee.
 */
export function entryPoints(profile, count, isEntryPoint = (name) => ENTRY_POINT.test(name)) {
  const callersOf = new Map();
  for (const [caller, callees] of profile.calls) {
    for (const [callee, ir] of callees) if (caller !== callee && isEntryPoint(callee)) addTo(callersOf, callee, caller, ir);
  }
  const largestFirst = (map) => [...map].sort((a, b) => b[1] - a[1]);
  return [...callersOf]
    .filter(([, callers]) => [...callers.keys()].some((caller) => !isEntryPoint(caller)))
    .map(([name, callers]) => ({
      name,
      inclusive: [...callers.values()].reduce((sum, ir) => sum + ir, 0),
      callers: largestFirst(callers),
      callees: largestFirst(profile.calls.get(name) ?? new Map()).filter(([callee]) => callee !== name),
    }))
    .sort((a, b) => b.inclusive - a.inclusive)
    .slice(0, count);
}

/**
 * The `<variant>.functions.md` report: total, areas, top functions, and the callers of the costliest V8 entry
 * points, all per request. `root` (the repository) is cut from paths to keep lines short.
 */
export function formatFunctionsReport({ name, profile, requests, root, functions = 60, entryPointCount = 15, rowsPerEntryPoint = 8 }) {
  const perRequest = (ir) => Math.round(ir / requests).toLocaleString('en-US');
  const percent = (ir) => `${((100 * ir) / profile.total).toFixed(1)}%`;
  const shown = (text) => cell(root ? text.replaceAll(`${root}/`, '') : text);
  // Callgrind's own two totals can differ by a fraction of a percent; the bench's table divides the summary.
  const summaryNote = profile.summary > 0 && profile.summary !== profile.total ? ` (its \`summary:\`, which the instructions table divides, says ${perRequest(profile.summary)})` : '';
  const lines = [
    `# Where ${name}'s instructions go`,
    '',
    `${perRequest(profile.total)} instructions per request (${profile.total.toLocaleString('en-US')} over ${requests.toLocaleString('en-US')} requests), every thread of every process counted: the sum over functions, callgrind's \`totals:\`${summaryNote}.`,
    '',
    "Compiled JavaScript is named from V8's perf map; tier markers: `~` Ignition, `^` Sparkplug, `+` Maglev, `*` TurboFan, `'` specialized to its closure's context.",
    '',
    '## Areas (self instructions)',
    '',
    '| area | per request | share |',
    '|---|---:|---:|',
    ...areasOf(profile).map(([area, ir]) => `| ${area} | ${perRequest(ir)} | ${percent(ir)} |`),
    '',
    `## Top ${functions} functions (self instructions)`,
    '',
    '| # | per request | share | area | function |',
    '|---:|---:|---:|---|---|',
    ...topFunctions(profile, functions).map(([fn, ir], i) => `| ${i + 1} | ${perRequest(ir)} | ${percent(ir)} | ${areaOf(fn)} | ${shown(fn)} |`),
    '',
    '## Who calls the costliest V8 entry points, and what they run (inclusive instructions of the calls)',
    '',
    "Megamorphic inline caches, `Builtins_CEntry_*` (compiled code's way into V8's C++) and `Runtime_*`: ← callers, → callees. Callgrind keeps caller-callee pairs, not stacks: a `Runtime_*` function reached only through a CEntry builtin is listed among that builtin's callees, whose callers are the JavaScript behind it.",
    '',
    '| entry point | ← caller, → callee | per request |',
    '|---|---|---:|',
  ];
  const rows = (arrow, pairs) => {
    for (const [other, ir] of pairs.slice(0, rowsPerEntryPoint)) lines.push(`| | ${arrow} ${shown(other)} | ${perRequest(ir)} |`);
    const rest = pairs.slice(rowsPerEntryPoint);
    if (rest.length > 0) lines.push(`| | ${arrow} (${rest.length} more) | ${perRequest(rest.reduce((sum, [, ir]) => sum + ir, 0))} |`);
  };
  for (const entryPoint of entryPoints(profile, entryPointCount)) {
    lines.push(`| **${shown(entryPoint.name)}** | (all calls to it) | **${perRequest(entryPoint.inclusive)}** |`);
    rows('←', entryPoint.callers);
    rows('→', entryPoint.callees);
  }
  return `${lines.join('\n')}\n`;
}
/** A name as a Markdown table cell: pipes escaped, C++ template soup cut short. */
function cell(text) {
  const short = text.length > 160 ? `${text.slice(0, 157)}...` : text;
  return `\`${short.replaceAll('`', "'").replaceAll('|', '\\|')}\``;
}

/**
 * The garbage collections in a stretch of `node --trace-gc` output (V8 prints one line per collection to stdout,
 * `[pid:isolate]  <ms> ms: <kind> ...`, between whatever else the process writes there): major ones (Mark-Compact,
 * whose concurrent marking runs on helper threads too) and minor ones (Scavenge, or Minor Mark-Sweep), each with the
 * sum of its main-thread pauses. Under
 * callgrind a major collection of the traced gateway came about once per 1,200-1,500 requests and cost as many
 * instructions as a hundred of them, so one more or one fewer in a window of 1,500 moves a count per request by
 * 10-20%: bench/instructions.mjs prints how many each counted window held.
 */
export function collectionsIn(text) {
  let major = 0;
  let minor = 0;
  // The main thread's pause of each, in ms: the first figure of V8's `<pause> / <time spent elsewhere> ms`.
  let majorPauseMs = 0;
  let minorPauseMs = 0;
  for (const match of text.matchAll(/^\[\d+:0x[0-9a-f]+(?::\d+)?\]\s+[\d.]+ ms: (Mark-Compact|Scavenge|Minor Mark-Sweep)\b(.*)$/gm)) {
    const pauseMs = Number(/ ([\d.]+) \/ [\d.]+ ms/.exec(match[2])?.[1] ?? 0);
    if (match[1] === 'Mark-Compact') {
      major++;
      majorPauseMs += pauseMs;
    } else {
      minor++;
      minorPauseMs += pauseMs;
    }
  }
  return { major, minor, majorPauseMs, minorPauseMs };
}
