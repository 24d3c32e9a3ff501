import { workerWaitMs } from '../../src/metrics';

/**
 * How long a cluster scrape waits for its workers, from the timeout Prometheus sends with every scrape
 * (`X-Prometheus-Scrape-Timeout-Seconds`): a fixed 2 s outlived a shorter scrape timeout, and a stuck worker
 * then failed every scrape of the cluster.
 */
describe('workerWaitMs', () => {
  it.each([
    { desc: 'no header: the default bound', header: undefined, waitMs: 2000 },
    { desc: "Prometheus's default 10 s: the bound, not longer", header: '10', waitMs: 2000 },
    { desc: 'a timeout far over the bound', header: '3600', waitMs: 2000 },
    { desc: '2 s: a tenth kept for the answer', header: '2', waitMs: 1750 },
    { desc: '1 s: 250 ms kept for the answer', header: '1', waitMs: 750 },
    { desc: 'a fraction of a second', header: '0.5', waitMs: 250 },
    { desc: 'a timeout shorter than the margin: no wait at all', header: '0.1', waitMs: 0 },
    { desc: 'zero, ignored', header: '0', waitMs: 2000 },
    { desc: 'negative, ignored', header: '-1', waitMs: 2000 },
    { desc: 'not a number, ignored', header: 'soon', waitMs: 2000 },
    { desc: 'empty, ignored', header: '', waitMs: 2000 },
    { desc: 'Infinity, ignored', header: 'Infinity', waitMs: 2000 },
    { desc: 'sent twice, ignored', header: ['1', '1'], waitMs: 2000 },
  ])('$desc ($header) -> $waitMs ms', ({ header, waitMs }) => {
    expect(workerWaitMs(header)).toBe(waitMs);
  });
});
