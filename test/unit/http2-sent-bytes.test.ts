import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { countSentBytes } from '../../src/http2-sent-bytes';

/**
 * countSentBytes hands an HTTP/2 answer on in pieces of at most 16 KiB. A piece of an answer given as text was written
 * with the text's encoding: Node's native WriteString took the Buffer for a string and aborted the whole process
 * (any transcoded gRPC answer's JSON of 16 KiB or more, over HTTP/2).
 */
describe('countSentBytes', () => {
  let server: http2.Http2Server;
  let url: string;
  const counted: number[] = [];
  let answer: string | Buffer = '';
  /** How the answer is written: in `end`, or with `write` and then `end` in the same turn. */
  let writtenWith: 'end' | 'write' = 'end';

  beforeAll(async () => {
    server = http2.createServer();
    server.on('stream', (stream) => {
      const sent = countSentBytes(stream);
      stream.respond({ ':status': 200, 'content-type': 'text/plain; charset=utf-8' });
      if (writtenWith === 'write') stream.write(answer);
      stream.end(writtenWith === 'write' ? undefined : answer, () => counted.push(sent()));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => server.close(resolve)));

  async function fetchOverH2(): Promise<Buffer> {
    const session = http2.connect(url);
    try {
      return await new Promise<Buffer>((resolve, reject) => {
        const stream = session.request({ ':path': '/' });
        const chunks: Buffer[] = [];
        stream.on('data', (chunk: Buffer) => chunks.push(chunk));
        stream.on('end', () => resolve(Buffer.concat(chunks)));
        stream.on('error', reject);
      });
    } finally {
      session.close();
    }
  }

  it.each<[string, () => string | Buffer]>([
    ['text of 40 KB', () => 'x'.repeat(40_000)],
    // Three bytes a character: the 16 KiB pieces cut characters in two, which only bytes can carry.
    ['text of multi-byte characters, 60 KB', () => '€'.repeat(20_000)],
    ['bytes of 40 KB', () => Buffer.alloc(40_000, 7)],
    ['text under one piece', () => 'small'],
    ['bytes of 40 KB written, then ended in the same turn', () => Buffer.alloc(40_000, 9)],
    ['text of 60 KB written, then ended in the same turn', () => '€'.repeat(20_000)],
  ])('sends %s whole, counting every byte', async (desc, make) => {
    answer = make();
    writtenWith = desc.includes('written, then ended') ? 'write' : 'end';
    const expected = typeof answer === 'string' ? Buffer.from(answer, 'utf8') : answer;
    const received = await fetchOverH2();
    expect(received.equals(expected)).toBe(true);
    expect(counted.at(-1)).toBe(expected.length);
  });
});
