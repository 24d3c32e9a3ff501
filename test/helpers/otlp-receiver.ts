/**
 * An OTLP/HTTP receiver for tests: what a collector would see, decoded and flattened so a test can assert on
 * spans, log records and metric points the way it would search for them in Jaeger, Loki or Prometheus.
 *
 * Decoding (protobuf and OTLP/JSON, gzip or not) lives in otlp-decoding.ts.
 */
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { decodeContentEncoding, decodeExport, type ReceivedLog, type ReceivedMetricPoint, type ReceivedSpan, type Signal } from './otlp-decoding';

export type {
  Attributes,
  MetricTypeName,
  ReceivedExemplar,
  ReceivedLog,
  ReceivedMetricPoint,
  ReceivedSpan,
  ReceivedSpanEvent,
  Signal,
  SpanKindName,
} from './otlp-decoding';

/** One export request as it arrived, whether or not it decoded. */
export interface ReceivedRequest {
  signal: Signal;
  contentType: string;
  contentEncoding: string | undefined;
  bytes: number;
  /** Set when the request was rejected (bad encoding, undecodable body). */
  error?: string;
}

export interface ReceivedTelemetry {
  spans: readonly ReceivedSpan[];
  logs: readonly ReceivedLog[];
  /** Every data point of every metrics export, in arrival order: cumulative series repeat once per export. */
  metrics: readonly ReceivedMetricPoint[];
  requests: readonly ReceivedRequest[];
}

export interface OtlpReceiverOptions {
  /** Delay before answering each export request, in ms (the data is stored on arrival). Default 0. */
  delayMs?: number;
}

export interface OtlpReceiver {
  /** Base URL for `OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. `http://127.0.0.1:40123` (no trailing slash). */
  readonly url: string;
  spans(): ReceivedSpan[];
  logs(): ReceivedLog[];
  /** Every metric data point received; for the latest value of a cumulative series, take the last match. */
  metrics(): ReceivedMetricPoint[];
  requests(): ReceivedRequest[];
  /**
   * Resolves with everything received once `predicate` holds (checked now and after every export request);
   * rejects after `timeoutMs` (default 10 000) listing what did arrive. A predicate that throws counts as
   * not yet satisfied, and its last error is part of the timeout message.
   */
  waitFor(predicate: (received: ReceivedTelemetry) => boolean, timeoutMs?: number): Promise<ReceivedTelemetry>;
  /** Forgets everything received so far. */
  clear(): void;
  /** Answers each later export request only after `ms`, like a slow collector. */
  setDelay(ms: number): void;
  /** Stops listening, dropping open connections and delayed answers. */
  close(): Promise<void>;
}

const SIGNAL_BY_PATH: Record<string, Signal> = { '/v1/traces': 'traces', '/v1/logs': 'logs', '/v1/metrics': 'metrics' };

/** Starts a receiver on 127.0.0.1 and an ephemeral port. */
export async function startOtlpReceiver(options: OtlpReceiverOptions = {}): Promise<OtlpReceiver> {
  let delayMs = options.delayMs ?? 0;
  let spans: ReceivedSpan[] = [];
  let logs: ReceivedLog[] = [];
  let metrics: ReceivedMetricPoint[] = [];
  let requests: ReceivedRequest[] = [];
  const checks = new Set<() => void>();
  const delayed = new Set<NodeJS.Timeout>();

  const snapshot = (): ReceivedTelemetry => ({ spans: [...spans], logs: [...logs], metrics: [...metrics], requests: [...requests] });
  const notify = () => {
    for (const check of [...checks]) check();
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const signal = SIGNAL_BY_PATH[(req.url ?? '').split('?')[0] ?? ''];
      if (req.method !== 'POST' || signal === undefined) {
        res.writeHead(404).end();
        return;
      }
      const contentType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      const contentEncoding = req.headers['content-encoding']?.toLowerCase();
      const raw = Buffer.concat(chunks);
      const request: ReceivedRequest = { signal, contentType, contentEncoding, bytes: raw.length };
      requests.push(request);
      try {
        const body = decodeContentEncoding(raw, contentEncoding);
        const decoded = decodeExport(signal, contentType, body);
        spans.push(...decoded.spans);
        logs.push(...decoded.logs);
        metrics.push(...decoded.metrics);
      } catch (error) {
        request.error = error instanceof Error ? error.message : String(error);
        res.writeHead(400, { 'content-type': 'text/plain' }).end(request.error);
        notify();
        return;
      }
      notify();
      const answer = () => {
        // An empty Export*ServiceResponse: zero bytes in protobuf, `{}` in JSON.
        const json = contentType === 'application/json';
        res.writeHead(200, { 'content-type': json ? 'application/json' : 'application/x-protobuf' });
        res.end(json ? '{}' : Buffer.alloc(0));
      };
      if (delayMs <= 0) return answer();
      const timer = setTimeout(() => {
        delayed.delete(timer);
        answer();
      }, delayMs);
      delayed.add(timer);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    spans: () => [...spans],
    logs: () => [...logs],
    metrics: () => [...metrics],
    requests: () => [...requests],
    waitFor(predicate, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        let lastError: unknown;
        const check = () => {
          const received = snapshot();
          let satisfied = false;
          try {
            satisfied = predicate(received);
          } catch (error) {
            lastError = error;
          }
          if (!satisfied) return;
          settle();
          resolve(received);
        };
        const timer = setTimeout(() => {
          settle();
          reject(new Error(describeTimeout(snapshot(), timeoutMs, lastError)));
        }, timeoutMs);
        const settle = () => {
          clearTimeout(timer);
          checks.delete(check);
        };
        checks.add(check);
        check();
      });
    },
    clear() {
      spans = [];
      logs = [];
      metrics = [];
      requests = [];
    },
    setDelay(ms) {
      delayMs = ms;
    },
    async close() {
      for (const timer of delayed) clearTimeout(timer);
      delayed.clear();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    },
  };
}

function describeTimeout(received: ReceivedTelemetry, timeoutMs: number, lastError: unknown): string {
  const lines = [`OTLP receiver: condition not met within ${timeoutMs} ms.`];
  if (lastError !== undefined) {
    lines.push(`Last predicate error: ${lastError instanceof Error ? lastError.message : String(lastError)}`);
  }
  const failed = received.requests.filter((r) => r.error !== undefined);
  lines.push(
    `Requests: ${received.requests.length} (${failed.length} rejected${failed.map((r) => `: ${r.error}`).join('')})`,
  );
  lines.push(`Spans (${received.spans.length}):`);
  for (const s of received.spans.slice(-40)) {
    lines.push(
      `  [${s.serviceName}] ${s.kind} "${s.name}" trace=${s.traceId} span=${s.spanId} parent=${s.parentSpanId ?? '-'}` +
        ` attrs=${JSON.stringify(s.attributes)}`,
    );
  }
  lines.push(`Logs (${received.logs.length}):`);
  for (const l of received.logs.slice(-40)) {
    lines.push(
      `  [${l.serviceName}] ${l.severityText ?? l.severityNumber} ${JSON.stringify(l.body)} trace=${l.traceId ?? '-'}` +
        ` attrs=${JSON.stringify(l.attributes)}`,
    );
  }
  const pointsPerMetric = new Map<string, number>();
  for (const m of received.metrics) {
    const key = `[${m.serviceName}] ${m.type} "${m.name}"`;
    pointsPerMetric.set(key, (pointsPerMetric.get(key) ?? 0) + 1);
  }
  lines.push(`Metric points (${received.metrics.length}):`);
  for (const [key, count] of [...pointsPerMetric].slice(-40)) lines.push(`  ${key}: ${count}`);
  return lines.join('\n');
}
