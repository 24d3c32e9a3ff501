/**
 * A small reader of the OpenMetrics text format (https://prometheus.io/docs/specs/om/open_metrics_spec/) and of
 * the Prometheus text format 0.0.4, enough for what the gateway's scrape endpoint writes: samples with labels,
 * values and exemplars, `# TYPE` lines, `# EOF`. It rejects what it does not understand, so a malformed
 * exposition fails the test instead of reading as empty.
 */
export interface Exemplar {
  labels: Record<string, string>;
  value: number;
  timestamp?: number;
}

export interface Sample {
  /** The sample's name (`x_bucket`, `x_count`, `x_total`), not the family's. */
  name: string;
  labels: Record<string, string>;
  value: number;
  exemplar?: Exemplar;
}

export interface Exposition {
  text: string;
  /** Family name -> type, from `# TYPE`. */
  types: Map<string, string>;
  samples: Sample[];
}

export const OPENMETRICS_CONTENT_TYPE = 'application/openmetrics-text; version=1.0.0; charset=utf-8';
export const TEXT_FORMAT_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
/** The same text, labelled as the version Prometheus 3 asks for with `PrometheusText1.0.0`. */
export const TEXT_1_0_0_CONTENT_TYPE = 'text/plain; version=1.0.0; charset=utf-8';

/**
 * The `Accept` of the shipped Prometheus job (otel/prometheus.yaml's scrape_protocols, in the form Prometheus 3
 * builds it): OpenMetrics preferred, the text format as a fallback.
 */
export const PROMETHEUS_ACCEPT = 'application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.3';

/** `{a="1",b="x\"y"}` from `text[start]` (the `{`): the labels and the index after the `}`. */
function readLabels(text: string, start: number): { labels: Record<string, string>; end: number } {
  const labels: Record<string, string> = {};
  let i = start + 1;
  while (text[i] !== '}') {
    const eq = text.indexOf('=', i);
    const name = text.slice(i, eq);
    if (!/^[a-zA-Z_][a-zA-Z0-9_]*$/.test(name) || text[eq + 1] !== '"') throw new Error(`bad label at ${i}: ${text.slice(i, i + 40)}`);
    let value = '';
    let j = eq + 2;
    for (; text[j] !== '"'; j++) {
      if (j >= text.length) throw new Error('unterminated label value');
      if (text[j] === '\\') {
        j++;
        value += text[j] === 'n' ? '\n' : text[j];
      } else value += text[j];
    }
    labels[name] = value;
    i = j + 1;
    if (text[i] === ',') i++;
    else if (text[i] !== '}') throw new Error(`expected , or } at ${i}: ${text.slice(i, i + 40)}`);
  }
  return { labels, end: i + 1 };
}

function parseNumber(raw: string | undefined): number {
  if (raw === '+Inf') return Infinity;
  if (raw === '-Inf') return -Infinity;
  const value = Number(raw);
  if (raw === undefined || raw === '' || Number.isNaN(value)) throw new Error(`not a number: ${raw}`);
  return value;
}

/** The sample suffixes each type allows, per format (OpenMetrics 1.0 "Suffixes"; the text format 0.0.4). */
const SUFFIXES: Record<'openmetrics' | 'text', Record<string, readonly string[]>> = {
  openmetrics: { counter: ['_total', '_created'], gauge: [''], histogram: ['_bucket', '_sum', '_count', '_created'], summary: ['', '_sum', '_count', '_created'] },
  // A text-format counter's family is named as its sample is (`x_total`), and nothing carries a `_created`.
  text: { counter: [''], gauge: [''], histogram: ['_bucket', '_sum', '_count'], summary: ['', '_sum', '_count'] },
};

/**
 * Reads the sample lines and `# TYPE` lines of one exposition format; every sample must follow its family's
 * `# TYPE` with a suffix that type allows there, and an exemplar (OpenMetrics only) sit on a `_bucket` or `_total`.
 */
function parseExposition(text: string, lines: readonly string[], format: 'openmetrics' | 'text'): Exposition {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  let family: string | undefined;
  for (const line of lines) {
    if (line.startsWith('# TYPE ')) {
      const [name, type, extra] = line.slice(7).split(' ');
      if (!name || !type || extra !== undefined || !SUFFIXES[format][type] || types.has(name)) throw new Error(`bad or repeated TYPE line: ${line}`);
      types.set(name, type);
      family = name;
      continue;
    }
    if (line.startsWith('# HELP ') || (format === 'openmetrics' && line.startsWith('# UNIT '))) continue;
    if (line.startsWith('#') || line === '') throw new Error(`unexpected line: ${line}`);
    const nameEnd = line.search(/[{ ]/);
    const name = line.slice(0, nameEnd);
    if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(name)) throw new Error(`bad metric name: ${line}`);
    const suffix = family !== undefined && name.startsWith(family) ? name.slice(family.length) : undefined;
    if (suffix === undefined || !SUFFIXES[format][types.get(family!)!]!.includes(suffix)) throw new Error(`sample outside its family (${family}): ${line}`);
    let rest = nameEnd;
    let labels: Record<string, string> = {};
    if (line[rest] === '{') ({ labels, end: rest } = readLabels(line, rest));
    if (line[rest] !== ' ') throw new Error(`expected a space after the labels: ${line}`);
    const [valuePart, exemplarPart] = line.slice(rest + 1).split(' # ');
    const [value, timestamp, extra] = valuePart!.split(' ');
    // The text format's timestamp is an integer (ms); anything else after the value is what promtool rejects.
    if (extra !== undefined || (timestamp !== undefined && !(format === 'openmetrics' ? Number.isFinite(Number(timestamp)) : /^-?\d+$/.test(timestamp)))) throw new Error(`bad value or timestamp: ${line}`);
    const sample: Sample = { name, labels, value: parseNumber(value) };
    if (exemplarPart !== undefined) {
      if (format === 'text') throw new Error(`exemplar in the text format: ${line}`);
      if (suffix !== '_bucket' && suffix !== '_total') throw new Error(`exemplar on ${name}: ${line}`);
      const { labels: exemplarLabels, end } = readLabels(exemplarPart, 0);
      const [value, timestamp] = exemplarPart.slice(end + 1).split(' ');
      sample.exemplar = { labels: exemplarLabels, value: parseNumber(value), ...(timestamp ? { timestamp: parseNumber(timestamp) } : {}) };
    }
    samples.push(sample);
  }
  return { text, types, samples };
}

/** An OpenMetrics 1.0 exposition (it must end with `# EOF`). */
export function parseOpenMetrics(text: string): Exposition {
  const lines = text.split('\n');
  if (lines.at(-1) !== '' || lines.at(-2) !== '# EOF') throw new Error('an OpenMetrics exposition ends with "# EOF\\n"');
  return parseExposition(text, lines.slice(0, -2), 'openmetrics');
}

/**
 * A Prometheus text format 0.0.4 exposition, as the gateway writes it: no exemplars, `_created` or `# EOF`
 * (the format has no syntax for the first and no meaning for the others).
 */
export function parsePrometheusText(text: string): Exposition {
  const lines = text.split('\n');
  if (lines.pop() !== '') throw new Error('a text exposition ends with a line feed');
  return parseExposition(text, lines, 'text');
}

/** The samples named `name` whose labels include every pair of `labels`. */
export function samplesOf(exposition: Exposition, name: string, labels: Record<string, string> = {}): Sample[] {
  return exposition.samples.filter((sample) => sample.name === name && Object.entries(labels).every(([key, value]) => sample.labels[key] === value));
}

/** The value of the one sample named `name` with exactly these labels; undefined when there is none. */
export function valueOf(exposition: Exposition, name: string, labels: Record<string, string>): number | undefined {
  const wanted = Object.keys(labels).length;
  const matches = samplesOf(exposition, name, labels).filter((sample) => Object.keys(sample.labels).length === wanted);
  if (matches.length > 1) throw new Error(`${matches.length} samples ${name} ${JSON.stringify(labels)}`);
  return matches[0]?.value;
}

/** GETs `<metricsUrl>/metrics` as Prometheus does (OpenMetrics) and parses it, checking status and content type. */
export async function scrape(metricsUrl: string): Promise<Exposition> {
  const response = await fetch(`${metricsUrl}/metrics`, { headers: { accept: PROMETHEUS_ACCEPT } });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`scrape answered ${response.status}: ${text}`);
  if (response.headers.get('content-type') !== OPENMETRICS_CONTENT_TYPE) throw new Error(`scrape content type ${response.headers.get('content-type')}`);
  return parseOpenMetrics(text);
}

/**
 * Scrapes until `ready` holds (requests are recorded when their response closes, which the client may see a
 * moment before the gateway does), then returns that scrape; fails after `timeoutMs`.
 */
export async function scrapeWhen(metricsUrl: string, ready: (exposition: Exposition) => boolean, timeoutMs = 2000): Promise<Exposition> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const exposition = await scrape(metricsUrl);
    if (ready(exposition)) return exposition;
    if (Date.now() > deadline) throw new Error(`the scrape did not reach the expected state within ${timeoutMs} ms:\n${exposition.text}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
