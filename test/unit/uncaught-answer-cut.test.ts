import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import Koa from 'koa';
import { installUncaughtAnswerCut } from '../../src/response-closed';

/**
 * Koa's last resort (`ctx.onerror`) removes every header and writes a plain 500; Node's HTTP/2 response keeps a `date`
 * through removeHeader, so an answer Node refused for its Date was refused again, and the throw out of onerror ended the
 * gateway's process. A Date of two values (as two writers set it) is such an answer.
 */
describe('an answer Koa cannot write, even as its own 500', () => {
  let server: http2.Http2Server;
  let reported: unknown[];
  let url: string;
  let last: Koa.Context | undefined;

  beforeAll(async () => {
    const app = new Koa();
    installUncaughtAnswerCut(app.context);
    reported = [];
    app.on('error', (error: unknown) => reported.push(error));
    app.use((ctx) => {
      last = ctx;
      if (ctx.path === '/two-dates') ctx.res.setHeader('date', ['Sun, 06 Dec 2026 19:00:00 GMT', 'Sun, 06 Dec 2026 19:00:01 GMT']);
      ctx.body = 'ok';
    });
    server = http2.createServer(app.callback());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => server.close(resolve)));

  function request(session: http2.ClientHttp2Session, path: string): Promise<{ status?: number; rstCode?: number } | 'no end'> {
    return new Promise((resolve) => {
      const stream = session.request({ ':path': path });
      let status: number | undefined;
      // Bounded: without the cut nothing ends the stream.
      const timer = setTimeout(() => resolve('no end'), 3000);
      stream.on('response', (headers) => (status = Number(headers[':status'])));
      stream.on('error', () => undefined);
      stream.resume();
      stream.on('close', () => (clearTimeout(timer), resolve({ status, rstCode: stream.rstCode })));
    });
  }

  it('is cut (the stream reset) and reported, and the server answers the next request', async () => {
    const session = http2.connect(url);
    session.on('error', () => undefined);
    try {
      expect(await request(session, '/two-dates')).toEqual({ status: undefined, rstCode: http2.constants.NGHTTP2_INTERNAL_ERROR });
      // The gateway's failure, as the access line, the span and the metric read it: not a client that left.
      expect(last?.state.errorCode).toBe('internal');
      // Koa's report of the first failure, then the cut's of its own answer's (the reset stream may report as well).
      expect(reported.map((error) => (error as NodeJS.ErrnoException).code).slice(0, 2)).toEqual(['ERR_HTTP2_HEADER_SINGLE_VALUE', 'ERR_HTTP2_HEADER_SINGLE_VALUE']);
      expect(await request(session, '/other')).toEqual({ status: 200, rstCode: http2.constants.NGHTTP2_NO_ERROR });
    } finally {
      session.destroy();
    }
  });
});
