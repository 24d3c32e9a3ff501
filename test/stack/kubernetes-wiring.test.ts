import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DEFAULT_DRAIN_TIMEOUT_MS } from '../../otel/lifecycle';
import { SHUTDOWN_TIMEOUT_MS } from '../../otel/telemetry';
import { GATEWAY_SHUTDOWN_STEPS_MS } from '../../src/workers';
import { loadServiceEnv, type ServiceKey } from '../../services/shared/service-config';
import { createApp as createNotificationsApp } from '../../services/notifications/app';
import { createApp as createOrdersApp } from '../../services/orders/app';
import { createApp as createUsersApp } from '../../services/users/app';
import { loadConfig } from '../../src/config';
import { HEADER } from '../../otel/wire-names';
import { login, startStack, type TestStack } from '../helpers/stack';
import { waitFor } from '../helpers/wait';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import {
  envMap,
  KUSTOMIZE_FLAGS,
  LOCAL_OVERLAY,
  named,
  ofKind,
  render,
  resolvePort,
  selects,
  type Container,
  type Deployment,
  type K8sObject,
  type NetworkPolicy,
  type Service,
} from './kubernetes-manifests';
import { asMap, containerPorts, readCompose, readText, readYaml, ROOT, service } from './stack-files';

/**
 * What the local overlay deploys is what docker-compose.yml runs (image, commands, env, service names,
 * config files), its probes reach paths the processes answer, and its Services and NetworkPolicies connect
 * exactly the processes that call each other.
 */

const objects = render(LOCAL_OVERLAY);
const compose = readCompose();
const deployments = ofKind<Deployment>(objects, 'Deployment');
const services = ofKind<Service>(objects, 'Service');
const policies = ofKind<NetworkPolicy>(objects, 'NetworkPolicy');

function deployment(name: string): Deployment {
  return named<Deployment>(objects, 'Deployment', name);
}

function container(name: string): Container {
  const containers = deployment(name).spec.template.spec.containers;
  expect(containers).toHaveLength(1);
  return containers[0]!;
}

function configMap(volumeOwner: string, volumeName: string): K8sObject & { data: Record<string, string> } {
  const volume = deployment(volumeOwner).spec.template.spec.volumes?.find((v) => v.name === volumeName);
  if (!volume?.configMap) throw new Error(`${volumeOwner} has no configMap volume ${volumeName}`);
  return named(objects, 'ConfigMap', volume.configMap.name);
}

/** The workloads that run the application image, by their compose and Kubernetes name (the same). */
const APPS = ['gateway', 'user-service', 'order-service', 'notification-service'] as const;
const SERVICE_KEYS: Record<Exclude<(typeof APPS)[number], 'gateway'>, ServiceKey> = {
  'user-service': 'users',
  'order-service': 'orders',
  'notification-service': 'notifications',
};

/** Compose's `${NAME:-default}` with nothing set in the shell (as env-wiring.test.ts reads it). */
function composeValue(value: string): string {
  return value.replace(/\$\{(\w+)(?::?-([^}]*))?\}/g, (_m, _name: string, fallback: string | undefined) => fallback ?? '');
}

/** As `openssl rand -base64 48` gives them (production refuses secrets of a few repeated characters). */
const RANDOM_SECRET = randomBytes(48).toString('base64');
const RANDOM_KEY = randomBytes(48).toString('base64');

const SIGNING_KEY_DIFFERENCE = 'from its signing Secret (compose: from the shell, empty by default)';
const ACCEPTED_KEY_DIFFERENCE = "from its signing Secret's optional `accepted` (compose: from the shell, empty by default)";

/** The Secret each workload's own signing key comes from: the gateway's, and one per service (derived from it, README). */
const SIGNING_SECRETS: Record<(typeof APPS)[number], string> = {
  gateway: 'gateway-signing',
  'user-service': 'user-service-signing',
  'order-service': 'order-service-signing',
  'notification-service': 'notification-service-signing',
};

/** Where the cluster's env differs from compose's on purpose, and why. Anything else must be equal. */
const INTENDED_DIFFERENCES: Record<string, Record<string, string>> = {
  gateway: {
    GATEWAY_CONFIG: 'the gateway-config ConfigMap, mounted (compose reads the copy in the image)',
    NODE_ENV: 'production: a cluster is not a local stack (the gateway then requires JWT_SECRET)',
    JWT_SECRET: 'from the gateway-jwt Secret (compose: from the shell, empty by default)',
    GATEWAY_SIGNING_KEY: SIGNING_KEY_DIFFERENCE,
  },
  'user-service': { NODE_ENV: 'production', GATEWAY_SIGNING_KEY: SIGNING_KEY_DIFFERENCE, GATEWAY_SIGNING_KEY_ACCEPTED: ACCEPTED_KEY_DIFFERENCE },
  'order-service': {
    NODE_ENV: 'production',
    GATEWAY_SIGNING_KEY: SIGNING_KEY_DIFFERENCE,
    GATEWAY_SIGNING_KEY_ACCEPTED: ACCEPTED_KEY_DIFFERENCE,
    USER_SERVICE_SIGNING_KEY: "its caller key for user-service, from its own signing Secret's `users` (compose: from the shell, empty by default)",
    NOTIF_SERVICE_SIGNING_KEY: "its caller key for notification-service, from its own signing Secret's `notifications` (compose: from the shell, empty by default)",
  },
  'notification-service': { NODE_ENV: 'production', GATEWAY_SIGNING_KEY: SIGNING_KEY_DIFFERENCE, GATEWAY_SIGNING_KEY_ACCEPTED: ACCEPTED_KEY_DIFFERENCE },
};

describe('the same processes as docker-compose.yml', () => {
  it('runs the four application processes from one image, as compose builds one image for all four', () => {
    const images = new Set(APPS.map((name) => container(name).image));
    expect(images.size).toBe(1);
    expect([...images][0]).toMatch(/^koa-gateway:[\w.-]+$/);
    for (const name of APPS) expect(service(compose, name).build).toBe('.');
  });

  it.each(['redis', 'otel-collector'])('pulls %s at the tag compose pins', (name) => {
    expect(container(name).image).toBe(service(compose, name).image);
  });

  it.each([...APPS, 'redis', 'otel-collector'])("starts %s with compose's command, keeping the image's entrypoint", (name) => {
    const c = container(name);
    expect(c.command).toBeUndefined();
    expect(c.args).toEqual(service(compose, name).command);
  });

  it.each([...APPS, 'redis', 'otel-collector'])('opens on %s the ports compose exposes or publishes, and no others', (name) => {
    const ports = (container(name).ports ?? []).map((p) => p.containerPort).sort();
    expect(ports).toEqual([...new Set(containerPorts(service(compose, name)))].sort());
  });

  it.each(APPS)('gives %s the environment variables compose gives it, no more, no fewer', (name) => {
    const keys = [...envMap(container(name)).keys()].sort();
    expect(keys).toEqual(Object.keys(service(compose, name).environment).sort());
  });

  it.each(APPS)('gives %s the values compose gives it, except where a difference is intended', (name) => {
    const composeEnv = service(compose, name).environment;
    const intended = INTENDED_DIFFERENCES[name] ?? {};
    const differing = [...envMap(container(name)).values()]
      .filter((variable) => !(variable.name in intended))
      .filter((variable) => variable.value !== composeValue(composeEnv[variable.name] ?? ''))
      .map((variable) => `${variable.name}: ${variable.value ?? JSON.stringify(variable.valueFrom)} vs ${composeEnv[variable.name]}`);
    expect(differing).toEqual([]);
    for (const key of Object.keys(intended)) expect(envMap(container(name)).has(key)).toBe(true);
  });

  it('names each Service as compose names the service, so every URL in the env is the compose one', () => {
    const urls = APPS.flatMap((name) => [...envMap(container(name)).values()].flatMap((v) => (v.value && /^(https?|redis):\/\//.test(v.value) ? [{ from: name, url: new URL(v.value) }] : [])));
    expect(urls.length).toBeGreaterThanOrEqual(6);
    for (const { from, url } of urls) {
      const target = services.find((s) => s.metadata.name === url.hostname);
      expect({ from, url: url.href, service: target?.metadata.name }).toEqual({ from, url: url.href, service: url.hostname });
      expect(target!.spec.ports.map((p) => p.port)).toContain(Number(url.port));
    }
  });
});

describe('configuration from the repository files (one source of truth)', () => {
  it('mounts gateway.config.json, byte for byte, at the path GATEWAY_CONFIG names', () => {
    const gateway = container('gateway');
    const map = configMap('gateway', 'config');
    expect(Object.keys(map.data)).toEqual(['gateway.config.json']);
    expect(map.data['gateway.config.json']).toBe(readText('gateway.config.json'));
    const mount = gateway.volumeMounts?.find((m) => m.name === 'config');
    // A whole-directory mount (no subPath): the kubelet updates it in place when the ConfigMap changes.
    expect(mount?.subPath).toBeUndefined();
    expect(envMap(gateway).get('GATEWAY_CONFIG')?.value).toBe(path.posix.join(mount!.mountPath, 'gateway.config.json'));
  });

  it('mounts otel/collector.yaml, byte for byte, where compose mounts it and the Collector reads it', () => {
    const collector = container('otel-collector');
    const map = configMap('otel-collector', 'config');
    expect(map.data['config.yaml']).toBe(readText('otel/collector.yaml'));
    const mount = collector.volumeMounts?.find((m) => m.name === 'config');
    const composeTarget = service(compose, 'otel-collector').volumes.find((v) => v.startsWith('./otel/collector.yaml:'))!.split(':')[1]!;
    expect(path.posix.join(mount!.mountPath, 'config.yaml')).toBe(composeTarget);
    expect(collector.args).toContain(`--config=${composeTarget}`);
  });

  it('is a gateway configuration the gateway accepts: the env, the mounted file, and a secret and a signing key of the required length', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'k8s-config-'));
    try {
      const gateway = container('gateway');
      const file = path.join(dir, 'gateway.config.json');
      writeFileSync(file, configMap('gateway', 'config').data['gateway.config.json']!);
      const env = Object.fromEntries([...envMap(gateway).values()].map((v) => [v.name, v.value ?? '']));
      const config = loadConfig({ ...env, GATEWAY_CONFIG: file, JWT_SECRET: RANDOM_SECRET, GATEWAY_SIGNING_KEY: RANDOM_KEY }, ROOT);
      expect(config.environment).toBe('production');
      expect(config.port).toBe(resolvePort(gateway, 'http'));
      expect(config.rateLimit.redisUrl).toBe('redis://redis:6379');
      expect(config.auth.secretSource).toBe('configured');
      // Production without the Secret's value refuses to start: the secretKeyRef is not optional.
      expect(() => loadConfig({ ...env, GATEWAY_CONFIG: file, JWT_SECRET: '', GATEWAY_SIGNING_KEY: RANDOM_KEY }, ROOT)).toThrow(/JWT_SECRET|auth\.secret/);
      // Nor without the signing key's.
      expect(() => loadConfig({ ...env, GATEWAY_CONFIG: file, JWT_SECRET: RANDOM_SECRET, GATEWAY_SIGNING_KEY: '' }, ROOT)).toThrow(/GATEWAY_SIGNING_KEY/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.each(Object.entries(SERVICE_KEYS))('is a %s environment the service accepts', (name, key) => {
    const variables = [...envMap(container(name)).values()];
    const env = Object.fromEntries(variables.map((v) => [v.name, v.value ?? '']));
    // Each key a Secret gives, a random one of its own (a service's key and the keys of those it calls differ).
    const required = variables.filter((v) => v.valueFrom?.secretKeyRef && !v.valueFrom.secretKeyRef.optional).map((v) => v.name);
    const keys = Object.fromEntries(required.map((variable) => [variable, randomBytes(48).toString('base64')]));
    expect(required).toContain('GATEWAY_SIGNING_KEY');
    expect(loadServiceEnv(key, { ...env, ...keys }).PORT).toBe(resolvePort(container(name), 'http'));
    // Production refuses to start without any of them.
    for (const variable of required) expect(() => loadServiceEnv(key, { ...env, ...keys, [variable]: '' })).toThrow(new RegExp(variable));
  });

  it('caps Redis below its memory limit, evicting only keys that expire, with the same command as compose', () => {
    // The rate-limit windows and the shared response cache live in it; without a cap the cache grew past the
    // limit and the kernel killed Redis, every window with it. src/response-store.ts keeps the cache below 3/4 of
    // the cap, so volatile-lru never evicts windows for cached answers (test/gateway/shared-rate-limit.test.ts).
    const args = container('redis').args ?? [];
    const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
    expect(option('--maxmemory-policy')).toBe('volatile-lru');
    const maxmemory = /^(\d+)mb$/.exec(option('--maxmemory') ?? '');
    expect(maxmemory).not.toBeNull();
    const limit = container('redis').resources?.limits?.memory ?? '';
    expect(limit).toMatch(/^\d+Mi$/);
    // Redis's `mb` is MiB. A quarter of the limit at least is left for what maxmemory does not count
    // (allocator fragmentation, client buffers, the process itself).
    expect(Number(maxmemory![1])).toBeGreaterThan(0);
    expect(Number(maxmemory![1])).toBeLessThanOrEqual(parseInt(limit, 10) * 0.75);
    expect(service(compose, 'redis').command).toEqual(args);
  });

  it('sizes the Collector above its memory_limiter, so the limiter acts before the kernel kills it', () => {
    const collectorConfig = asMap(readYaml('otel/collector.yaml'), 'otel/collector.yaml');
    const limiter = asMap(asMap(collectorConfig.processors, 'processors').memory_limiter, 'memory_limiter');
    const limit = container('otel-collector').resources?.limits?.memory ?? '';
    expect(limit).toMatch(/^\d+Mi$/);
    expect(parseInt(limit, 10)).toBeGreaterThan(Number(limiter.limit_mib) + 64);
  });
});

describe('the JWT secret', () => {
  it('comes from a Secret that is not part of the manifests', () => {
    expect(ofKind(objects, 'Secret')).toEqual([]);
    const secret = envMap(container('gateway')).get('JWT_SECRET');
    expect(secret?.value).toBeUndefined();
    expect(secret?.valueFrom?.secretKeyRef).toEqual({ name: 'gateway-jwt', key: 'secret' });
  });

  it.each(APPS)("%s reads its keys from its own Secret outside the manifests (no service holds the gateway's or another's)", (name) => {
    const key = envMap(container(name)).get('GATEWAY_SIGNING_KEY');
    expect(key?.value).toBeUndefined();
    expect(key?.valueFrom?.secretKeyRef).toEqual({ name: SIGNING_SECRETS[name], key: 'key' });
    // Only order-service reads more: the caller keys the services it calls gave it, from its own Secret too.
    const others = [...envMap(container(name)).values()].filter((v) => v.name !== 'GATEWAY_SIGNING_KEY' && v.valueFrom?.secretKeyRef).map((v) => `${v.name}: ${v.valueFrom!.secretKeyRef!.name}/${v.valueFrom!.secretKeyRef!.key}`);
    const expected = {
      gateway: ['JWT_SECRET: gateway-jwt/secret'],
      'user-service': ['GATEWAY_SIGNING_KEY_ACCEPTED: user-service-signing/accepted'],
      'order-service': ['GATEWAY_SIGNING_KEY_ACCEPTED: order-service-signing/accepted', 'USER_SERVICE_SIGNING_KEY: order-service-signing/users', 'NOTIF_SERVICE_SIGNING_KEY: order-service-signing/notifications'],
      'notification-service': ['GATEWAY_SIGNING_KEY_ACCEPTED: notification-service-signing/accepted'],
    }[name];
    expect(others.sort()).toEqual([...expected].sort());
  });

  it("creates every signing Secret with the README's commands, each service's key derived from the gateway's", () => {
    const readme = readText('README.md');
    for (const secret of Object.values(SIGNING_SECRETS)) expect(readme).toMatch(new RegExp(`kubectl create secret generic ${secret} [^\n]*--from-file=key=`));
    // Never as an argument, which `ps` shows while kubectl runs.
    expect(readme).not.toMatch(/kubectl create secret[^\n]*--from-literal/);
    // order-service's Secret holds the caller keys its Deployment reads, each from the tool's --caller.
    for (const called of ['users', 'notifications']) expect(readme).toMatch(new RegExp(`kubectl create secret generic order-service-signing (?:[^\n]|\\\\\n)*--from-file=${called}=<\\(npm run -s service-key -- --caller orders ${called} \\| tr -d '\\\\n'\\)`));
  });

  it('is never written as a value: no variable that looks like a credential has one', () => {
    const inline = deployments.flatMap((d) =>
      d.spec.template.spec.containers.flatMap((c) => (c.env ?? []).filter((v) => /SECRET|PASSWORD|TOKEN|API_KEY|SIGNING_KEY/i.test(v.name) && v.value !== undefined).map((v) => `${d.metadata.name}: ${v.name}`)),
    );
    expect(inline).toEqual([]);
  });

  it("is created by the README's command with the name and key the Deployment reads", () => {
    const readme = readText('README.md');
    const command = /kubectl create secret generic (\S+)[^\n]*--from-file=(\w+)=\/dev\/stdin/.exec(readme);
    expect(command).not.toBeNull();
    expect({ name: command![1], key: command![2] }).toEqual(envMap(container('gateway')).get('JWT_SECRET')?.valueFrom?.secretKeyRef);
  });
});

describe('the README', () => {
  it("builds the overlay in the README with the flags the tests build it with", () => {
    expect(readText('README.md')).toContain(`kubectl kustomize ${KUSTOMIZE_FLAGS.join(' ')} ${LOCAL_OVERLAY} | kubectl apply -f -`);
  });
});

describe('probes', () => {
  it('points the gateway readiness and liveness at /health (never at the dependencies), on the port it listens on', () => {
    const gateway = container('gateway');
    const port = Number(envMap(gateway).get('PORT')?.value);
    expect(gateway.readinessProbe?.httpGet?.path).toBe('/health');
    expect(gateway.livenessProbe?.httpGet?.path).toBe('/health');
    for (const probe of [gateway.readinessProbe, gateway.livenessProbe, gateway.startupProbe]) {
      expect(resolvePort(gateway, probe!.httpGet!.port)).toBe(port);
    }
  });

  describe('against the real gateway and services', () => {
    let stack: TestStack;
    beforeAll(async () => {
      stack = await startStack();
    });
    afterAll(async () => {
      await stack?.close();
    });

    const gatewayProbes = (['readinessProbe', 'livenessProbe', 'startupProbe'] as const).map((probe) => ({ probe }));
    it.each(gatewayProbes)('the gateway answers its $probe path with 200 when its services are up', async ({ probe }) => {
      const response = await fetch(new URL(container('gateway')[probe]!.httpGet!.path, stack.gateway.url));
      expect(response.status).toBe(200);
    });

    it('answers a path no probe may use with 404 (the check above tells paths apart)', async () => {
      const response = await fetch(new URL('/healthz', stack.gateway.url));
      expect(response.status).toBe(404);
    });

    // One dead service must not take every gateway pod out of the Service: the other routes still work, and
    // the dead one's get the gateway's own answer.
    it('keeps the gateway in the Service while a service is down (/ready says degraded), answering its routes itself', async () => {
      await stack.notifications.close();
      await waitFor(async () => (await fetch(new URL('/ready', stack.gateway.url))).status === 503, '/ready to see notification-service down', 15_000);
      expect((await fetch(new URL(container('gateway').readinessProbe!.httpGet!.path, stack.gateway.url))).status).toBe(200);
      expect((await fetch(new URL(container('gateway').livenessProbe!.httpGet!.path, stack.gateway.url))).status).toBe(200);
      const token = await login(stack.gateway.url);
      expect((await fetch(new URL('/api/users/1', stack.gateway.url), { headers: { authorization: `Bearer ${token}` } })).status).toBe(200);
      const dead = await fetch(new URL('/api/notifications', stack.gateway.url), { headers: { authorization: `Bearer ${token}` } });
      expect([502, 503]).toContain(dead.status);
      expect(await dead.json()).toMatchObject({ requestId: dead.headers.get(HEADER.requestId) });
    });
  });

  it.each(Object.keys(SERVICE_KEYS))('%s answers its readiness and liveness paths with 200', async (name) => {
    const quiet = memoryLogger(name).logger;
    const app =
      name === 'user-service'
        ? await createUsersApp({ logger: quiet })
        : name === 'order-service'
          ? createOrdersApp({ logger: quiet, usersUrl: 'http://127.0.0.1:9', notificationsUrl: 'http://127.0.0.1:9' })
          : createNotificationsApp({ logger: quiet });
    const server: TestServer = await listen(app.callback());
    try {
      const c = container(name);
      for (const probe of [c.readinessProbe, c.livenessProbe]) {
        expect(resolvePort(c, probe!.httpGet!.port)).toBe(Number(envMap(c).get('PORT')?.value));
        expect((await fetch(new URL(probe!.httpGet!.path, server.url))).status).toBe(200);
      }
    } finally {
      await server.close();
    }
  });
});

describe('the gateway in the cluster', () => {
  const gateway = deployment('gateway');

  it('runs 2 replicas, scaled on CPU by an autoscaling/v2 HorizontalPodAutoscaler that never goes below them', () => {
    expect(gateway.spec.replicas).toBe(2);
    const hpa = named<K8sObject & { apiVersion: string; spec: { scaleTargetRef: { kind: string; name: string }; minReplicas: number; maxReplicas: number; metrics: { type: string; resource?: { name: string; target: { type: string } } }[] } }>(objects, 'HorizontalPodAutoscaler', 'gateway');
    expect(hpa.apiVersion).toBe('autoscaling/v2');
    expect(hpa.spec.scaleTargetRef).toMatchObject({ kind: 'Deployment', name: 'gateway' });
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(gateway.spec.replicas!);
    expect(hpa.spec.maxReplicas).toBeGreaterThan(hpa.spec.minReplicas);
    expect(hpa.spec.metrics).toContainEqual(expect.objectContaining({ type: 'Resource', resource: expect.objectContaining({ name: 'cpu', target: expect.objectContaining({ type: 'Utilization' }) }) }));
    // Utilization is a share of the request: without one the HPA has nothing to compute.
    expect(container('gateway').resources?.requests?.cpu).toBeDefined();
  });

  it('keeps a gateway serving through voluntary disruptions (PodDisruptionBudget over its pods)', () => {
    const pdb = named<K8sObject & { spec: { minAvailable?: number; selector: { matchLabels: Record<string, string> } } }>(objects, 'PodDisruptionBudget', 'gateway');
    expect(selects(pdb.spec.selector, gateway.spec.template.metadata.labels)).toBe(true);
    expect(pdb.spec.minAvailable).toBeGreaterThanOrEqual(1);
    expect(pdb.spec.minAvailable).toBeLessThan(gateway.spec.replicas!);
  });

  it.each(APPS)('%s waits in preStop for its endpoint removal, and gets the time to drain after it', (name) => {
    const spec = deployment(name).spec.template.spec;
    const preStop = spec.containers[0]!.lifecycle?.preStop?.sleep?.seconds ?? 0;
    expect(preStop).toBeGreaterThanOrEqual(3);
    // In-flight requests get 10 s after SIGTERM (otel/lifecycle.ts runServer's default), then telemetry flushes; the
    // gateway also settles what it cut and waits for its background fetches (GATEWAY_SHUTDOWN_STEPS_MS). Counted
    // without those, a grace of 21 s passed while the gateway's flush could still be running at SIGKILL.
    const shutdownMs = name === 'gateway' ? GATEWAY_SHUTDOWN_STEPS_MS : DEFAULT_DRAIN_TIMEOUT_MS + SHUTDOWN_TIMEOUT_MS;
    expect((spec.terminationGracePeriodSeconds ?? 30) * 1000).toBeGreaterThan(preStop * 1000 + shutdownMs);
  });
});

describe('every pod', () => {
  it.each(deployments.map((d) => [d.metadata.name, d] as const))('%s runs as a non-root user with a read-only root filesystem and no privileges', (_name, d) => {
    const pod = d.spec.template.spec;
    expect(pod.securityContext?.runAsNonRoot).toBe(true);
    // Numeric: the kubelet cannot check runAsNonRoot against an image's user name.
    expect(pod.securityContext?.runAsUser).toBeGreaterThan(0);
    expect(pod.securityContext?.seccompProfile?.type).toBe('RuntimeDefault');
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(pod.enableServiceLinks).toBe(false);
    for (const c of pod.containers) {
      expect(c.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
      expect(c.resources?.requests?.cpu).toBeDefined();
      expect(c.resources?.requests?.memory).toBeDefined();
      expect(c.resources?.limits?.memory).toBeDefined();
      expect(c.readinessProbe).toBeDefined();
      expect(c.livenessProbe).toBeDefined();
    }
  });

  it.each(APPS)('%s has a writable /tmp on a bounded emptyDir (its root filesystem is read-only)', (name) => {
    const pod = deployment(name).spec.template.spec;
    const tmp = pod.containers[0]!.volumeMounts?.find((m) => m.mountPath === '/tmp');
    const volume = pod.volumes?.find((v) => v.name === tmp?.name);
    expect(volume?.emptyDir).toMatchObject({ sizeLimit: expect.any(String) });
  });

  it('runs in a namespace that enforces the restricted Pod Security Standard', () => {
    const namespace = named<K8sObject>(objects, 'Namespace', 'koa-gateway');
    expect(namespace.metadata.labels?.['pod-security.kubernetes.io/enforce']).toBe('restricted');
  });
});

describe('Services and NetworkPolicies', () => {
  /** The pods each Deployment runs, by name, with their labels and container. */
  const pods = deployments.map((d) => ({ name: d.metadata.name, labels: d.spec.template.metadata.labels, container: d.spec.template.spec.containers[0]! }));

  it.each(services.map((s) => [s.metadata.name, s] as const))('Service %s selects the pods of exactly one Deployment, on ports they have', (_name, s) => {
    const matched = pods.filter((p) => selects({ matchLabels: s.spec.selector }, p.labels));
    expect(matched.map((p) => p.name)).toEqual([s.metadata.name === 'gateway-metrics' ? 'gateway' : s.metadata.name]);
    for (const port of s.spec.ports) expect(resolvePort(matched[0]!.container, port.targetPort ?? port.port)).toBeDefined();
  });

  // Beside `http`, an overlay making the gateway Service a LoadBalancer or NodePort published /metrics with it, only
  // a NetworkPolicy (not every network plugin enforces them) in the way.
  it("keeps the gateway's metrics port out of the Service that carries its public port, in a headless one", () => {
    const gateway = services.find((s) => s.metadata.name === 'gateway')!;
    const metrics = services.find((s) => s.metadata.name === 'gateway-metrics') as (typeof services)[number] & { spec: { clusterIP?: string } };
    expect(gateway.spec.ports.map((p) => p.name)).toEqual(['http']);
    expect(metrics.spec.ports.map((p) => p.name)).toEqual(['metrics']);
    expect(metrics.spec.clusterIP).toBe('None');
  });

  it.each(deployments.map((d) => [d.metadata.name, d] as const))("Deployment %s's selector matches its own pod template and no other", (_name, d) => {
    expect(pods.filter((p) => selects(d.spec.selector, p.labels)).map((p) => p.name)).toEqual([d.metadata.name]);
  });

  it.each(policies.map((p) => [p.metadata.name, p] as const))('NetworkPolicy %s selects existing pods, and admits pods that exist', (_name, policy) => {
    expect(pods.some((p) => selects(policy.spec.podSelector, p.labels))).toBe(true);
    const sameNamespacePeers = (policy.spec.ingress ?? []).flatMap((rule) => rule.from ?? []).filter((peer) => peer.podSelector && !peer.namespaceSelector);
    for (const peer of sameNamespacePeers) expect(pods.some((p) => selects(peer.podSelector!, p.labels))).toBe(true);
  });

  /** Whether the policies let `from` (a pod of this namespace) open a connection to `to` on `port`. */
  function admitted(from: (typeof pods)[number], to: (typeof pods)[number], port: number): boolean {
    const applying = policies.filter((policy) => selects(policy.spec.podSelector, to.labels) && (policy.spec.policyTypes ?? ['Ingress']).includes('Ingress'));
    if (applying.length === 0) return true;
    return applying.some((policy) =>
      (policy.spec.ingress ?? []).some((rule) => {
        const peerOk = rule.from === undefined || rule.from.some((peer) => peer.podSelector !== undefined && peer.namespaceSelector === undefined && selects(peer.podSelector, from.labels));
        const portOk = rule.ports === undefined || rule.ports.some((p) => p.port === undefined || resolvePort(to.container, p.port) === port);
        return peerOk && portOk;
      }),
    );
  }

  /** Who calls whom, from the env: every URL names a Service, which selects the pods it reaches. */
  function callsFromEnv(): string[] {
    return pods.flatMap((from) =>
      [...envMap(from.container).values()].flatMap((v) => {
        if (!v.value || !/^(https?|redis):\/\//.test(v.value)) return [];
        const url = new URL(v.value);
        const target = services.find((s) => s.metadata.name === url.hostname)!;
        const servicePort = target.spec.ports.find((p) => p.port === Number(url.port))!;
        return pods
          .filter((to) => selects({ matchLabels: target.spec.selector }, to.labels))
          .map((to) => `${from.name} -> ${to.name}:${resolvePort(to.container, servicePort.targetPort ?? servicePort.port)}`);
      }),
    );
  }

  it('lets exactly the calls the code makes through between the pods, and nothing else', () => {
    const ports = (p: (typeof pods)[number]) => (p.container.ports ?? []).map((port) => port.containerPort);
    const allowed = pods.flatMap((from) => pods.filter((to) => to !== from).flatMap((to) => ports(to).filter((port) => admitted(from, to, port)).map((port) => `${from.name} -> ${to.name}:${port}`)));
    const expected = callsFromEnv().filter((call) => !call.startsWith('gateway -> gateway'));
    // The gateway's public port is open to every client (other pods of the namespace included).
    const gatewayPublic = pods.filter((from) => from.name !== 'gateway').map((from) => `${from.name} -> gateway:3000`);
    expect(new Set(allowed)).toEqual(new Set([...expected, ...gatewayPublic]));
  });

  it.each([
    { desc: 'order-service may call user-service', from: 'order-service', to: 'user-service', port: 4001, allowed: true },
    { desc: 'order-service may call notification-service', from: 'order-service', to: 'notification-service', port: 4003, allowed: true },
    { desc: 'user-service may not call order-service', from: 'user-service', to: 'order-service', port: 4002, allowed: false },
    { desc: 'notification-service may not call user-service', from: 'notification-service', to: 'user-service', port: 4001, allowed: false },
    { desc: 'only the gateway reaches Redis', from: 'order-service', to: 'redis', port: 6379, allowed: false },
    { desc: 'the metrics port is closed to the services', from: 'user-service', to: 'gateway', port: 9464, allowed: false },
  ])('$desc', ({ from, to, port, allowed }) => {
    const byName = (name: string) => pods.find((p) => p.name === name)!;
    expect(admitted(byName(from), byName(to), port)).toBe(allowed);
  });
});
