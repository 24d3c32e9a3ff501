/**
 * Exports of one signal open at once are bounded by what a flush sends (otel/sdk.ts exportsInFlight): each open
 * export holds its encoded batch, and the transport's timeout counts silence only, so a collector that reads slowly
 * (or answers a byte at a time) kept them open while the batch processor sent more; the SDK allowed 30.
 */
import { spawn } from 'node:child_process';
import type { ServerResponse } from 'node:http';
import path from 'node:path';
import { exportsInFlight } from '../../otel/sdk';
import { childEnvironment } from '../helpers/process-stack';
import { listen, type TestServer } from '../helpers/servers';
import { waitFor } from '../helpers/wait';
import { compileTelemetryBootstrap } from './instrumented-app';

describe('OTLP exports in flight', () => {
  it('are as many as a flush of the whole queue sends at once, beside the export under way', () => {
    expect(exportsInFlight({})).toBe(2048 / 512 + 1);
    expect(exportsInFlight({ maxQueueSize: 32, maxExportBatchSize: 16 })).toBe(3);
    expect(exportsInFlight({ maxQueueSize: 100, maxExportBatchSize: 30 })).toBe(5);
    // The SDK takes a batch larger than the queue as the queue.
    expect(exportsInFlight({ maxQueueSize: 10, maxExportBatchSize: 512 })).toBe(2);
  });

  describe('to a collector that answers a byte at a time, never finishing', () => {
    let collector: TestServer;
    const dripping: NodeJS.Timeout[] = [];
    let received = 0;
    beforeAll(async () => {
      collector = await listen((req, res) => {
        received++;
        req.resume();
        res.writeHead(200, { 'content-type': 'application/x-protobuf' });
        // A byte every 100 ms: never silent long enough for the transport's timeout, which counts silence only.
        dripping.push(setInterval(() => res.write('\0'), 100));
      });
    });
    afterAll(async () => {
      for (const timer of dripping) clearInterval(timer);
      await collector.close();
    });

    it('ends each export at its deadline, so that its place goes to the next (the limit of one filled for good before)', async () => {
      const otelDir = await compileTelemetryBootstrap();
      // One export at a time; the next is made once the first has settled (a turn later: the limit counts an export
      // until its promise settles, after its callback).
      const script = `
        const { otlpProtoTraceExporter } = require(${JSON.stringify(path.join(otelDir, 'sdk.js'))});
        const exporter = otlpProtoTraceExporter(process.argv[1], 1);
        const next = (i) => exporter.export([], (result) => { console.log(JSON.stringify([i, result.code, result.error && result.error.message])); if (i < 1) setTimeout(() => next(i + 1), 50); });
        next(0);`;
      const child = spawn(process.execPath, ['-e', script, `${collector.url}/v1/traces`], { env: childEnvironment({ OTEL_EXPORTER_OTLP_TIMEOUT: '1000' }) });
      let output = '';
      child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
      const results = () => output.split('\n').filter(Boolean).map((line) => JSON.parse(line) as [number, number, string | null]);
      try {
        await waitFor(() => results().length === 2, 'both exports to settle', 10_000);
        expect(results()).toEqual([
          [0, 1, 'no whole answer within 1000 ms (OTEL_EXPORTER_OTLP_TIMEOUT)'],
          [1, 1, 'no whole answer within 1000 ms (OTEL_EXPORTER_OTLP_TIMEOUT)'],
        ]);
        // Each was sent, the second once the first had given its place up.
        expect(received).toBe(2);
      } finally {
        child.kill();
      }
    });
  });

  // A Node timer takes at most 2^31-1 ms: past it the deadline fired at once, and every export failed at its start.
  it('exports with an OTEL_EXPORTER_OTLP_TIMEOUT longer than a timer can wait', async () => {
    const collector = await listen((req, res) => {
      req.resume();
      req.on('end', () => res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end());
    });
    const otelDir = await compileTelemetryBootstrap();
    const script = `
      const { otlpProtoTraceExporter } = require(${JSON.stringify(path.join(otelDir, 'sdk.js'))});
      otlpProtoTraceExporter(process.argv[1], 1).export([], (result) => { console.log(JSON.stringify([result.code, result.error && result.error.message])); process.exit(0); });`;
    const child = spawn(process.execPath, ['-e', script, `${collector.url}/v1/traces`], { env: childEnvironment({ OTEL_EXPORTER_OTLP_TIMEOUT: '3000000000' }) });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    try {
      await waitFor(() => output.includes('\n'), 'the export to settle', 10_000);
      expect(JSON.parse(output)).toEqual([0, null]);
    } finally {
      child.kill();
      await collector.close();
    }
  });

  describe('to a collector that takes every export and never answers', () => {
    let collector: TestServer;
    const held: ServerResponse[] = [];
    beforeAll(async () => {
      collector = await listen((req, res) => {
        req.resume();
        held.push(res);
      });
    });
    afterAll(() => collector.close());

    it('sends no more than the limit, failing the next exports at once instead of opening more', async () => {
      // The exporter as the SDK built from otel/sdk.ts runs it, in a process of its own (its transport imports `http`
      // dynamically, which jest's module sandbox refuses): five exports at once, each result printed as it settles.
      const otelDir = await compileTelemetryBootstrap();
      const script = `
        const { otlpProtoTraceExporter } = require(${JSON.stringify(path.join(otelDir, 'sdk.js'))});
        const exporter = otlpProtoTraceExporter(process.argv[1], 3);
        for (let i = 0; i < 5; i++) exporter.export([], (result) => console.log(JSON.stringify([i, result.code, result.error && result.error.message])));`;
      const child = spawn(process.execPath, ['-e', script, `${collector.url}/v1/traces`], { env: childEnvironment({ OTEL_EXPORTER_OTLP_TIMEOUT: '60000' }) });
      let output = '';
      child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
      const results = () => output.split('\n').filter(Boolean).map((line) => JSON.parse(line) as [number, number, string | null]);
      try {
        await waitFor(() => held.length === 3 && results().length === 2, 'three exports sent and two refused', 10_000);
        expect(results()).toEqual([
          [3, 1, 'Concurrent export limit reached'],
          [4, 1, 'Concurrent export limit reached'],
        ]);
        // An answer settles its export: the three sent are the first three.
        held.shift()!.end();
        await waitFor(() => results().length === 3, 'the answered export to settle');
        expect(results()[2]).toEqual([0, 0, null]);
      } finally {
        child.kill();
        for (const response of held.splice(0)) response.destroy();
      }
    });
  });
});
