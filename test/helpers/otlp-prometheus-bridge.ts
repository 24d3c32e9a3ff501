import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ReceivedMetricPoint } from './otlp-receiver';

/**
 * What Prometheus 3's OTLP receiver (`--web.enable-otlp-receiver`, `otlp.translation_strategy:
 * UnderscoreEscapingWithSuffixes`) makes of the OTLP metrics it is sent, served as a scrape for a Prometheus that has no
 * such receiver (Debian's is 2.42; the OTLP receiver came in 2.47, its translation settings in 3.0). Scraped with
 * `honor_labels: true`, the series keep the `job` and `instance` the receiver would give them. The translation is
 * Prometheus's documented one, for what the Node SDK sends: cumulative sums, gauges, explicit-bucket histograms.
 *   - names: characters outside [a-zA-Z0-9_:] as `_`, then the unit as a suffix (`s` -> `_seconds`, `By` -> `_bytes`,
 *     `1` -> `_ratio` on gauges, `{...}` annotations dropped), then `_total` on monotonic sums;
 *   - label names: characters outside [a-zA-Z0-9_] as `_`;
 *   - `job` = `service.namespace/service.name` (or `service.name`), `instance` = `service.instance.id`.
 */

export interface OtlpPrometheusBridge {
  readonly url: string;
  /** The last point of each series (name and attributes, per service instance), as the text format 0.0.4. */
  exposition(): string;
  close(): Promise<void>;
}

const UNIT_SUFFIX: Record<string, string> = { s: 'seconds', ms: 'milliseconds', By: 'bytes', KiBy: 'kibibytes', MiBy: 'mebibytes', m: 'meters', '%': 'percent' };

function sanitize(name: string): string {
  return name.replace(/[^a-zA-Z0-9_:]/g, '_').replace(/_+/g, '_');
}

function labelName(key: string): string {
  const name = key.replace(/[^a-zA-Z0-9_]/g, '_').replace(/_+/g, '_');
  return /^[0-9]/.test(name) ? `key_${name}` : name;
}

/** The Prometheus name of an OTLP metric (without the histogram's `_bucket`/`_sum`/`_count`). */
export function prometheusName(point: Pick<ReceivedMetricPoint, 'name' | 'unit' | 'type' | 'monotonic'>): string {
  let name = sanitize(point.name);
  const unit = point.unit.replace(/\{[^}]*\}/g, '').trim();
  const suffix = unit === '1' ? (point.type === 'gauge' ? 'ratio' : '') : (UNIT_SUFFIX[unit] ?? sanitize(unit.replace('/', '_per_')));
  if (suffix && !name.endsWith(`_${suffix}`)) name += `_${suffix}`;
  if (point.type === 'sum' && point.monotonic && !name.endsWith('_total')) name += '_total';
  return name;
}

function job(resource: Record<string, unknown>): string {
  const name = String(resource['service.name'] ?? 'unknown_service');
  return resource['service.namespace'] ? `${String(resource['service.namespace'])}/${name}` : name;
}

function escapeValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function labelText(labels: Record<string, string>): string {
  return `{${Object.entries(labels)
    .map(([k, v]) => `${k}="${escapeValue(v)}"`)
    .join(',')}}`;
}

/**
 * Serves `points()` (every point received, in arrival order) at GET /metrics on 127.0.0.1. Points of `dropServices`
 * are left out, as otel/collector.yaml's filter drops the gateway's own OTLP copy before Prometheus.
 */
export async function startOtlpPrometheusBridge(points: () => readonly ReceivedMetricPoint[], dropServices: readonly string[]): Promise<OtlpPrometheusBridge> {
  function exposition(): string {
    const last = new Map<string, ReceivedMetricPoint>();
    for (const point of points()) {
      if (dropServices.includes(String(point.resource['service.name']))) continue;
      if (point.temporality === 'delta') continue;
      last.set(JSON.stringify([job(point.resource), point.resource['service.instance.id'], point.name, point.attributes]), point);
    }
    const families = new Map<string, { type: string; lines: string[] }>();
    for (const point of last.values()) {
      const name = prometheusName(point);
      const labels: Record<string, string> = { job: job(point.resource), instance: String(point.resource['service.instance.id'] ?? '') };
      for (const [key, value] of Object.entries(point.attributes)) labels[labelName(key)] = String(value);
      const type = point.type === 'histogram' ? 'histogram' : point.type === 'sum' && point.monotonic ? 'counter' : 'gauge';
      const family = families.get(name) ?? { type, lines: [] };
      families.set(name, family);
      if (point.type === 'histogram') {
        let cumulative = 0;
        const bounds = [...(point.explicitBounds ?? []), Infinity];
        bounds.forEach((bound, i) => {
          cumulative += point.bucketCounts?.[i] ?? 0;
          family.lines.push(`${name}_bucket${labelText({ ...labels, le: bound === Infinity ? '+Inf' : String(bound) })} ${cumulative}`);
        });
        family.lines.push(`${name}_sum${labelText(labels)} ${point.sum ?? 0}`, `${name}_count${labelText(labels)} ${point.count ?? 0}`);
      } else if (point.value !== undefined) {
        family.lines.push(`${name}${labelText(labels)} ${point.value}`);
      }
    }
    return [...families].map(([name, { type, lines }]) => `# TYPE ${name} ${type}\n${lines.join('\n')}\n`).join('');
  }
  const server = http.createServer((req, res) => {
    if (req.url !== '/metrics') return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(exposition());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    exposition,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
