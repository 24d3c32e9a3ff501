// The second peer the benchmark compares Koa Gateway with (issue 12): the gateway a team would build on
// fastify with its own well-kept plugins, with the same features the gateway runs in the bench: request id
// (the client's or a fresh UUID, echoed and forwarded), a pino access log to a file, @fastify/rate-limit,
// jose with the same HS256 token check (issuer, audience, algorithm), identity headers injected and the
// client's Authorization dropped, and @fastify/http-proxy (undici, upstream keep-alive) to the one route.
// No tracing. Written the way fastify's docs write it, with their defaults: a fair, not a weakened, peer.
//   PORT=… USER_SERVICE_URL=… JWT_SECRET=… ACCESS_LOG=… RATE_LIMIT_MAX=… node server.mjs
import { randomUUID } from 'node:crypto';
import Fastify, { LogController } from 'fastify';
import httpProxy from '@fastify/http-proxy';
import rateLimit from '@fastify/rate-limit';
import { jwtVerify } from 'jose';
import pino from 'pino';

const { PORT = '3200', USER_SERVICE_URL = 'http://127.0.0.1:4001', JWT_SECRET, ACCESS_LOG = 'access.log', RATE_LIMIT_MAX = '100' } = process.env;
if (!JWT_SECRET) throw new Error('JWT_SECRET is required');
const key = new TextEncoder().encode(JWT_SECRET);

const app = Fastify({
  // pino's asynchronous file destination, as fastify's docs recommend for production logging.
  loggerInstance: pino({ level: 'info' }, pino.destination({ dest: ACCESS_LOG, sync: false, mkdir: true })),
  // The request id: the client's X-Request-Id, or a fresh UUID.
  requestIdHeader: 'x-request-id',
  genReqId: () => randomUUID(),
  // One access-log line per request (the onResponse hook below), as the Koa gateway writes, instead of
  // fastify's two (request received, response sent).
  logController: new LogController({ disableRequestLogging: true }),
});

app.addHook('onRequest', async (request, reply) => {
  reply.header('x-request-id', request.id);
});
app.addHook('onResponse', async (request, reply) => {
  request.log.info({ method: request.method, url: request.url, statusCode: reply.statusCode, responseTimeMs: reply.elapsedTime, userId: request.user?.sub }, 'request completed');
});

await app.register(rateLimit, { max: Number(RATE_LIMIT_MAX), timeWindow: 60_000 });

app.get('/health', async () => ({ status: 'ok' }));

await app.register(httpProxy, {
  upstream: USER_SERVICE_URL,
  prefix: '/api/users',
  rewritePrefix: '/users',
  preHandler: async (request, reply) => {
    const header = request.headers.authorization;
    if (!header?.startsWith('Bearer ')) return reply.code(401).send({ error: 'Missing token' });
    try {
      const { payload } = await jwtVerify(header.slice(7), key, { algorithms: ['HS256'], issuer: 'koa-gateway', audience: 'koa-gateway-api' });
      request.user = payload;
    } catch {
      return reply.code(401).send({ error: 'Invalid token' });
    }
  },
  replyOptions: {
    rewriteRequestHeaders: (request, headers) => {
      const { authorization, ...rest } = headers;
      return { ...rest, 'x-request-id': request.id, 'x-user-id': String(request.user.sub), 'x-user-role': String(request.user.role), 'x-user-email': String(request.user.email) };
    },
  },
});

await app.listen({ port: Number(PORT), host: '127.0.0.1' });
process.stdout.write(`fastify gateway listening on 127.0.0.1:${PORT}\n`);
process.on('SIGTERM', () => app.close().then(() => process.exit(0)));
