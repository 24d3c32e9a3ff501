/**
 * A small reader of the OpenMetrics text format (https://prometheus.io/docs/specs/om/open_metrics_spec/), enough
 * for what the gateway's scrape endpoint writes: samples with labels, values and exemplars, `# TYPE` lines, `# EOF`.
 * It rejects what it does not understand, so a malformed exposition fails the test instead of reading as empty.
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

export function parseOpenMetrics(text: string): Exposition {
  const lines = text.split('\n');
  if (lines.at(-1) !== '' || lines.at(-2) !== '# EOF') throw new Error('an OpenMetrics exposition ends with "# EOF\\n"');
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of lines.slice(0, -2)) {
    if (line.startsWith('# TYPE ')) {
      const [name, type] = line.slice(7).split(' ');
      types.set(name!, type!);
      continue;
    }
    if (line.startsWith('# HELP ') || line.startsWith('# UNIT ')) continue;
    if (line.startsWith('#') || line === '') throw new Error(`unexpected line: ${line}`);
    const nameEnd = line.search(/[{ ]/);
    const name = line.slice(0, nameEnd);
    let rest = nameEnd;
    let labels: Record<string, string> = {};
    if (line[rest] === '{') ({ labels, end: rest } = readLabels(line, rest));
    const [valuePart, exemplarPart] = line.slice(rest + 1).split(' # ');
    const sample: Sample = { name, labels, value: parseNumber(valuePart!.split(' ')[0]) };
    if (exemplarPart !== undefined) {
      const { labels: exemplarLabels, end } = readLabels(exemplarPart, 0);
      const [value, timestamp] = exemplarPart.slice(end + 1).split(' ');
      sample.exemplar = { labels: exemplarLabels, value: parseNumber(value), ...(timestamp ? { timestamp: parseNumber(timestamp) } : {}) };
    }
    samples.push(sample);
  }
  return { text, types, samples };
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

/** GETs `<metricsUrl>/metrics` and parses it, checking status and content type. */
export async function scrape(metricsUrl: string): Promise<Exposition> {
  const response = await fetch(`${metricsUrl}/metrics`);
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
