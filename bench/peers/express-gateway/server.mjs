// The peer the benchmark compares Koa Gateway with: the API gateway that classic Express tutorials build,
// written the way they write it (request id, morgan access log, express-rate-limit, jsonwebtoken, identity
// headers, http-proxy-middleware), with the benchmark's one route. No tracing. Deliberately not tuned:
// what it costs with its libraries' defaults is the point of the comparison.
//   PORT=… USER_SERVICE_URL=… JWT_SECRET=… ACCESS_LOG=… RATE_LIMIT_MAX=… node server.mjs
import fs from 'node:fs';
import express from 'express';
import { rateLimit } from 'express-rate-limit';
import { createProxyMiddleware } from 'http-proxy-middleware';
import jwt from 'jsonwebtoken';
import morgan from 'morgan';
import { v4 as uuidv4 } from 'uuid';

const { PORT = '3100', USER_SERVICE_URL = 'http://127.0.0.1:4001', JWT_SECRET, ACCESS_LOG = 'access.log', RATE_LIMIT_MAX = '100' } = process.env;
if (!JWT_SECRET) throw new Error('JWT_SECRET is required');

const app = express();

// Request id: the client's, or a fresh UUID, echoed back and forwarded.
app.use((req, res, next) => {
  req.id = req.headers['x-request-id'] || uuidv4();
  res.setHeader('X-Request-Id', req.id);
  next();
});

morgan.token('id', (req) => req.id);
app.use(morgan(':id :remote-addr - :method :url :status :res[content-length] - :response-time ms', { stream: fs.createWriteStream(ACCESS_LOG, { flags: 'a' }) }));

app.use(rateLimit({ windowMs: 60_000, limit: Number(RATE_LIMIT_MAX), standardHeaders: 'draft-8', legacyHeaders: false }));

function authenticate(req, res, next) {
  const header = req.headers.authorization;
  if (!header || !header.startsWith('Bearer ')) return res.status(401).json({ error: 'Missing token' });
  try {
    req.user = jwt.verify(header.slice(7), JWT_SECRET, { algorithms: ['HS256'], issuer: 'koa-gateway', audience: 'koa-gateway-api' });
    next();
  } catch {
    res.status(401).json({ error: 'Invalid token' });
  }
}

app.get('/health', (req, res) => res.json({ status: 'ok' }));

app.use(
  '/api/users',
  authenticate,
  createProxyMiddleware({
    target: `${USER_SERVICE_URL}/users`,
    changeOrigin: true,
    on: {
      proxyReq(proxyReq, req) {
        proxyReq.setHeader('x-request-id', req.id);
        proxyReq.setHeader('x-user-id', req.user.sub);
        proxyReq.setHeader('x-user-role', req.user.role);
        proxyReq.setHeader('x-user-email', req.user.email);
        proxyReq.removeHeader('authorization');
      },
      error(err, req, res) {
        res.writeHead?.(502, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: 'Bad gateway' }));
      },
    },
  }),
);

const server = app.listen(Number(PORT), '127.0.0.1', () => console.log(`express gateway listening on 127.0.0.1:${PORT}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)).closeAllConnections());
