import http from 'node:http';
import net from 'node:net';
import { MAX_EARLY_HINTS_RELAYED } from '../../src/middleware/proxy';
import { ACCESS_LINE_MESSAGE, HEADER, LOG_FIELD } from '../../otel/wire-names';
import { waitFor } from '../helpers/wait';
import { login, startStack, type TestStack } from '../helpers/stack';

/**
 * Responses a service may legally send, or send wrongly, that the gateway must not turn into an empty reply (or
 * blame a healthy instance for): interim 1xx answers, reason phrases Node will not write, transfer-codings it
 * does not decode. The service is raw TCP, so it can send bytes no HTTP library would.
 */

const BODY = '{"ok":true}';

/** `text`'s UTF-8 bytes as a latin1 string (one character per byte), the way the raw answers below are written. */
const utf8Bytes = (text: string) => Buffer.from(text, 'utf8').toString('latin1');

/** The head of `path`'s answer through the gateway, as the bytes it wrote (latin1: one character per byte). */
function rawHead(gatewayUrl: string, path: string, token: string, method = 'GET'): Promise<string> {
  const { port } = new URL(gatewayUrl);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), '127.0.0.1', () => socket.write(`${method} ${path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`));
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      resolve(text.slice(0, text.indexOf('\r\n\r\n')));
    });
  });
}

/** The raw answer for each path (one response per connection, then close). */
const ANSWERS: Record<string, string> = {
  '/orders/plain': `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  '/orders/early-hints': `HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload; as=style\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  // One Link field listing two links (RFC 8288 3), as frameworks write them; then one with a title Node will not write.
  '/orders/early-hints-list': `HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload; as=style, </app.js>; rel=preload; as=script\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  // Ten hints, each another preload, then the answer: more than the gateway passes on.
  '/orders/early-hints-many': `${Array.from({ length: 10 }, (_, index) => `HTTP/1.1 103 Early Hints\r\nLink: </hint-${index}.css>; rel=preload; as=style\r\n\r\n`).join('')}HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  // A switch of protocols to a request that asked for none (the gateway forwards no Upgrade).
  '/orders/unasked-upgrade': `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n`,
  '/orders/early-hints-title': `HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload; title="main styles"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  // RFC 9110 15.2: a client must read and may ignore a 1xx it did not ask for (the gateway sends no Expect).
  '/orders/unsolicited-continue': `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  '/orders/processing': `HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  '/orders/own-ids': `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: svc-0f3c2a\r\ntraceresponse: 00-11111111111111111111111111111111-2222222222222222-01\r\nX-RateLimit-Limit: 5000\r\nX-RateLimit-Remaining: 4999\r\nX-RateLimit-Reset: 1\r\nRateLimit: "svc";r=4999;t=1\r\nRateLimit-Policy: "svc";q=5000;w=1\r\nRateLimit-Limit: 999999\r\nRateLimit-Remaining: 999999\r\nRateLimit-Reset: 1\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  // RFC 9110 forbids Content-Length on a 204; HTTP/2 clients (Node's, curl) reset a stream that claims content it does not send.
  '/orders/no-content-with-length': `HTTP/1.1 204 No Content\r\nContent-Length: 10\r\nConnection: close\r\n\r\n`,
  // RFC 9110 15 defines no status beyond 599; some frameworks use 6xx-9xx for errors of their own.
  '/orders/status-600': `HTTP/1.1 600 Unknown\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  '/orders/status-999': `HTTP/1.1 999 Request Denied\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  // Below 100: undici's parser takes it for an interim answer, then fails an assertion at the message's end.
  '/orders/status-099': `HTTP/1.1 099 Odd\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  '/orders/status-000': `HTTP/1.1 000 Nothing\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  // A head, then the service dies before any byte of the body it announced (a crash, a proxy's cut).
  '/orders/head-then-close': `HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n`,
  '/orders/chunked-head-then-close': `HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`,
  // Connection-specific (RFC 7540 3.2.1), not listed in Connection: what a service upgraded over h2c may still send.
  '/orders/http2-settings': `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  // notification-service's refusal of a signature made with another key (its challenge names the gateway's scheme),
  // and a service's own 401 for a credential of the client's.
  '/orders/signature-refused': `HTTP/1.1 401 Unauthorized\r\nContent-Type: application/problem+json\r\nWWW-Authenticate: GatewaySignature realm="koa-gateway"\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  '/orders/own-401': `HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nWWW-Authenticate: Basic realm="reports", Bearer realm="svc"\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  '/orders/gzip-coded': `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n`,
  // A file name in raw UTF-8 (as the latin1 string the answer is written from: one character per byte): `č` and `Ċ`
  // (C4 8D, C4 8A), which Node's http module wrote as a carriage return and a line feed, then a `Set-Cookie`.
  '/orders/utf8-file-name': `HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="a${utf8Bytes('čĊ')}Set-Cookie: session=attacker.pdf"\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  // The same name in ISO-8859-1 (RFC 6266's `filename` charset) and in UTF-8.
  '/orders/latin1-file-name': `HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nContent-Disposition: inline; filename="caf\xe9.pdf"\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  '/orders/utf8-cafe': `HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nContent-Disposition: inline; filename="${utf8Bytes('café')}.pdf"\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
  // A control character in a header value: llhttp refuses the head (no HTTP/1.1 field value holds one).
  '/orders/control-in-header': `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Odd: a\x01b\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`,
};
/** Reason phrases Node refuses to write: ISO-8859-1 obs-text (allowed by RFC 9112), UTF-8 beyond Latin-1, a control. */
const REASON_PHRASES: Record<string, Buffer> = {
  '/orders/reason-latin1': Buffer.from('Tr\xe8s bien', 'latin1'),
  '/orders/reason-utf8': Buffer.from('OK \u2713', 'utf8'),
  '/orders/reason-control': Buffer.from('O\x01K', 'latin1'),
};

/**
 * Redirect heads naming the instance (`{origin}`, as a framework builds them from the Host it received): fields
 * the gateway rewrites, some repeated, which RFC 9110 allows once.
 */
const REDIRECTS: Record<string, (origin: string) => string[]> = {
  '/orders/refresh': (origin) => [`Location: ${origin}/orders/done`, `Refresh: 0; url=${origin}/orders/done?x=1`],
  '/orders/refresh-quoted': (origin) => [`Refresh: 5;URL='${origin}/orders/done'`],
  '/orders/refresh-bare-url': (origin) => [`Refresh: 3, ${origin}/orders/done `],
  '/orders/refresh-elsewhere': () => ['Refresh: 1; url=https://example.org/orders/done'],
  // Scheme-relative (`//host:port/...`), as a service that builds URLs without a scheme writes them.
  '/orders/scheme-relative': (origin) => [`Location: ${origin.slice('http:'.length)}/orders/done`, `Refresh: 0; url=${origin.slice('http:'.length)}/orders/done`],
  '/orders/scheme-relative-backslashes': (origin) => [`Location: \\\\${origin.slice('http://'.length)}/orders/done`],
  // Spellings a browser reads as the instance's URL: `\` after the authority, a tab it drops.
  '/orders/backslash-after-authority': (origin) => [`Location: ${origin.slice('http:'.length)}\\orders\\done`],
  '/orders/tab-in-slashes': (origin) => [`Location: /\t${origin.slice('http:'.length)}/orders/done`],
  '/orders/location-twice': (origin) => [`Location: ${origin}/orders/one`, `Location: ${origin}/orders/two`],
  // As many as the instance origin has characters: the count at which rewriting them threw inside undici's handler.
  '/orders/location-many': (origin) => Array.from({ length: origin.length + 1 }, (_, index) => `Location: ${origin}/orders/${index}`),
  '/orders/content-location-twice': (origin) => [`Content-Location: ${origin}/orders/one`, `Content-Location: ${origin}/orders/two`],
  '/orders/refresh-twice': (origin) => [`Refresh: 0; url=${origin}/orders/one`, `Refresh: 0; url=${origin}/orders/two`],
  // Pagination links as a framework builds them from the Host it received: two fields, one listing two links; a
  // relative target, another origin's, and a quoted parameter holding `<...>` (no target) pass as they are.
  '/orders/links': (origin) => [
    `Link: <${origin}/orders?page=2>; rel="next", <${origin.slice('http:'.length)}/orders?page=9>; rel="last"`,
    `Link: </orders?page=1>; rel="first"; title="<see ${'>'}", <https://example.org/terms>; rel="terms-of-service"`,
    // A stray `<` in a parameter before the next link: that link's target is still the instance's URL to rewrite.
    `Link: </orders/a>; anchor=x<y, <${origin}/orders/b>; rel="next"`,
  ],
};

function startRawService(): Promise<{ url: string; asked: Map<string, number>; heads: Map<string, string>; close(): Promise<void> }> {
  const asked = new Map<string, number>();
  /** The last request head each path received. */
  const heads = new Map<string, string>();
  const server = net.createServer((socket) => {
    let head = '';
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      head += chunk.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      const path = head.split(' ')[1]!.split('?')[0]!;
      asked.set(path, (asked.get(path) ?? 0) + 1);
      heads.set(path, head);
      const phrase = REASON_PHRASES[path];
      const redirect = REDIRECTS[path];
      if (redirect) {
        const origin = `http://${/\r\nhost: *([^\r]*)/i.exec(head)![1]}`;
        socket.end(`HTTP/1.1 302 Found\r\n${redirect(origin).map((line) => `${line}\r\n`).join('')}Content-Length: 0\r\nConnection: close\r\n\r\n`);
      } else if (path === '/orders/early-hints-instance') {
        // A preload built from the Host received, in the 103 and again in the final answer.
        const host = /\r\nhost: *([^\r]*)/i.exec(head)![1];
        socket.end(`HTTP/1.1 103 Early Hints\r\nLink: <http://${host}/orders/app.css>; rel=preload; as=style\r\n\r\nHTTP/1.1 200 OK\r\nLink: <http://${host}/orders/app.css>; rel=preload; as=style\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`);
      } else if (path === '/orders/echoes-request') {
        // A service that echoes its request's headers (a debug endpoint, an error page listing them).
        const echoed = head.split('\r\n').slice(1).filter((line) => line !== '' && !/^(content-length|connection|transfer-encoding|host):/i.test(line));
        socket.end(`HTTP/1.1 200 OK\r\n${echoed.map((line) => `${line}\r\n`).join('')}X-Consumer-Id: c-7\r\nX-Service-Note: kept\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`);
      } else if (path === '/orders/absolute-redirect') {
        // As a framework builds absolute URLs: from the Host it received (the instance's address).
        const host = /\r\nhost: *([^\r]*)/i.exec(head)![1];
        socket.end(`HTTP/1.1 302 Found\r\nLocation: http://${host}/orders/login?next=%2Forders\r\nContent-Location: http://${host}/orders/absolute-redirect\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
      } else if (phrase) {
        socket.end(Buffer.concat([Buffer.from('HTTP/1.1 200 '), phrase, Buffer.from(`\r\nContent-Type: application/json\r\nContent-Length: ${BODY.length}\r\nConnection: close\r\n\r\n${BODY}`)]));
      } else socket.end(Buffer.from(ANSWERS[path] ?? ANSWERS['/orders/plain']!, 'latin1'));
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve({ url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, asked, heads, close: () => new Promise((done) => server.close(() => done())) })),
  );
}

interface Answer {
  status: number;
  statusMessage: string;
  headers: http.IncomingHttpHeaders;
  body: string;
  interim: { status: number; headers: Record<string, string | string[] | undefined> }[];
}

/** One GET through the gateway with node:http, which reports interim answers too. */
function get(url: string, token: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const interim: Answer['interim'] = [];
    const req = http.get(url, { headers: { authorization: `Bearer ${token}` } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode!, statusMessage: res.statusMessage ?? '', headers: res.headers, body, interim }));
      res.on('error', reject);
    });
    req.on('information', (info) => interim.push({ status: info.statusCode, headers: info.headers }));
    req.on('error', reject);
  });
}

describe('responses a service sends that the gateway forwards or refuses cleanly', () => {
  let service: Awaited<ReturnType<typeof startRawService>>;
  let stack: TestStack;
  let token: string;

  beforeAll(async () => {
    service = await startRawService();
    // Default passive ejection (3 failures in a row): a response counted as the instance's failure would show.
    // A default limit no test here meets: each answer below is asked for a few times over.
    stack = await startStack({ serviceUrls: { orders: service.url }, env: { RATE_LIMIT_MAX: '100000' } });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await service.close();
  });

  it('passes 103 Early Hints on with their Link, then the final answer, and never blames the instance', async () => {
    for (let round = 0; round < 4; round++) {
      const answer = await get(`${stack.gateway.url}/api/orders/early-hints`, token);
      expect(answer.interim).toEqual([expect.objectContaining({ status: 103, headers: expect.objectContaining({ link: '</app.css>; rel=preload; as=style' }) })]);
      expect({ status: answer.status, body: answer.body }).toEqual({ status: 200, body: BODY });
      expect(answer.headers[HEADER.requestId]).toMatch(/^[0-9a-f]{32}$/);
    }
    expect((await get(`${stack.gateway.url}/api/orders/plain`, token)).status).toBe(200);
  });

  it('passes 103 Early Hints whose Link lists several links on, then the final answer, asking the service once', async () => {
    // Past the default ejection (3 failures in a row): a hint counted as the instance's failure would eject it.
    for (let round = 0; round < 4; round++) {
      const before = service.asked.get('/orders/early-hints-list') ?? 0;
      const answer = await get(`${stack.gateway.url}/api/orders/early-hints-list`, token);
      expect(answer.interim.map(({ status, headers }) => [status, ([] as string[]).concat(headers.link ?? []).join(', ')])).toEqual([[103, '</app.css>; rel=preload; as=style, </app.js>; rel=preload; as=script']]);
      expect({ status: answer.status, body: answer.body }).toEqual({ status: 200, body: BODY });
      expect(service.asked.get('/orders/early-hints-list')! - before).toBe(1);
    }
    expect((await get(`${stack.gateway.url}/api/orders/plain`, token)).status).toBe(200);
  });

  // Each hint is written to the client at once, whether it reads or not: a service sending them without end filled
  // the gateway's memory at its own rate until the deadline.
  it(`passes on the first ${MAX_EARLY_HINTS_RELAYED} 103 Early Hints of an answer and drops the rest`, async () => {
    const answer = await get(`${stack.gateway.url}/api/orders/early-hints-many`, token);
    expect(answer.interim.map(({ status, headers }) => [status, headers.link])).toEqual(Array.from({ length: MAX_EARLY_HINTS_RELAYED }, (_, index) => [103, `</hint-${index}.css>; rel=preload; as=style`]));
    expect({ status: answer.status, body: answer.body }).toEqual({ status: 200, body: BODY });
  });

  it('delivers the final answer without the hints when a 103 Link is one Node will not write, asking the service once', async () => {
    for (let round = 0; round < 4; round++) {
      const before = service.asked.get('/orders/early-hints-title') ?? 0;
      const answer = await get(`${stack.gateway.url}/api/orders/early-hints-title`, token);
      expect({ status: answer.status, body: answer.body, interim: answer.interim }).toEqual({ status: 200, body: BODY, interim: [] });
      expect(service.asked.get('/orders/early-hints-title')! - before).toBe(1);
    }
    expect((await get(`${stack.gateway.url}/api/orders/plain`, token)).status).toBe(200);
  });

  it('passes a 204 on without the Content-Length its service wrongly sent', async () => {
    const answer = await get(`${stack.gateway.url}/api/orders/no-content-with-length`, token);
    expect(answer.status).toBe(204);
    expect(answer.headers['content-length']).toBeUndefined();
  });

  // undici cannot read past a 100, nor a 101 to a request without Upgrade (it drops the connection: src/errors.ts
  // upstreamSentContinue, upstreamSwitchedProtocolsUnasked). Taken for a reset, the GET was resent to the same answer
  // and the instance ejected: every route to the service went 503.
  it.each([
    { desc: "a service's unsolicited 100 (Continue)", path: '/orders/unsolicited-continue' },
    { desc: 'a 101 Switching Protocols the request did not ask for', path: '/orders/unasked-upgrade' },
    // undici failed the head, and the exchange waited out the route's 10 s idle timeout: 504 upstream_timeout.
    { desc: 'a control character in a header value', path: '/orders/control-in-header' },
  ])('answers 502 upstream_bad_response to $desc, asking once, and never blames the instance', async ({ path }) => {
    // Past the default ejection (3 failures in a row).
    for (let round = 0; round < 4; round++) {
      const before = service.asked.get(path) ?? 0;
      const answer = await get(`${stack.gateway.url}/api${path}`, token);
      expect(answer.status).toBe(502);
      expect(JSON.parse(answer.body)).toMatchObject({ code: 'upstream_bad_response', requestId: answer.headers[HEADER.requestId] });
      expect(service.asked.get(path)! - before).toBe(1);
    }
    expect((await get(`${stack.gateway.url}/api/orders/plain`, token)).status).toBe(200);
  });

  it('drops 102 Processing and delivers the final answer', async () => {
    for (let round = 0; round < 4; round++) {
      const answer = await get(`${stack.gateway.url}/api/orders/processing`, token);
      expect(answer.interim).toEqual([]);
      expect({ status: answer.status, body: answer.body }).toEqual({ status: 200, body: BODY });
    }
  });

  it.each(Object.keys(REASON_PHRASES))('answers %s with the standard reason phrase instead of an empty reply', async (path) => {
    for (let round = 0; round < 4; round++) {
      const answer = await get(`${stack.gateway.url}/api${path}`, token);
      expect({ status: answer.status, statusMessage: answer.statusMessage, body: answer.body }).toEqual({ status: 200, statusMessage: 'OK', body: BODY });
    }
  });

  it.each(['GET', 'HEAD'])("writes a file name in raw UTF-8 as ASCII (RFC 8187), never as the line breaks Node's http made of it (%s)", async (method) => {
    const head = await rawHead(stack.gateway.url, '/api/orders/utf8-file-name', token, method);
    const lines = head.split('\r\n');
    expect(lines[0]).toBe('HTTP/1.1 200 OK');
    // Every line a field of the gateway's or the service's: no injected Set-Cookie, and no byte outside ASCII.
    expect(lines.filter((line) => /^set-cookie:/i.test(line))).toEqual([]);
    expect(head).toMatch(/^[\t\r\n\x20-\x7e]*$/);
    expect(lines.filter((line) => /^content-disposition:/i.test(line))).toEqual([`content-disposition: attachment; filename="a??Set-Cookie: session=attacker.pdf"; filename*=UTF-8''a%C4%8D%C4%8ASet-Cookie%3A%20session%3Dattacker.pdf`]);
  });

  it.each(['/orders/latin1-file-name', '/orders/utf8-cafe'])('writes the file name of %s as the text it is, in ASCII', async (path) => {
    const reply = await get(`${stack.gateway.url}/api${path}`, token);
    expect(reply.status).toBe(200);
    expect(reply.headers['content-disposition']).toBe(`inline; filename="caf?.pdf"; filename*=UTF-8''caf%C3%A9.pdf`);
  });

  it("keeps the gateway's request id, trace and rate-limit headers over a service's own", async () => {
    const requestId = 'client-req-42';
    const reply = await fetch(`${stack.gateway.url}/api/orders/own-ids`, { headers: { authorization: `Bearer ${token}`, [HEADER.requestId]: requestId } });
    expect(reply.status).toBe(200);
    expect(reply.headers.get(HEADER.requestId)).toBe(requestId);
    // No tracer in this stack: the gateway writes no traceresponse, and the service's naming a trace that does not exist is dropped.
    expect(reply.headers.get(HEADER.traceresponse)).toBeNull();
    const limit = stack.config.rateLimit.max;
    expect(reply.headers.get('x-ratelimit-limit')).toBe(String(limit));
    expect(Number(reply.headers.get('x-ratelimit-remaining'))).toBeLessThan(limit);
    expect(reply.headers.get('ratelimit-policy')).toMatch(new RegExp(`;q=${limit};`));
    expect(reply.headers.get('ratelimit')).not.toContain('svc');
    // The fields of the rate-limit drafts before, which the gateway does not write: a service's are dropped all the same.
    expect(['ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset'].map((name) => reply.headers.get(name))).toEqual([null, null, null]);
    expect(stack.gatewayLogs.some((line) => line.request_id === requestId && line.status === 200)).toBe(true);
  });

  it("rewrites Location and Content-Location naming the instance to the public URL the client asked for", async () => {
    const reply = await fetch(`${stack.gateway.url}/api/orders/absolute-redirect`, { headers: { authorization: `Bearer ${token}` }, redirect: 'manual' });
    expect(reply.status).toBe(302);
    expect(reply.headers.get('location')).toBe(`${stack.gateway.url}/api/orders/login?next=%2Forders`);
    expect(reply.headers.get('content-location')).toBe(`${stack.gateway.url}/api/orders/absolute-redirect`);
    expect(JSON.stringify([...reply.headers])).not.toContain(new URL(service.url).host);
  });

  it('rewrites them for an HTTP/1.0 request without Host too, to the address it connected to', async () => {
    // What the service is told as X-Forwarded-Host for such a request; left as it came, it named the instance.
    const { hostname, port } = new URL(stack.gateway.url);
    const head = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(Number(port), hostname, () => socket.write(`GET /api/orders/absolute-redirect HTTP/1.0\r\nAuthorization: Bearer ${token}\r\n\r\n`));
      let received = '';
      socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
      socket.on('end', () => resolve(received.split('\r\n\r\n')[0]!));
      socket.on('error', reject);
    });
    expect(head).toMatch(/^HTTP\/1\.1 302 /);
    expect(head.toLowerCase()).toContain(`\r\nlocation: http://${hostname}:${port}/api/orders/login?next=%2forders`);
    expect(head.toLowerCase()).toContain(`\r\ncontent-location: http://${hostname}:${port}/api/orders/absolute-redirect`);
    expect(head).not.toContain(new URL(service.url).host);
  });

  it.each([
    { desc: 'Refresh beside Location', path: '/orders/refresh', refresh: (gateway: string) => `0; url=${gateway}/api/orders/done?x=1` },
    { desc: "a quoted URL= in Refresh", path: '/orders/refresh-quoted', refresh: (gateway: string) => `5;URL='${gateway}/api/orders/done'` },
    { desc: 'a Refresh URL without url=', path: '/orders/refresh-bare-url', refresh: (gateway: string) => `3, ${gateway}/api/orders/done` },
  ])('rewrites $desc naming the instance as it rewrites Location', async ({ path, refresh }) => {
    const reply = await fetch(`${stack.gateway.url}/api${path}`, { headers: { authorization: `Bearer ${token}` }, redirect: 'manual' });
    expect(reply.status).toBe(302);
    expect(reply.headers.get('refresh')?.trimEnd()).toBe(refresh(stack.gateway.url));
    expect(JSON.stringify([...reply.headers])).not.toContain(new URL(service.url).host);
  });

  it.each([
    { desc: 'scheme-relative Location and Refresh', path: '/orders/scheme-relative', refresh: (gateway: string) => `0; url=${gateway}/api/orders/done` },
    { desc: 'a scheme-relative Location written with backslashes', path: '/orders/scheme-relative-backslashes', refresh: () => null },
    { desc: 'a scheme-relative Location with backslashes after the authority', path: '/orders/backslash-after-authority', refresh: () => null },
    { desc: 'a scheme-relative Location with a tab between its slashes', path: '/orders/tab-in-slashes', refresh: () => null },
  ])('rewrites $desc naming the instance to the public URL', async ({ path, refresh }) => {
    const reply = await fetch(`${stack.gateway.url}/api${path}`, { headers: { authorization: `Bearer ${token}` }, redirect: 'manual' });
    expect(reply.status).toBe(302);
    expect(reply.headers.get('location')).toBe(`${stack.gateway.url}/api/orders/done`);
    expect(reply.headers.get('refresh')).toBe(refresh(stack.gateway.url));
    expect(JSON.stringify([...reply.headers])).not.toContain(new URL(service.url).host);
  });

  it('rewrites the targets of Link fields naming the instance, and leaves relative targets, other origins and quoted parameters as they are', async () => {
    const reply = await fetch(`${stack.gateway.url}/api/orders/links`, { headers: { authorization: `Bearer ${token}` }, redirect: 'manual' });
    expect(reply.status).toBe(302);
    expect(reply.headers.get('link')).toBe(
      `<${stack.gateway.url}/api/orders?page=2>; rel="next", <${stack.gateway.url}/api/orders?page=9>; rel="last", ` +
        '</orders?page=1>; rel="first"; title="<see >", <https://example.org/terms>; rel="terms-of-service", ' +
        `</orders/a>; anchor=x<y, <${stack.gateway.url}/api/orders/b>; rel="next"`,
    );
    expect(JSON.stringify([...reply.headers])).not.toContain(new URL(service.url).host);
  });

  it("rewrites a 103 Early Hints' Link naming the instance, and the final answer's", async () => {
    const answer = await get(`${stack.gateway.url}/api/orders/early-hints-instance`, token);
    expect(answer.status).toBe(200);
    expect(answer.interim.map(({ status, headers }) => [status, headers.link])).toEqual([[103, `<${stack.gateway.url}/api/orders/app.css>; rel=preload; as=style`]]);
    expect(answer.headers.link).toBe(`<${stack.gateway.url}/api/orders/app.css>; rel=preload; as=style`);
    expect(JSON.stringify(answer)).not.toContain(new URL(service.url).host);
  });

  it('passes none of the identity, consumer and signature headers it sent the service back to the client, when the service echoes them', async () => {
    const answer = await get(`${stack.gateway.url}/api/orders/echoes-request`, token);
    expect(answer.status).toBe(200);
    const names = Object.keys(answer.headers);
    expect(names.filter((name) => /^x-(user|gateway|consumer)-/.test(name))).toEqual([]);
    // The service did echo them (the gateway sent them), and its other headers pass.
    expect(service.heads.get('/orders/echoes-request')).toMatch(/\r\nx-user-id: /i);
    expect(service.heads.get('/orders/echoes-request')).toMatch(/\r\nx-gateway-signature: /i);
    expect(answer.headers['x-service-note']).toBe('kept');
    expect(answer.headers[HEADER.requestId]).toBeDefined();
  });

  it('leaves a Refresh naming another origin as it is', async () => {
    const reply = await fetch(`${stack.gateway.url}/api/orders/refresh-elsewhere`, { headers: { authorization: `Bearer ${token}` }, redirect: 'manual' });
    expect(reply.headers.get('refresh')).toBe('1; url=https://example.org/orders/done');
  });

  it.each([
    { desc: 'Location twice', path: '/orders/location-twice' },
    { desc: 'Location more times than the instance origin has characters', path: '/orders/location-many' },
    { desc: 'Content-Location twice', path: '/orders/content-location-twice' },
    { desc: 'Refresh twice', path: '/orders/refresh-twice' },
  ])('answers $desc with 502 upstream_bad_response: asked once, the instance neither leaked nor blamed', async ({ path }) => {
    // Past the default ejection (3 failures in a row): a response counted as the instance's failure would eject it.
    for (let round = 0; round < 4; round++) {
      const before = service.asked.get(path) ?? 0;
      const answer = await get(`${stack.gateway.url}/api${path}`, token);
      expect(answer.status).toBe(502);
      expect(JSON.parse(answer.body)).toMatchObject({ code: 'upstream_bad_response', requestId: answer.headers[HEADER.requestId] });
      expect(JSON.stringify(answer.headers) + answer.body).not.toContain(new URL(service.url).host);
      expect(service.asked.get(path)! - before).toBe(1);
    }
    expect((await get(`${stack.gateway.url}/api/orders/plain`, token)).status).toBe(200);
  });

  it.each(['/orders/status-600', '/orders/status-999', '/orders/status-099', '/orders/status-000'])('answers %s (a status outside 100-599) with 502 upstream_bad_response: asked once, the instance not blamed', async (path) => {
    // Past the default ejection (3 failures in a row): a response counted as the instance's failure would eject it.
    for (let round = 0; round < 4; round++) {
      const before = service.asked.get(path) ?? 0;
      const answer = await get(`${stack.gateway.url}/api${path}`, token);
      expect(answer.status).toBe(502);
      expect(JSON.parse(answer.body)).toMatchObject({ code: 'upstream_bad_response', requestId: answer.headers[HEADER.requestId] });
      expect(service.asked.get(path)! - before).toBe(1);
    }
    expect((await get(`${stack.gateway.url}/api/orders/plain`, token)).status).toBe(200);
  });

  it('passes an answer on without the HTTP2-Settings its service sent, a connection-specific header', async () => {
    const answer = await get(`${stack.gateway.url}/api/orders/http2-settings`, token);
    expect({ status: answer.status, body: answer.body }).toEqual({ status: 200, body: BODY });
    expect(answer.headers['http2-settings']).toBeUndefined();
  });

  // Passed on, the client was told to sign in again (401), which no credential of its could fix: the gateway's and the
  // service's signing keys (or clocks) were apart.
  it("answers a service's 401 refusing the gateway's signature with 502 upstream_bad_response, asked once, and keeps the instance", async () => {
    for (let round = 0; round < 4; round++) {
      const before = service.asked.get('/orders/signature-refused') ?? 0;
      const answer = await get(`${stack.gateway.url}/api/orders/signature-refused`, token);
      expect(answer.status).toBe(502);
      expect(JSON.parse(answer.body)).toMatchObject({ code: 'upstream_bad_response', requestId: answer.headers[HEADER.requestId] });
      expect(answer.headers['www-authenticate']).toBeUndefined();
      // The operator's hint (keys or clocks apart) is the log line's, not the client's.
      expect(JSON.parse(answer.body).detail).not.toMatch(/keys|clocks/);
      expect(stack.gatewayLogs.find((line) => line.message === 'request failed' && line.request_id === answer.headers[HEADER.requestId])?.error).toMatch(/signing keys, or clocks, apart/);
      expect(service.asked.get('/orders/signature-refused')! - before).toBe(1);
    }
    expect((await get(`${stack.gateway.url}/api/orders/plain`, token)).status).toBe(200);
    const own = await get(`${stack.gateway.url}/api/orders/own-401`, token);
    expect({ status: own.status, challenge: own.headers['www-authenticate'], body: own.body }).toEqual({ status: 401, challenge: 'Basic realm="reports", Bearer realm="svc"', body: BODY });
  });

  it('refuses a transfer-coding it does not decode (gzip, chunked) with 502 upstream_bad_response, and keeps the instance', async () => {
    for (let round = 0; round < 4; round++) {
      const answer = await get(`${stack.gateway.url}/api/orders/gzip-coded`, token);
      expect(answer.status).toBe(502);
      expect(JSON.parse(answer.body)).toMatchObject({ code: 'upstream_bad_response', requestId: answer.headers[HEADER.requestId] });
    }
    expect((await get(`${stack.gateway.url}/api/orders/plain`, token)).status).toBe(200);
  });
});

/** One request over a raw connection: every byte the gateway sent until it closed the connection. */
function rawExchange(url: string, request: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    let received = '';
    const socket = net.connect(Number(port), hostname, () => socket.write(request));
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (received += chunk));
    socket.on('error', reject);
    socket.on('close', () => resolve(received));
  });
}

describe('a service that sends its head and dies before the body', () => {
  let service: Awaited<ReturnType<typeof startRawService>>;
  let stack: TestStack;
  let token: string;

  beforeAll(async () => {
    service = await startRawService();
    // Each cut is the instance's failure: never ejected here, so each test meets the service, not a 503.
    stack = await startStack({
      serviceUrls: { orders: service.url },
      env: { RATE_LIMIT_MAX: '100000' },
      overrides: { services: { users: { url: 'http://placeholder' }, orders: { url: 'http://placeholder', ejectAfterFailures: 1000 }, notifications: { url: 'http://placeholder' } } },
    });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await service.close();
  });

  // Node holds a written head until the first body byte: cut then, the client got no byte at all, which on a kept-alive
  // connection reads as one the gateway closed while idle (a POST the service took, answered with nothing).
  it('passes the head on, then closes: the client sees the status and a body shorter than its Content-Length', async () => {
    const received = await rawExchange(stack.gateway.url, `POST /api/orders/head-then-close HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`);
    const [head = '', body = ''] = received.split('\r\n\r\n');
    expect(head).toMatch(/^HTTP\/1\.1 201 /);
    expect(head).toMatch(/\r\ncontent-length: 100(\r\n|$)/i);
    expect(body.length).toBeLessThan(100);
    const requestId = /\r\nx-request-id: ([^\r]+)/i.exec(head)?.[1];
    const accessLine = () => stack.gatewayLogs.find((line) => line[LOG_FIELD.requestId] === requestId && line.message === ACCESS_LINE_MESSAGE);
    await waitFor(() => accessLine() !== undefined, 'its access line');
    expect(accessLine()).toMatchObject({ status: 201, error_code: 'upstream_reset' });
  });

  // Without a length, an HTTP/1.0 client's body ends where the connection does: the head alone read as a whole empty
  // answer (nginx speaks HTTP/1.0 to its backends by default, and might have stored it).
  it('sends an HTTP/1.0 client no head when nothing in it could show the body cut, and the head with a length when one could', async () => {
    const unframed = await rawExchange(stack.gateway.url, `GET /api/orders/chunked-head-then-close HTTP/1.0\r\nHost: gateway.test\r\nAuthorization: Bearer ${token}\r\n\r\n`);
    expect(unframed).toBe('');
    const withLength = await rawExchange(stack.gateway.url, `GET /api/orders/head-then-close HTTP/1.0\r\nHost: gateway.test\r\nAuthorization: Bearer ${token}\r\n\r\n`);
    expect(withLength).toMatch(/^HTTP\/1\.1 201 [^]*\r\ncontent-length: 100\r\n/i);
  });

  it('passes a chunked head on, then closes without the last chunk', async () => {
    const received = await rawExchange(stack.gateway.url, `GET /api/orders/chunked-head-then-close HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\nAuthorization: Bearer ${token}\r\n\r\n`);
    expect(received).toMatch(/^HTTP\/1\.1 201 /);
    expect(received).toMatch(/\r\ntransfer-encoding: chunked\r\n/i);
    expect(received).not.toMatch(/(^|\r\n)0\r\n\r\n$/);
  });
});

describe('103 Early Hints under the operator\'s hidden headers', () => {
  let service: Awaited<ReturnType<typeof startRawService>>;
  let stack: TestStack;
  let token: string;

  beforeAll(async () => {
    service = await startRawService();
    stack = await startStack({ serviceUrls: { orders: service.url }, overrides: { proxy: { timeoutMs: 10_000, hideUpstreamHeaders: ['server', 'link'] } } });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await service.close();
  });

  // The final answer's Link was hidden and the 103's went out all the same, naming what the answer no longer did.
  it('relays no 103 whose Link the operator hides, as the final answer carries none', async () => {
    const answer = await get(`${stack.gateway.url}/api/orders/early-hints-instance`, token);
    expect({ status: answer.status, link: answer.headers.link, interim: answer.interim }).toEqual({ status: 200, link: undefined, interim: [] });
  });
});
