import http from 'node:http';

export interface UploadReply {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

/** A POST to `origin` that declares `declared` bytes of JSON body and sends all but the last, then waits for the answer. */
export function stalledUpload(origin: string, path: string, headers: http.OutgoingHttpHeaders, declared: number): Promise<UploadReply> {
  const { hostname, port } = new URL(origin);
  return new Promise<UploadReply>((resolve, reject) => {
    const request = http.request({ host: hostname, port: Number(port), path, method: 'POST', headers, agent: false }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        request.destroy();
        resolve({ status: response.statusCode ?? 0, headers: response.headers, text: Buffer.concat(chunks).toString() });
      });
    });
    request.on('error', reject);
    request.write(`{"name":"Stalled","padding":"${'x'.repeat(declared - 40)}`);
  });
}

/**
 * A POST whose body goes out `bytesPerTick` bytes every `everyMs`; `sent()` counts what went. It stops sending once an
 * answer comes, unless `sendsPastAnswer` (a client that uploads on while the service answers as it reads).
 */
export function tricklingUpload(origin: string, path: string, headers: http.OutgoingHttpHeaders, body: string, bytesPerTick: number, everyMs: number, burst = 0, sendsPastAnswer = false) {
  const { hostname, port } = new URL(origin);
  let sent = 0;
  let timer: NodeJS.Timeout | undefined;
  let request: http.ClientRequest | undefined;
  let answered = false;
  const reply = new Promise<UploadReply>((resolve, reject) => {
    request = http.request({ host: hostname, port: Number(port), path, method: 'POST', headers, agent: false }, (response) => {
      answered = true;
      if (!sendsPastAnswer) clearInterval(timer);
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, text: Buffer.concat(chunks).toString() }));
      response.on('error', reject);
    });
    request.on('error', reject);
    if (burst > 0) {
      request.write(body.slice(0, burst));
      sent = burst;
    }
    timer = setInterval(() => {
      if (!request!.writable) return;
      const piece = body.slice(sent, sent + bytesPerTick);
      sent += piece.length;
      if (sent >= body.length) {
        clearInterval(timer);
        request!.end(piece);
      } else request!.write(piece);
    }, everyMs);
  });
  // Stopped, a request not yet answered fails with its socket: nobody waits for that any more.
  const stop = () => {
    reply.catch(() => undefined);
    clearInterval(timer);
    request?.destroy();
  };
  return { reply, sent: () => sent, answered: () => answered, stop };
}
