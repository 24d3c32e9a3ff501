# One image for all four processes: the gateway and the three services. docker-compose.yml runs it four
# times with a different command; the default command starts the gateway.
#
# node:24.21.0-bookworm-slim: Node 24 LTS (package.json engines: >=24.15.0; .nvmrc: 24), glibc, no curl/wget
# (health checks call node itself). Keep the three FROM lines on the same tag.

# --- build: all dependencies, compile TypeScript to dist/ ------------------------------------------------
FROM node:24.21.0-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY services ./services
COPY otel ./otel
RUN npm run build

# --- deps: production dependencies only, from the committed lock file --------------------------------------
FROM node:24.21.0-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# --- runtime -------------------------------------------------------------------------------------------------
FROM node:24.21.0-bookworm-slim AS runtime
ENV NODE_ENV=production
# Every core: one gateway worker per available CPU (src/workers.ts); compose and `npm start` set 1.
ENV GATEWAY_WORKERS=auto
WORKDIR /app
# Owned by root and only readable by the app user: the process cannot rewrite its own code.
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json gateway.config.json ./
# The gRPC routes' proto files, loaded at start-up (and on reload) relative to the app's root.
COPY proto ./proto
# `node` (uid 1000) ships with the official image.
USER node
# The gateway, the three services, the gateway's metrics listener and notification-service's gRPC port.
EXPOSE 3000 4001 4002 4003 9464 50053
# The telemetry bootstrap is preloaded so http, koa and winston are patched before the app requires them.
# --max-semi-space-size=16: V8 otherwise lets the young generation grow to ~100 MB under load. The earlier cap of 8
# made the traced gateway scavenge twice as often, copying the same in-flight requests and span batches each time and
# promoting more of them (more full collections, a higher peak): 16 measured less GC per request and a lower peak RSS
# than 8 (bench/RESULTS.md, issue 12).
# --no-allocation-site-pretenuring: V8 otherwise starts allocating an object literal's objects straight in the old
# generation once 85% of them survive a scavenge, which spans waiting for their export batch do; there they die as
# garbage only a full collection frees. With this flag the traced gateway promoted a third as much per scavenge and
# peaked 50-60 MiB lower over 86 s of load, for the same CPU per request (docs/architecture.md, "Pretenuring").
# --no-parallel-scavenge: V8 otherwise scavenges with helper threads beside the main one; on 2 shared cores (and
# under the Kubernetes manifest's 1-CPU limit) they found no core free, took CPU without shortening the main
# thread's pause: the traced gateway spent more CPU per request with them in four paired runs of five, up to 16%
# (median 4%; docs/architecture.md, "Parallel scavenging"). On a host with idle cores to spare, dropping it may
# shorten scavenge pauses.
# --no-memory-reducer: V8 otherwise collects the heap of a process that stopped allocating, which in a gateway idle
# for a minute or two also deoptimised the request path: the first second of traffic after it took 2.4-3.2 times
# the CPU per request, recompiling. The cost is ~40 MiB of RSS kept while idle (docs/architecture.md, "The memory
# reducer").
# Same flags as `npm run start:gateway`. src/stop-signals-held.js before the telemetry bootstrap: loading the
# OpenTelemetry SDK takes 0.1-0.25 s, during which a SIGTERM to PID 1 without a handler was ignored (the pod served
# on until SIGKILL) and a SIGHUP ended the process; held from the first module, main.ts answers them once it serves.
CMD ["node", "--max-semi-space-size=16", "--no-allocation-site-pretenuring", "--no-parallel-scavenge", "--no-memory-reducer", "--require", "./dist/src/stop-signals-held.js", "--require", "./dist/otel/register.js", "dist/src/main.js"]
