/**
 * The scrape endpoint's two exposition formats, chosen by the request's `Accept` and rendered from prom-client's
 * `getMetricsAsJSON()`. prom-client's own `registry.metrics()` renders the one format its registry is fixed to
 * (OpenMetrics here: only that format carries exemplars), writes `le` as `String(bound)` (`1`, where OpenMetrics
 * wants the canonical `1.0`), and no `_created`; and in the text format a counter registered by its family name
 * loses its `_total`.
 */

/**
 * OpenMetrics 1.0.0 (exemplars, `_created`, `# EOF`), or the Prometheus text format (neither) labelled 0.0.4 or
 * 1.0.0: the same text, as 1.0.0 only adds quoted UTF-8 names, which no name of the gateway needs.
 */
export type ExpositionFormat = 'openmetrics' | 'text' | 'text-1.0.0';

export const EXPOSITION_CONTENT_TYPE: Readonly<Record<ExpositionFormat, string>> = {
  openmetrics: 'application/openmetrics-text; version=1.0.0; charset=utf-8',
  text: 'text/plain; version=0.0.4; charset=utf-8',
  'text-1.0.0': 'text/plain; version=1.0.0; charset=utf-8',
};

/**
 * The media types offered, for matching `Accept` media ranges (`version` values a range may name), in the order
 * that breaks a tie between two reached by wildcards alone: the text format 0.0.4 first, what every scraper parses.
 */
const OFFERED: ReadonlyArray<{ format: ExpositionFormat; type: string; subtype: string; versions: readonly string[] }> = [
  { format: 'text', type: 'text', subtype: 'plain', versions: ['0.0.4'] },
  // Prometheus 3's `PrometheusText1.0.0` scrape protocol asks for it (`text/plain;version=1.0.0;escaping=...`):
  // the 0.0.4 text with names that may be quoted UTF-8. Every name here is a legacy one, so no `escaping` asked
  // for changes a byte, and a client that accepts only 1.0.0 is answered rather than refused (406).
  { format: 'text-1.0.0', type: 'text', subtype: 'plain', versions: ['1.0.0'] },
  // 0.0.1 is the draft that became 1.0.0: Prometheus releases that ask for it parse 1.0.0 with the same parser.
  { format: 'openmetrics', type: 'application', subtype: 'openmetrics-text', versions: ['1.0.0', '0.0.1'] },
];

/** A weight as RFC 9110 12.4.2 writes it (`0` to `1`, three decimals at most). */
const QVALUE = /^(0(\.\d{0,3})?|1(\.0{0,3})?)$/;

/** How a scrape's body is sent: gzip when asked for (Prometheus asks on every scrape), else as it is. */
export type ExpositionCoding = 'gzip' | 'identity';

/**
 * The content coding to answer `acceptEncoding` with (RFC 9110 12.5.3): gzip when it (or its alias `x-gzip`, 8.4.1.3),
 * or else `*`, has a weight above 0 no lower than identity's; otherwise the body as it is. Identity named by no
 * element is acceptable but weighs least (it wins no tie); `identity;q=0` with gzip refused too still gets the body
 * as it is (the RFC allows it, and a scrape the client can read beats a 415 it cannot act on). No header, or an
 * empty one ("no coding wanted"): identity. An element whose weight does not parse is skipped.
 */
export function negotiateCoding(acceptEncoding: string | undefined): ExpositionCoding {
  if (acceptEncoding === undefined) return 'identity';
  let gzip: number | undefined;
  let identity: number | undefined;
  let any: number | undefined;
  for (const element of acceptEncoding.split(',')) {
    const [name = '', ...parameters] = element.split(';').map((part) => part.trim());
    let q = 1;
    for (const parameter of parameters) {
      const eq = parameter.indexOf('=');
      if (eq > 0 && parameter.slice(0, eq).trim().toLowerCase() === 'q') {
        const value = parameter.slice(eq + 1).trim();
        q = QVALUE.test(value) ? Number(value) : NaN;
        break;
      }
    }
    if (Number.isNaN(q)) continue;
    const coding = name.toLowerCase();
    if (coding === 'gzip' || coding === 'x-gzip') gzip = Math.max(gzip ?? 0, q);
    else if (coding === 'identity') identity = Math.max(identity ?? 0, q);
    else if (coding === '*') any = Math.max(any ?? 0, q);
  }
  const gzipWeight = gzip ?? any ?? 0;
  return gzipWeight > 0 && gzipWeight >= (identity ?? any ?? 0) ? 'gzip' : 'identity';
}

interface MediaRange {
  type: string;
  subtype: string;
  params: Map<string, string>;
  q: number;
}

/** `Accept`'s media ranges (RFC 9110 12.5.1); an element that does not parse is skipped. */
export function mediaRanges(accept: string): MediaRange[] {
  const ranges: MediaRange[] = [];
  // Commas and semicolons inside a quoted parameter value do not separate anything; a quote left open runs to the
  // end (one that had to close was scanned to the end from every `"` of a header made of them: 16 KiB, 0.25-0.3 s).
  for (const element of accept.match(/(?:[^,"]|"(?:[^"\\]|\\[\s\S])*"?)+/g) ?? []) {
    const [range = '', ...parameters] = (element.match(/(?:[^;"]|"(?:[^"\\]|\\[\s\S])*"?)+/g) ?? []).map((part) => part.trim());
    const [type, subtype] = range.toLowerCase().split('/');
    if (!type || !subtype || (type === '*' && subtype !== '*')) continue;
    const params = new Map<string, string>();
    let q = 1;
    for (const parameter of parameters) {
      const eq = parameter.indexOf('=');
      if (eq <= 0) continue;
      const name = parameter.slice(0, eq).trim().toLowerCase();
      const value = parameter.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1').replace(/\\(.)/g, '$1');
      // `q` ends the media type's parameters; what follows it are accept-extensions.
      if (name === 'q') {
        q = QVALUE.test(value) ? Number(value) : NaN;
        break;
      }
      params.set(name, value);
    }
    if (!Number.isNaN(q)) ranges.push({ type, subtype, params, q });
  }
  return ranges;
}

/**
 * The format to answer `accept` with; undefined when the client accepts none (406). No `Accept` (nor one that
 * does not parse, nor `*\/*`) gets the text format 0.0.4, as Prometheus' own client libraries answer;
 * OpenMetrics when its weight is higher, or equal but given by naming `application/openmetrics-text` rather than
 * by a wildcard. For each offered type the most specific range that matches it gives its weight
 * (`text/plain;version=0.0.4` before `text/plain` before `text/*` before `*\/*`). A range's `version` must be
 * one the type is offered in, and `charset` UTF-8; other parameters (Prometheus' `escaping`) are satisfied by
 * the names the gateway exposes, all of them legacy. The text format is labelled 1.0.0 only for a client that
 * weights that version above 0.0.4 (or accepts no other).
 */
export function negotiateExposition(accept: string | undefined): ExpositionFormat | undefined {
  const ranges = accept === undefined ? [] : mediaRanges(accept);
  // A header with no media range that parses is disregarded (RFC 9110 allows that rather than 406).
  if (ranges.length === 0) return 'text';
  let chosen: { format: ExpositionFormat; q: number; named: boolean } | undefined;
  for (const offered of OFFERED) {
    let best: { specificity: number; q: number } | undefined;
    for (const range of ranges) {
      if (range.type !== '*' && (range.type !== offered.type || (range.subtype !== '*' && range.subtype !== offered.subtype))) continue;
      const version = range.params.get('version');
      const charset = range.params.get('charset')?.toLowerCase();
      if ((version !== undefined && !offered.versions.includes(version)) || (charset !== undefined && charset !== 'utf-8')) continue;
      // Of two ranges as specific, the one naming the version sent (OpenMetrics answers 1.0.0 to a 0.0.1 range too)
      // gives the weight: the first listed gave it, and a 0.0.1 range at q=0.1 before 1.0.0 at q=1 sent the text format.
      const specificity = (range.type === '*' ? 0 : range.subtype === '*' ? 1 : 2) * 100 + range.params.size + (version === offered.versions[0] ? 0.5 : 0);
      if (!best || specificity > best.specificity) best = { specificity, q: range.q };
    }
    const candidate = { format: offered.format, q: best?.q ?? 0, named: (best?.specificity ?? 0) >= 200 };
    if (candidate.q === 0) continue;
    // At equal weight a type named outranks one reached by a wildcard, and OpenMetrics one text format also named.
    const better = !chosen || candidate.q > chosen.q || (candidate.q === chosen.q && candidate.named && (!chosen.named || candidate.format === 'openmetrics'));
    if (better) chosen = candidate;
  }
  return chosen?.format;
}

/** What `registry.getMetricsAsJSON()` returns at run time (its declared types name an enum it does not use). */
export interface MetricFamilyJSON {
  name: string;
  help: string;
  type: string;
  values: ReadonlyArray<{
    value: number;
    labels: Readonly<Record<string, string | number | undefined>>;
    metricName?: string;
    exemplar?: { labelSet: Readonly<Record<string, string | number>>; value: number; timestamp?: number } | null;
  }>;
}

/**
 * `families` in `format`. `createdSeconds` (s since the epoch, when the counts began) is written as every
 * counter's and histogram's `_created` in OpenMetrics, which says they SHOULD carry one; the text format has none.
 */
export function renderExposition(families: readonly MetricFamilyJSON[], format: ExpositionFormat, createdSeconds?: number): string {
  const openMetrics = format === 'openmetrics';
  const lines: string[] = [];
  for (const family of families) {
    const counter = family.type === 'counter';
    const base = counter ? family.name.replace(/_total$/, '') : family.name;
    // In the text format a counter's family is named as its samples are; OpenMetrics names it without `_total`.
    const name = counter && !openMetrics ? `${base}_total` : base;
    lines.push(`# TYPE ${name} ${family.type}`, `# HELP ${name} ${escapeHelp(family.help, openMetrics)}`);
    const created = openMetrics && createdSeconds !== undefined && ['counter', 'histogram', 'summary'].includes(family.type) ? ` ${createdSeconds}` : undefined;
    for (const sample of family.values) {
      const sampleName = counter ? `${base}_total` : (sample.metricName ?? base);
      const labels = renderLabels(sample.labels, openMetrics);
      let line = `${sampleName}${labels} ${renderValue(sample.value)}`;
      const { exemplar } = sample;
      if (openMetrics && exemplar) {
        line += ` # ${renderLabels(exemplar.labelSet, true) || '{}'} ${renderValue(exemplar.value)}${exemplar.timestamp === undefined ? '' : ` ${exemplar.timestamp}`}`;
      }
      lines.push(line);
      // After the series' last sample: a counter's total, a histogram's or summary's count.
      if (created && (counter || sampleName === `${base}_count`)) lines.push(`${base}_created${labels}${created}`);
    }
  }
  if (openMetrics) lines.push('# EOF');
  return `${lines.join('\n')}\n`;
}

function renderLabels(labels: Readonly<Record<string, string | number | undefined>>, openMetrics: boolean): string {
  const pairs: string[] = [];
  for (const [name, value] of Object.entries(labels)) {
    if (value === undefined) continue;
    const text = name === 'le' || name === 'quantile' ? renderBound(value, openMetrics) : String(value);
    pairs.push(`${name}="${text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')}"`);
  }
  return pairs.length ? `{${pairs.join(',')}}` : '';
}

/** Both formats escape backslash and line feed in HELP; OpenMetrics also the double quote. */
function escapeHelp(help: string, openMetrics: boolean): string {
  const escaped = help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
  return openMetrics ? escaped.replace(/"/g, '\\"') : escaped;
}

function renderValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (!Number.isFinite(value)) return value > 0 ? '+Inf' : '-Inf';
  return String(value);
}

/**
 * An `le` or `quantile` value. OpenMetrics ("Canonical Numbers") wants Go's `%g` with `.0` appended when there is
 * neither a point nor an exponent (`1.0`, `0.005`, `1e+06`): a label value is compared as a string, so `1` and
 * `1.0` would be two series. The text format keeps Go's `%g` itself (`1`), as Prometheus' Go client writes it.
 */
export function renderBound(value: string | number, openMetrics: boolean): string {
  const number = typeof value === 'number' ? value : Number(value);
  if (value === '' || Number.isNaN(number)) return String(value);
  const g = goFloat(number);
  return openMetrics && /^-?\d+$/.test(g) ? `${g}.0` : g;
}

/** Go's `strconv.FormatFloat(value, 'g', -1, 64)`: the shortest digits, exponent form below 1e-4 or from 1e6. */
function goFloat(value: number): string {
  if (!Number.isFinite(value)) return renderValue(value);
  if (value === 0) return Object.is(value, -0) ? '-0' : '0';
  const [mantissa, exponentText] = value.toExponential().split('e') as [string, string];
  const exponent = Number(exponentText);
  if (exponent < -4 || exponent >= 6) return `${mantissa}e${exponent < 0 ? '-' : '+'}${String(Math.abs(exponent)).padStart(2, '0')}`;
  return String(value);
}
