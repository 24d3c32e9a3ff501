import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT } from '../../otel/attribute-values';
import { HEADER } from '../../otel/wire-names';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver';
import { exitOf, startProcess, type RunningProcess } from '../helpers/process-stack';
import { listen, type TestServer } from '../helpers/servers';
import { shippedConfigFile, TEST_JWT_SECRET } from '../helpers/test-config';

/**
 * A client chooses how long the URL, the query and the User-Agent are that every SERVER span, CLIENT span and
 * access-log record of the gateway carries, up to the header limit: with the export queues full behind a slow
 * collector, records of that size held hundreds of MiB. Unless OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT says otherwise,
 * each value is cut to DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT characters in what is exported, and only there.
 */
const LONG = 4_500;
const FAST_EXPORT = { OTEL_BSP_SCHEDULE_DELAY: '50', OTEL_BLRP_SCHEDULE_DELAY: '50', OTEL_TRACES_SAMPLER: 'always_on', OTEL_METRICS_EXPORTER: 'none' };

describe.each<{ desc: string; env: Record<string, string>; kept: number }>([
  { desc: 'by default', env: {}, kept: DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT },
  { desc: 'with OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT=Infinity', env: { OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: 'Infinity' }, kept: Infinity },
  // No limit of zero length: read as unset, as for log records (spans took it as none, and kept 20,000-character paths).
  { desc: 'with OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT=0', env: { OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: '0' }, kept: DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT },
])('the gateway’s exported attribute values $desc', ({ env, kept }) => {
  let receiver: OtlpReceiver;
  let upstream: TestServer;
  let gateway: RunningProcess;
  const targets: string[] = [];

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    upstream = await listen((req, res) => {
      targets.push(req.url ?? '');
      res.end('ok');
    });
    const directory = mkdtempSync(path.join(os.tmpdir(), 'gateway-attribute-bound-'));
    const configFile = path.join(directory, 'gateway.config.json');
    const shipped = shippedConfigFile();
    writeFileSync(configFile, JSON.stringify({ ...shipped, routes: [...(shipped.routes as unknown[]), { name: 'open', prefix: '/open', service: 'users', upstreamPath: '', auth: 'public' }] }));
    gateway = await startProcess('gateway', 'src/main.js', {
      GATEWAY_CONFIG: configFile,
      JWT_SECRET: TEST_JWT_SECRET,
      USER_SERVICE_URL: upstream.url,
      ORDER_SERVICE_URL: upstream.url,
      NOTIF_SERVICE_URL: upstream.url,
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      ...FAST_EXPORT,
      ...env,
    });
  }, 30_000);
  afterAll(async () => {
    gateway?.child.kill('SIGKILL');
    if (gateway) await exitOf(gateway.child);
    await upstream?.close();
    await receiver?.close();
  });

  const isAccessRecord = (requestId: string) => (attributes: Record<string, unknown>) => attributes.request_id === requestId && typeof attributes.url === 'string';
  const cut = (value: string) => value.slice(0, kept);

  it('cuts the query and User-Agent of spans and log records to the limit, and forwards the request whole', async () => {
    const pathPart = `/open/${'p'.repeat(1_500)}`;
    const query = `q=${'v'.repeat(LONG)}`;
    const userAgent = `agent-${'u'.repeat(LONG)}`;
    const reply = await fetch(`${gateway.url}${pathPart}?${query}`, { headers: { 'user-agent': userAgent } });
    expect(reply.status).toBe(200);
    const requestId = reply.headers.get(HEADER.requestId)!;
    // The service gets what the client sent.
    expect(targets).toContain(`/${'p'.repeat(1_500)}?${query}`);

    const { spans, logs } = await receiver.waitFor(
      ({ spans, logs }) => spans.some((span) => span.kind === 'SERVER' && span.traceId === requestId) && spans.some((span) => span.kind === 'CLIENT' && span.traceId === requestId) && logs.some((log) => isAccessRecord(requestId)(log.attributes)),
      15_000,
    );
    const server = spans.find((span) => span.kind === 'SERVER' && span.traceId === requestId)!;
    expect([server.attributes['url.path'], server.attributes['url.query'], server.attributes['user_agent.original']]).toEqual([pathPart, cut(query), cut(userAgent)]);
    const client = spans.find((span) => span.kind === 'CLIENT' && span.traceId === requestId)!;
    expect(client.attributes['url.full']).toBe(cut(`${upstream.url}/${'p'.repeat(1_500)}?${query}`));
    expect(logs.find((log) => isAccessRecord(requestId)(log.attributes))!.attributes.url).toBe(cut(`${pathPart}?${query}`));
    // The line on stdout is not the export's: it keeps the whole URL.
    expect(gateway.lines.find((line) => line.request_id === requestId && typeof line.url === 'string')?.url).toBe(`${pathPart}?${query}`);
  });

  // Recorded before the path's own bound (2,048 characters) refuses it.
  it('cuts the path of a request refused as too long (414)', async () => {
    const pathPart = `/open/${'p'.repeat(LONG)}`;
    const reply = await fetch(`${gateway.url}${pathPart}`);
    expect(reply.status).toBe(414);
    const requestId = reply.headers.get(HEADER.requestId)!;
    const { spans, logs } = await receiver.waitFor(
      ({ spans, logs }) => spans.some((span) => span.kind === 'SERVER' && span.traceId === requestId) && logs.some((log) => isAccessRecord(requestId)(log.attributes)),
      15_000,
    );
    expect(spans.find((span) => span.kind === 'SERVER' && span.traceId === requestId)!.attributes['url.path']).toBe(cut(pathPart));
    expect(logs.find((log) => isAccessRecord(requestId)(log.attributes))!.attributes.url).toBe(cut(pathPart));
  });
});
