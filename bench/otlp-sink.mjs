// The benchmark's OTLP/HTTP receiver: accepts trace and log exports like a collector would, counts what
// arrived and throws it away. Counting needs no full decoder: it walks the protobuf wire format down to each
// span's `kind` field (or reads OTLP/JSON), so the exporter under test keeps its default protocol.
//   node bench/otlp-sink.mjs <port>        GET /__stats -> { spans: { server, client, ... }, logs, ... }
import http from 'node:http';
import zlib from 'node:zlib';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  process.stderr.write('usage: node bench/otlp-sink.mjs <port>\n');
  process.exit(2);
}

/** OTLP `Span.SpanKind` numbers. */
const KIND_NAMES = ['unspecified', 'internal', 'server', 'client', 'producer', 'consumer'];

const stats = {
  exportRequests: 0,
  bytes: 0,
  rejected: 0,
  spans: { total: 0, unspecified: 0, internal: 0, server: 0, client: 0, producer: 0, consumer: 0 },
  logs: 0,
  lastExportAt: 0,
};

/** Calls `onField(field, wireType, buf, start, end)` for each field of the message in buf[start, end). */
function walk(buf, start, end, onField) {
  let at = start;
  const varint = () => {
    let value = 0;
    let shift = 0;
    for (;;) {
      const byte = buf[at++];
      if (byte === undefined) throw new Error('truncated varint');
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return value;
      shift += 7;
    }
  };
  while (at < end) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wireType = key & 7;
    if (wireType === 0) onField(field, 0, varint());
    else if (wireType === 1) at += 8;
    else if (wireType === 5) at += 4;
    else if (wireType === 2) {
      const length = varint();
      if (at + length > end) throw new Error('truncated field');
      onField(field, 2, buf, at, at + length);
      at += length;
    } else throw new Error(`unsupported wire type ${wireType}`);
  }
}

/** Runs `onLeaf(buf, start, end)` for each message at the end of a path of repeated LEN fields. */
function each(buf, start, end, path, onLeaf) {
  const [field, ...rest] = path;
  walk(buf, start, end, (f, wireType, b, s, e) => {
    if (f !== field || wireType !== 2) return;
    if (rest.length === 0) onLeaf(b, s, e);
    else each(b, s, e, rest, onLeaf);
  });
}

function countProtobuf(signal, buf) {
  if (signal === 'traces') {
    // ExportTraceServiceRequest.resource_spans(1) -> ResourceSpans.scope_spans(2) -> ScopeSpans.spans(2)
    each(buf, 0, buf.length, [1, 2, 2], (b, s, e) => {
      let kind = 0;
      walk(b, s, e, (field, wireType, value) => {
        if (field === 6 && wireType === 0) kind = value;
      });
      countSpan(kind);
    });
  } else if (signal === 'logs') {
    // ExportLogsServiceRequest.resource_logs(1) -> ResourceLogs.scope_logs(2) -> ScopeLogs.log_records(2)
    each(buf, 0, buf.length, [1, 2, 2], () => stats.logs++);
  }
}

function countJson(signal, buf) {
  const message = JSON.parse(buf.toString('utf8'));
  if (signal === 'traces') {
    for (const resource of message.resourceSpans ?? []) {
      for (const scope of resource.scopeSpans ?? []) for (const span of scope.spans ?? []) countSpan(Number(span.kind ?? 0));
    }
  } else if (signal === 'logs') {
    for (const resource of message.resourceLogs ?? []) for (const scope of resource.scopeLogs ?? []) stats.logs += (scope.logRecords ?? []).length;
  }
}

function countSpan(kind) {
  stats.spans.total++;
  stats.spans[KIND_NAMES[kind] ?? 'unspecified']++;
}

const SIGNALS = { '/v1/traces': 'traces', '/v1/logs': 'logs', '/v1/metrics': 'metrics' };

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/__stats') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stats));
    return;
  }
  const signal = SIGNALS[req.url.split('?')[0]];
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    if (req.method !== 'POST' || signal === undefined) {
      res.writeHead(404).end();
      return;
    }
    const json = (req.headers['content-type'] ?? '').startsWith('application/json');
    try {
      let body = Buffer.concat(chunks);
      stats.bytes += body.length;
      if (req.headers['content-encoding'] === 'gzip') body = zlib.gunzipSync(body);
      if (json) countJson(signal, body);
      else countProtobuf(signal, body);
      stats.exportRequests++;
      stats.lastExportAt = Date.now();
    } catch (error) {
      stats.rejected++;
      res.writeHead(400, { 'content-type': 'text/plain' }).end(String(error.message));
      return;
    }
    // An empty Export*ServiceResponse: `{}` in JSON, zero bytes in protobuf.
    res.writeHead(200, { 'content-type': json ? 'application/json' : 'application/x-protobuf' }).end(json ? '{}' : '');
  });
});
server.keepAliveTimeout = 65_000;
server.listen(port, '127.0.0.1', () => process.stdout.write(`otlp sink listening on 127.0.0.1:${port}\n`));
process.on('SIGTERM', () => server.close(() => process.exit(0)).closeAllConnections());
