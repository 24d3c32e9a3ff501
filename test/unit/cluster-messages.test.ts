import cluster, { type Worker } from 'node:cluster';
import { Counter, Histogram, Registry, type OpenMetricsContentType } from 'prom-client';
import { isPromClientMessage, listenClusterMetrics, type MetricsListener } from '../../src/metrics';
import { workerMessageListener } from '../../src/workers';
import { memoryLogger } from '../helpers/servers';
import { PROMETHEUS_ACCEPT } from '../helpers/openmetrics';

/**
 * What a worker sends the cluster primary must not end it (docs/architecture.md: "a broken worker cannot end the
 * primary"): an exception in a cluster 'message' listener is uncaught, and ends the primary and every worker with it.
 * `{ toString: 1 }` is what JSON can carry that String() throws on ("Cannot convert object to primitive value").
 */
const unprintable = { toString: 1 };

describe("the primary's listener for a worker's messages", () => {
  it.each([
    { desc: 'a type that String() throws on', raw: { type: unprintable }, promClient: false },
    { desc: 'a type that is no string', raw: { type: 7 }, promClient: false },
    { desc: 'null', raw: null, promClient: false },
    { desc: "prom-client's answer", raw: { type: 'prom-client:getMetricsRes', requestId: 1 }, promClient: true },
  ])('tells prom-client messages apart from $desc without throwing', ({ raw, promClient }) => {
    expect(isPromClientMessage(raw)).toBe(promClient);
  });

  it('ignores a message whose type String() throws on, and does not throw', () => {
    const act = jest.fn();
    const ignored = jest.fn();
    expect(() => workerMessageListener(act, ignored)({ type: unprintable })).not.toThrow();
    expect(act).not.toHaveBeenCalled();
    expect(ignored).toHaveBeenCalledWith({ type: unprintable });
  });

  it('passes a well-formed message on, and leaves prom-client messages to src/metrics.ts', () => {
    const act = jest.fn();
    const ignored = jest.fn();
    const listener = workerMessageListener(act, ignored);
    listener({ gateway: 'pong', id: 3 });
    listener({ type: 'prom-client:getMetricsRes', requestId: 1, metrics: [] });
    expect(act).toHaveBeenCalledWith({ gateway: 'pong', id: 3 });
    expect(ignored).not.toHaveBeenCalled();
  });

  it('reports, not throws, what acting on a message threw (a bug of the primary that a message sets off)', () => {
    const failure = new TypeError('no such slot');
    const ignored = jest.fn();
    const listener = workerMessageListener(() => {
      throw failure;
    }, ignored);
    expect(() => listener({ gateway: 'hello' })).not.toThrow();
    expect(ignored).toHaveBeenCalledWith({ gateway: 'hello' }, failure);
  });
});

/** A serving worker as the scrape collector sees one; the test answers each scrape request for it. */
function fakeWorker(id: number) {
  let requested: (requestId: number) => void = () => undefined;
  const worker = {
    id,
    isConnected: () => true,
    isDead: () => false,
    send: (message: { requestId: number }) => void requested(message.requestId),
  } as unknown as Worker;
  return {
    worker,
    /** Resolves with the id of the next scrape request the worker is sent. */
    nextRequest: () => new Promise<number>((resolve) => (requested = resolve)),
  };
}

describe("the primary's scrape of its workers (listenClusterMetrics)", () => {
  const timeouts = { headersMs: 5000, requestMs: 10_000, keepAliveMs: 5000 };
  const { worker, nextRequest } = fakeWorker(9001);
  const { logger } = memoryLogger('gateway');
  let listener: MetricsListener;
  let clusterListeners: { message: Function[]; exit: Function[] };

  beforeAll(async () => {
    clusterListeners = { message: cluster.listeners('message'), exit: cluster.listeners('exit') };
    listener = await listenClusterMetrics({ port: 0, host: '127.0.0.1', timeouts, logger, servingWorkers: () => [worker] });
  });
  afterAll(async () => {
    await listener.close();
    // The collector's cluster listeners live as long as the process (the primary's); here, no longer than the tests.
    for (const event of ['message', 'exit'] as const) {
      for (const added of cluster.listeners(event)) if (!clusterListeners[event].includes(added)) cluster.off(event, added as (...args: unknown[]) => void);
    }
  });

  /**
   * One scrape, in `accept`'s format, that the worker answers with `answer` (a message's fields besides type and
   * requestId). The collector's listener runs in the emit: what it throws there would end a primary.
   */
  async function scrape(answer: Record<string, unknown>, accept?: string): Promise<{ status: number; text: string }> {
    const asked = nextRequest();
    const response = fetch(`${listener.url}/metrics`, { headers: accept ? { accept } : {}, signal: AbortSignal.timeout(5000) });
    const requestId = await asked;
    expect(() => cluster.emit('message', worker, { type: 'prom-client:getMetricsRes', requestId, ...answer })).not.toThrow();
    const answered = await response;
    return { status: answered.status, text: await answered.text() };
  }

  type Sample = { labels?: Record<string, unknown>; metricName?: unknown; exemplar?: { labelSet: unknown; timestamp?: unknown } | null };
  type Answer = { name: string; values: Sample[] }[][];

  /** A real registry's answer: a counter of 3, and a histogram bucket with an exemplar. */
  async function goodAnswer(): Promise<Answer> {
    const registry = new Registry<OpenMetricsContentType>();
    registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    new Counter({ name: 'answers_total', help: 'h', labelNames: ['route'], registers: [registry] }).inc({ route: 'a' }, 3);
    new Histogram({ name: 'answer_seconds', help: 'h', buckets: [1], registers: [registry], enableExemplars: true }).observe({ value: 0.5, exemplarLabels: { trace_id: 'abc' } });
    return JSON.parse(JSON.stringify([await registry.getMetricsAsJSON()])) as Answer;
  }
  const counted = (answer: Answer) => answer[0]!.find((family) => family.name === 'answers_total')!.values[0]!;
  const exemplarOf = (answer: Answer) => answer[0]!.find((family) => family.name === 'answer_seconds')!.values.find((sample) => sample.exemplar)!.exemplar!;

  it('survives an error answer that String() throws on, failing only that scrape', async () => {
    expect((await scrape({ error: unprintable })).status).toBe(500);
  });

  it('survives an answer whose family type String() throws on', async () => {
    expect((await scrape({ metrics: [[{ name: 'a', help: 'h', type: unprintable, aggregator: 'sum', values: [] }]] })).status).toBe(200);
  });

  it.each([
    { desc: 'a label value that is an object', spoil: (answer: Answer) => void (counted(answer).labels!.route = unprintable) },
    { desc: 'a sample without labels', spoil: (answer: Answer) => void delete counted(answer).labels },
    { desc: 'a sample name that is an object', spoil: (answer: Answer) => void (counted(answer).metricName = unprintable) },
    { desc: 'an exemplar whose timestamp is an object', spoil: (answer: Answer) => void (exemplarOf(answer).timestamp = unprintable) },
    { desc: 'an exemplar whose label value is an object', spoil: (answer: Answer) => void (exemplarOf(answer).labelSet = { trace_id: unprintable }) },
  ])("keeps the worker's last good answer over one with $desc: later scrapes still answer", async ({ spoil }) => {
    const good = await goodAnswer();
    expect((await scrape({ metrics: good })).status).toBe(200);
    const bad = await goodAnswer();
    spoil(bad);
    // Kept as the worker's last, it failed this scrape and every later one with 500 (the exemplars: an OpenMetrics
    // scrape rejected unhandled, which ends a primary) until the worker answered well again: a stuck one never does.
    for (const accept of [undefined, PROMETHEUS_ACCEPT]) {
      const { status, text } = await scrape({ metrics: bad }, accept);
      expect(status).toBe(200);
      expect(text).toMatch(/^answers_total\{route="a"\} 3$/m);
      if (accept) expect(text).toContain('# {trace_id="abc"} 0.5');
    }
  });
});
