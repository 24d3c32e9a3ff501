import { metrics, type Attributes } from '@opentelemetry/api';
import { ATTR_ERROR_TYPE, ATTR_HTTP_REQUEST_METHOD, ATTR_HTTP_RESPONSE_STATUS_CODE, ATTR_URL_SCHEME, METRIC_HTTP_SERVER_REQUEST_DURATION } from '@opentelemetry/semantic-conventions';
import { recordedMethod } from '../../otel/http-method';
import type { RejectedRequest } from '../../otel/lifecycle';

/** The bucket bounds instrumentation-http gives `http.server.request.duration` (the conventions' advice), s. */
const REQUEST_DURATION_BUCKETS_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];

/**
 * Records a request Node's HTTP/1 parser refused before the app (runServer's `onRejected`: a malformed head's 400,
 * 408, 431, a CONNECT's 405) in `http.server.request.duration`, as the gateway counts its own
 * (src/middleware/request-metrics.ts rejectedRequestMetrics). A service's request durations come from
 * instrumentation-http, which sees only the requests its `request` listener gets: these were in its span and
 * access line (runServer records them) but in no metric, so a peer sending garbage was invisible on the dashboard.
 * Same name, unit, buckets and attribute keys as the instrumentation's, under the service's own scope; the method
 * `_OTHER` when it never parsed (or is not one the conventions know), never what the client sent; the duration
 * unknown (0), as the gateway records it. No-op while telemetry is off.
 */
export function createRejectedRequestDuration(serviceName: string): (rejected: RejectedRequest) => void {
  const duration = metrics.getMeter(serviceName).createHistogram(METRIC_HTTP_SERVER_REQUEST_DURATION, {
    description: 'Duration of HTTP server requests.',
    unit: 's',
    advice: { explicitBucketBoundaries: REQUEST_DURATION_BUCKETS_SECONDS },
  });
  return (rejected) => {
    const attributes: Attributes = { [ATTR_HTTP_REQUEST_METHOD]: recordedMethod(rejected.method), [ATTR_URL_SCHEME]: rejected.urlScheme, [ATTR_HTTP_RESPONSE_STATUS_CODE]: rejected.status };
    // A 5xx (the 501 to a method the parser does not know) is the server's error; a 4xx the client's (semconv).
    if (rejected.status >= 500) attributes[ATTR_ERROR_TYPE] = String(rejected.status);
    duration.record(0, attributes);
  };
}
