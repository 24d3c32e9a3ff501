import { negotiateCoding, negotiateExposition, renderBound } from '../../src/metrics-exposition';
import { PROMETHEUS_ACCEPT } from '../helpers/openmetrics';

/** The scrape's content negotiation (RFC 9110 12.5.1) and OpenMetrics' canonical `le` rendering, case by case. */
describe('negotiateExposition', () => {
  it.each([
    { desc: 'no Accept: the text format, as Prometheus client libraries answer', accept: undefined, format: 'text' },
    { desc: 'an empty Accept, read as none', accept: ' ', format: 'text' },
    { desc: 'anything', accept: '*/*', format: 'text' },
    { desc: 'the text format 0.0.4 only (promtool, older scrapers)', accept: 'text/plain;version=0.0.4', format: 'text' },
    { desc: 'text/plain without a version', accept: 'text/plain', format: 'text' },
    { desc: 'text/*', accept: 'text/*', format: 'text' },
    { desc: 'the shipped Prometheus job', accept: PROMETHEUS_ACCEPT, format: 'openmetrics' },
    { desc: 'Prometheus 2 (OpenMetrics 1.0.0 first)', accept: 'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1', format: 'openmetrics' },
    // The range naming the version sent gives OpenMetrics its weight, whichever is listed first (it took the first).
    { desc: 'OpenMetrics 0.0.1 at a low weight listed before 1.0.0 at the highest', accept: 'application/openmetrics-text;version=0.0.1;q=0.1, text/plain;version=0.0.4;q=0.5, application/openmetrics-text;version=1.0.0', format: 'openmetrics' },
    { desc: 'OpenMetrics 1.0.0 at a low weight listed after 0.0.1 at the highest', accept: 'application/openmetrics-text;version=0.0.1, text/plain;version=0.0.4;q=0.5, application/openmetrics-text;version=1.0.0;q=0.1', format: 'text' },
    { desc: 'OpenMetrics draft 0.0.1, the same parser in Prometheus', accept: 'application/openmetrics-text; version=0.0.1,text/plain;version=0.0.4;q=0.5,*/*;q=0.1', format: 'openmetrics' },
    { desc: 'OpenMetrics without a version', accept: 'application/openmetrics-text', format: 'openmetrics' },
    { desc: 'application/*', accept: 'application/*', format: 'openmetrics' },
    { desc: 'a quoted version, names in capitals', accept: 'Application/OpenMetrics-Text; Version="1.0.0"', format: 'openmetrics' },
    { desc: 'both named at the same weight', accept: 'text/plain;version=0.0.4, application/openmetrics-text;version=1.0.0', format: 'openmetrics' },
    { desc: 'OpenMetrics only through a wildcard, text named at the same weight', accept: 'text/plain, */*', format: 'text' },
    { desc: 'the text format weighted higher', accept: 'application/openmetrics-text;q=0.3, text/plain;q=0.5', format: 'text' },
    { desc: 'text refused, anything else welcome', accept: 'text/plain;q=0, */*', format: 'openmetrics' },
    { desc: 'the more specific range decides: text/plain;version=0.0.4 refused despite text/*, 1.0.0 still welcome', accept: 'text/*, text/plain;version=0.0.4;q=0', format: 'text-1.0.0' },
    { desc: 'the more specific ranges decide: both text versions refused despite text/*', accept: 'text/*, text/plain;version=0.0.4;q=0, text/plain;version=1.0.0;q=0', format: undefined },
    { desc: 'the text format 1.0.0 only (Prometheus 3, scrape_protocols: [PrometheusText1.0.0], without its */*)', accept: 'text/plain;version=1.0.0;escaping=allow-utf-8', format: 'text-1.0.0' },
    { desc: 'the text format 1.0.0 before anything else', accept: 'text/plain;version=1.0.0;escaping=underscores;q=0.5,*/*;q=0.1', format: 'text-1.0.0' },
    { desc: 'Prometheus 3 default protocols (OpenMetrics first)', accept: 'application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1', format: 'openmetrics' },
    { desc: 'both text versions at one weight: 0.0.4', accept: 'text/plain;version=1.0.0, text/plain;version=0.0.4', format: 'text' },
    { desc: 'the text format 1.0.0 weighted above 0.0.4', accept: 'text/plain;version=0.0.4;q=0.4, text/plain;version=1.0.0;q=0.5', format: 'text-1.0.0' },
    { desc: 'a version not offered (OpenMetrics 2.0.0)', accept: 'application/openmetrics-text;version=2.0.0', format: undefined },
    { desc: 'a version not offered, the text format as fallback', accept: 'application/openmetrics-text;version=2.0.0, text/plain;q=0.1', format: 'text' },
    { desc: 'another charset', accept: 'text/plain;charset=iso-8859-1', format: undefined },
    { desc: 'neither type', accept: 'application/json', format: undefined },
    { desc: 'everything refused', accept: '*/*;q=0', format: undefined },
    { desc: 'a malformed weight skips its range', accept: 'application/openmetrics-text;q=2, text/plain', format: 'text' },
    { desc: 'a comma inside a quoted parameter', accept: 'application/openmetrics-text;foo="a,b";q=0.9, text/plain;q=0.1', format: 'openmetrics' },
    { desc: 'nothing that parses, read as no Accept', accept: ';,/,=;', format: 'text' },
  ])('$desc: $format', ({ accept, format }) => {
    expect(negotiateExposition(accept)).toBe(format);
  });
});

describe('renderBound', () => {
  // OpenMetrics 1.0, "Considerations: Canonical Numbers": the examples it lists, as Go's %g with ".0" appended.
  it.each([
    [0, '0.0'],
    [0.001, '0.001'],
    [0.002, '0.002'],
    [0.01, '0.01'],
    [0.1, '0.1'],
    [0.9, '0.9'],
    [0.95, '0.95'],
    [0.99, '0.99'],
    [0.999, '0.999'],
    [1, '1.0'],
    [1.7, '1.7'],
    [10, '10.0'],
    [1e-10, '1e-10'],
    [1e-9, '1e-09'],
    [1e-5, '1e-05'],
    [0.0001, '0.0001'],
    [100000, '100000.0'],
    [1e6, '1e+06'],
    [1e10, '1e+10'],
    [Infinity, '+Inf'],
    ['+Inf', '+Inf'],
  ])('OpenMetrics writes %p as %p', (value, expected) => {
    expect(renderBound(value, true)).toBe(expected);
  });

  it.each([
    [1, '1'],
    [10, '10'],
    [0.005, '0.005'],
    [2.5, '2.5'],
    [1e6, '1e+06'],
    ['+Inf', '+Inf'],
  ])('the text format writes %p as %p (Go %g)', (value, expected) => {
    expect(renderBound(value, false)).toBe(expected);
  });
});

/** The scrape's content coding (RFC 9110 12.5.3): gzip when asked for, the body as it is otherwise. */
describe('negotiateCoding', () => {
  it.each([
    { desc: 'no Accept-Encoding', acceptEncoding: undefined, coding: 'identity' },
    { desc: 'an empty one: no coding wanted', acceptEncoding: '', coding: 'identity' },
    { desc: "Prometheus's", acceptEncoding: 'gzip', coding: 'gzip' },
    { desc: 'a browser’s', acceptEncoding: 'gzip, deflate, br, zstd', coding: 'gzip' },
    { desc: 'the x-gzip alias, any case', acceptEncoding: 'X-GZIP', coding: 'gzip' },
    { desc: 'gzip refused', acceptEncoding: 'gzip;q=0', coding: 'identity' },
    { desc: 'gzip refused with spaces and an upper-case Q', acceptEncoding: 'gzip ; Q=0', coding: 'identity' },
    { desc: 'anything', acceptEncoding: '*', coding: 'gzip' },
    { desc: 'anything but gzip', acceptEncoding: '*, gzip;q=0', coding: 'identity' },
    { desc: 'codings not offered only', acceptEncoding: 'br, deflate', coding: 'identity' },
    { desc: 'identity preferred', acceptEncoding: 'gzip;q=0.5, identity', coding: 'identity' },
    { desc: 'gzip preferred over identity', acceptEncoding: 'gzip, identity;q=0.5', coding: 'gzip' },
    { desc: 'one weight: gzip', acceptEncoding: 'identity;q=0.5, gzip;q=0.5', coding: 'gzip' },
    { desc: 'identity refused, gzip through the wildcard', acceptEncoding: 'identity;q=0, *;q=0.1', coding: 'gzip' },
    { desc: 'everything refused: the body as it is', acceptEncoding: '*;q=0', coding: 'identity' },
    { desc: 'a weight that does not parse: that element skipped', acceptEncoding: 'gzip;q=2', coding: 'identity' },
    { desc: 'a weight with four decimals: skipped', acceptEncoding: 'gzip;q=0.0001', coding: 'identity' },
  ])('$desc ($acceptEncoding) -> $coding', ({ acceptEncoding, coding }) => {
    expect(negotiateCoding(acceptEncoding)).toBe(coding);
  });
});
