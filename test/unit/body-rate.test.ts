import http from 'node:http';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { readWithinRate } from '../../src/body-rate';

/**
 * readWithinRate counts a body's bytes as it arrives without taking any from its reader. Over HTTP/2 a counter on the
 * stream that listened before Node's compatibility request did set the stream flowing into the counter alone: a
 * reader that starts after an `await` (login's parser does) read nothing, whenever the body had arrived by then.
 */

const RATE = { minBytesPerSecond: 1, graceMs: 60_000 };
const BODY = JSON.stringify({ email: 'bob@example.com', password: 'builder', padding: 'x'.repeat(50_000) });

/** Resolves with the whole body, read from `request` once `delayMs` has passed (the body has arrived by then). */
function readLater(request: http.IncomingMessage | http2.Http2ServerRequest, delayMs: number): () => Promise<string> {
  return async () => {
    await new Promise((resolve) => setTimeout(resolve, delayMs));
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString();
  };
}

type Handler = (request: http.IncomingMessage | http2.Http2ServerRequest, response: http.ServerResponse | http2.Http2ServerResponse) => void;

const echoWithinRate: Handler = (request, response) => {
  readWithinRate(request, RATE, readLater(request, 100)).then(
    (text) => response.end(String(text.length)),
    (error: Error) => response.end(`error: ${error.message}`),
  );
};

async function overHttp2(handler: Handler, withLength: boolean): Promise<string> {
  const server = http2.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const session = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  try {
    return await new Promise<string>((resolve, reject) => {
      const stream = session.request({ ':method': 'POST', ':path': '/', ...(withLength && { 'content-length': String(Buffer.byteLength(BODY)) }) });
      let text = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => (text += chunk));
      stream.on('end', () => resolve(text));
      stream.on('error', reject);
      stream.end(BODY);
    });
  } finally {
    session.close();
    await new Promise((resolve) => server.close(resolve));
  }
}

async function overHttp1(handler: Handler): Promise<string> {
  const server = http.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const reply = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`, { method: 'POST', body: BODY });
    return await reply.text();
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
}

describe('readWithinRate', () => {
  it.each([
    ['with a content-length', true],
    ['without one', false],
  ])('leaves an HTTP/2 body whole for a reader that starts after it arrived, %s', async (_desc, withLength) => {
    expect(await overHttp2(echoWithinRate, withLength)).toBe(String(BODY.length));
  });

  it('leaves an HTTP/1.1 body whole for a reader that starts after it arrived', async () => {
    expect(await overHttp1(echoWithinRate)).toBe(String(BODY.length));
  });

  it('still refuses an HTTP/2 body that stops short of the rate', async () => {
    // A rate the five bytes sent never meet, judged after 200 ms; the reader never finishes, so only the rate check answers.
    const handler: Handler = (request, response) => {
      readWithinRate(request, { minBytesPerSecond: BODY.length, graceMs: 200 }, () => new Promise<string>(() => {})).then(
        () => response.end('read'),
        (error: Error) => response.end(`error: ${error.message}`),
      );
    };
    const server = http2.createServer(handler);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const session = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    try {
      const text = await new Promise<string>((resolve, reject) => {
        const stream = session.request({ ':method': 'POST', ':path': '/' }, { endStream: false });
        let answer = '';
        stream.setEncoding('utf8');
        stream.on('data', (chunk: string) => (answer += chunk));
        stream.on('end', () => resolve(answer));
        stream.on('error', reject);
        stream.write('{"a":');
      });
      expect(text).toMatch(/^error: The request body arrived slower than/);
    } finally {
      session.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
