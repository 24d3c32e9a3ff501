import { context, diag, TraceFlags, type Context, type Exception } from '@opentelemetry/api';
import { BindOnceFuture, ExportResultCode, globalErrorHandler, suppressTracing, type ExportResult } from '@opentelemetry/core';
import type { ReadableSpan, Span, SpanProcessor } from '@opentelemetry/sdk-trace';
import { createTraceExportRequestBuilder, type ExportRequestBuilder } from './otlp-protobuf-encoding';

/** A batch of spans as the OTLP/protobuf exporter sends it: the request body, and how many spans it holds. */
export interface EncodedSpans {
  readonly spanCount: number;
  readonly body: Uint8Array;
}

/** What the processor hands batches to: the SDK's OTLP exporter over an encoded batch (otel/sdk.ts). */
export interface EncodedSpanExporter {
  export(batch: EncodedSpans, resultCallback: (result: ExportResult) => void): void;
  shutdown(): Promise<void>;
}

export interface EncodingSpanProcessorOptions {
  exporter: EncodedSpanExporter;
  /** The BatchSpanProcessor's options, with its defaults: 512, 2048, 5000 ms, 30000 ms. */
  maxExportBatchSize?: number;
  maxQueueSize?: number;
  scheduledDelayMillis?: number;
  exportTimeoutMillis?: number;
}

/**
 * The SDK's BatchSpanProcessor (sdk-trace 3.0), with one difference: a span is encoded to OTLP/protobuf when it
 * ends and its batch keeps the bytes, not the span. Kept as objects until their batch of 512 was exported, the
 * gateway's spans lived through a scavenge or two and were promoted to the old generation, which then had to be
 * collected every 1,200-1,500 requests (issue 12; figures in docs/architecture.md, Tracing). Encoded at once, a
 * span dies young with the request that made it.
 * Everything else is the BatchSpanProcessor's: only sampled spans; at most `maxQueueSize` spans waiting, further
 * ones dropped (a warning says how many once there is room again); a batch is exported when `maxExportBatchSize`
 * spans wait or `scheduledDelayMillis` after the first one, one export at a time, each with tracing suppressed and
 * failing after `exportTimeoutMillis`; forceFlush exports everything waiting; shutdown flushes, then shuts the
 * exporter down, and spans ending after it are ignored. The request each batch becomes is byte for byte what the
 * exporter would have encoded from the spans (test/unit/encoding-span-processor.test.ts).
 */
export class EncodingSpanProcessor implements SpanProcessor {
  private readonly exporter: EncodedSpanExporter;
  private readonly maxExportBatchSize: number;
  private readonly maxQueueSize: number;
  private readonly scheduledDelayMillis: number;
  private readonly exportTimeoutMillis: number;
  /** Oldest first; only the last one is being filled, and each before it holds `maxExportBatchSize` spans. */
  private readonly batches: ExportRequestBuilder<ReadableSpan>[] = [];
  /** Spans in `batches`. */
  private queued = 0;
  private droppedSpansCount = 0;
  private isExporting = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly shutdownOnce: BindOnceFuture<void>;

  constructor(options: EncodingSpanProcessorOptions) {
    this.exporter = options.exporter;
    this.maxExportBatchSize = options.maxExportBatchSize ?? 512;
    this.maxQueueSize = options.maxQueueSize ?? 2048;
    this.scheduledDelayMillis = options.scheduledDelayMillis ?? 5000;
    this.exportTimeoutMillis = options.exportTimeoutMillis ?? 30000;
    this.shutdownOnce = new BindOnceFuture(this.flushThenShutdown, this);
    if (this.maxExportBatchSize > this.maxQueueSize) {
      diag.warn('BatchSpanProcessor: maxExportBatchSize must be smaller or equal to maxQueueSize, setting maxExportBatchSize to match maxQueueSize');
      this.maxExportBatchSize = this.maxQueueSize;
    }
  }

  forceFlush(): Promise<void> {
    if (this.shutdownOnce.isCalled) return this.shutdownOnce.promise;
    return this.flushAll();
  }

  onStart(_span: Span, _parentContext: Context): void {}

  onEnd(span: ReadableSpan): void {
    if (this.shutdownOnce.isCalled) return;
    if ((span.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return;
    if (this.queued >= this.maxQueueSize) {
      if (this.droppedSpansCount === 0) diag.debug('maxQueueSize reached, dropping spans');
      this.droppedSpansCount++;
      return;
    }
    if (this.droppedSpansCount > 0) {
      diag.warn(`Dropped ${this.droppedSpansCount} spans because maxQueueSize reached`);
      this.droppedSpansCount = 0;
    }
    let batch = this.batches.at(-1);
    if (batch === undefined || batch.count >= this.maxExportBatchSize) this.batches.push((batch = createTraceExportRequestBuilder()));
    try {
      batch.add(span);
    } catch (error) {
      // Where the BatchSpanProcessor would have failed the whole export later, this span alone is lost, and the
      // request that ended it never sees the error.
      globalErrorHandler(error as Exception);
      return;
    }
    this.queued++;
    this.maybeStartTimer();
  }

  shutdown(): Promise<void> {
    return this.shutdownOnce.call();
  }

  private async flushThenShutdown(): Promise<void> {
    await this.flushAll();
    await this.exporter.shutdown();
  }

  /** Every waiting batch, exported (forceFlush and shutdown only; otherwise one batch at a time). */
  private async flushAll(): Promise<void> {
    const exports: Promise<void>[] = [];
    for (let count = this.batches.length; count > 0; count--) exports.push(this.flushOneBatch());
    await Promise.all(exports);
  }

  private flushOneBatch(): Promise<void> {
    this.clearTimer();
    const batch = this.batches.shift();
    if (batch === undefined || batch.count === 0) return Promise.resolve();
    this.queued -= batch.count;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('Timeout')), this.exportTimeoutMillis);
      context.with(suppressTracing(context.active()), () => {
        const spanCount = batch.count;
        const send = () => {
          this.exporter.export({ spanCount, body: batch.take() }, (result) => {
            clearTimeout(timer);
            if (result.code === ExportResultCode.SUCCESS) resolve();
            else reject(result.error ?? new Error('BatchSpanProcessor: span export failed'));
          });
        };
        // The resource is encoded with the batch: a detector still settling is waited for, as the SDK does.
        const pending = [...batch.resources()].flatMap((resource) => (resource.asyncAttributesPending && resource.waitForAsyncAttributes ? [resource.waitForAsyncAttributes()] : []));
        if (pending.length === 0) send();
        else
          Promise.all(pending).then(send, (error: unknown) => {
            globalErrorHandler(error as Exception);
            reject(error);
          });
      });
    });
  }

  private maybeStartTimer(): void {
    if (this.isExporting) return;
    const flush = () => {
      this.isExporting = true;
      this.flushOneBatch()
        .finally(() => {
          this.isExporting = false;
          if (this.queued > 0) {
            this.clearTimer();
            this.maybeStartTimer();
          }
        })
        .catch((error: unknown) => {
          this.isExporting = false;
          globalErrorHandler(error as Exception);
        });
    };
    if (this.queued >= this.maxExportBatchSize) return flush();
    if (this.timer !== undefined) return;
    this.timer = setTimeout(flush, this.scheduledDelayMillis);
    this.timer.unref();
  }

  private clearTimer(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }
}
