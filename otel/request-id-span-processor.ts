import { propagation, type Context } from '@opentelemetry/api';
import type { Span, SpanProcessor } from '@opentelemetry/sdk-trace';
import { ATTR, BAGGAGE_REQUEST_ID } from './wire-names';

/**
 * Copies the request id from W3C baggage (`request.id`) onto every span as the `request.id` attribute, so a
 * Jaeger tag search for one id finds the request's spans in every service. Registered before the exporting
 * processor. The span the gateway starts before it sets the baggage has to set the attribute itself.
 */
export class RequestIdSpanProcessor implements SpanProcessor {
  onStart(span: Span, parentContext: Context): void {
    const requestId = propagation.getBaggage(parentContext)?.getEntry(BAGGAGE_REQUEST_ID)?.value;
    if (requestId !== undefined && requestId !== '') span.setAttribute(ATTR.requestId, requestId);
  }

  onEnd(): void {}

  forceFlush(): Promise<void> {
    return Promise.resolve();
  }

  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}
