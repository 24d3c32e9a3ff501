import { readText } from './stack-files';
import {
  BASE,
  installedVersion,
  LOCAL_OVERLAY,
  named,
  render,
  requireKubectl,
  SCHEMA_PACKAGE,
  strictFieldErrors,
  validateSchemas,
  type Deployment,
  type K8sObject,
} from './kubernetes-manifests';

/**
 * deploy/kubernetes renders with the pinned kustomize, and every object it renders is one the Kubernetes API
 * accepts: checked against the API schemas of a pinned Kubernetes version, offline.
 */

/** The API versions a v1.36 API server serves as stable for each kind used here (nothing deprecated, no beta). */
const SERVED_KINDS: Record<string, string> = {
  Namespace: 'v1',
  ConfigMap: 'v1',
  Service: 'v1',
  Deployment: 'apps/v1',
  HorizontalPodAutoscaler: 'autoscaling/v2',
  PodDisruptionBudget: 'policy/v1',
  NetworkPolicy: 'networking.k8s.io/v1',
};

const rendered = { base: render(BASE), local: render(LOCAL_OVERLAY) };

function clone<T>(value: T): T {
  return structuredClone(value);
}

describe('rendering deploy/kubernetes', () => {
  it('uses the pinned kubectl and schema package', () => {
    expect(requireKubectl()).toMatch(/kubectl$/);
    const pkg = JSON.parse(readText('package.json')) as { devDependencies: Record<string, string> };
    expect(pkg.devDependencies[SCHEMA_PACKAGE.name]).toBe(SCHEMA_PACKAGE.version);
    expect(installedVersion(SCHEMA_PACKAGE.name)).toBe(SCHEMA_PACKAGE.version);
  });

  it.each(Object.entries(rendered))('renders %s with the gateway, the three services, Redis and the Collector', (_name, objects) => {
    const workloads = objects.filter((o) => o.kind === 'Deployment').map((o) => o.metadata.name).sort();
    expect(workloads).toEqual(['gateway', 'notification-service', 'order-service', 'otel-collector', 'redis', 'user-service']);
    const services = objects.filter((o) => o.kind === 'Service').map((o) => o.metadata.name).sort();
    // One per workload, and the gateway's metrics listener in a headless one of its own (never beside its public port).
    expect(services).toEqual([...workloads, 'gateway-metrics'].sort());
  });

  it('puts every object of the local overlay in its namespace, which it creates', () => {
    const namespaced = rendered.local.filter((o) => o.kind !== 'Namespace');
    expect(new Set(namespaced.map((o) => o.metadata.namespace))).toEqual(new Set(['koa-gateway']));
    expect(named(rendered.local, 'Namespace', 'koa-gateway')).toBeDefined();
  });

  it('gives every object a unique kind and name', () => {
    for (const objects of Object.values(rendered)) {
      const keys = objects.map((o) => `${o.kind}/${o.metadata.name}`);
      expect(keys.length).toBe(new Set(keys).size);
    }
  });
});

describe(`Kubernetes API schemas (${SCHEMA_PACKAGE.name} ${SCHEMA_PACKAGE.version})`, () => {
  it.each(Object.entries(rendered))('accepts every object %s renders', (_name, objects) => {
    const results = validateSchemas(objects);
    expect(results).toHaveLength(objects.length);
    expect(results.filter((r) => r.errors.length > 0)).toEqual([]);
  });

  it.each(Object.entries(rendered))('finds only stable API versions that a current cluster serves in %s', (_name, objects) => {
    const unexpected = objects.filter((o) => SERVED_KINDS[o.kind] !== o.apiVersion).map((o) => `${o.apiVersion} ${o.kind}`);
    expect(unexpected).toEqual([]);
  });

  const gateway = named<Deployment>(rendered.local, 'Deployment', 'gateway');
  const broken: { desc: string; object: () => unknown; error: RegExp }[] = [
    {
      desc: 'replicas as a string',
      object: () => ({ ...clone(gateway), spec: { ...clone(gateway.spec), replicas: 'two' } }),
      error: /\/spec\/replicas must be integer/,
    },
    {
      desc: 'no pod selector',
      object: () => {
        const d = clone(gateway);
        delete (d.spec as Partial<Deployment['spec']>).selector;
        return d;
      },
      error: /^\/spec must have required property selector$/m,
    },
    {
      desc: 'a container port given by name',
      object: () => {
        const d = clone(gateway);
        d.spec.template.spec.containers[0]!.ports = [{ name: 'http', containerPort: 'http' as unknown as number }];
        return d;
      },
      error: /containerPort must be integer/,
    },
    {
      desc: 'a container without a name',
      object: () => {
        const d = clone(gateway);
        delete (d.spec.template.spec.containers[0] as { name?: string }).name;
        return d;
      },
      error: /containers\/0 must have required property name/,
    },
    {
      desc: 'an env list written as a map',
      object: () => {
        const d = clone(gateway);
        (d.spec.template.spec.containers[0] as { env: unknown }).env = { PORT: '3000' };
        return d;
      },
      error: /\/env must be array/,
    },
    {
      desc: 'a kind the API does not have',
      object: () => ({ ...clone(gateway), kind: 'Deployement' }),
      error: /no schema for apps\/v1 Deployement/,
    },
    {
      desc: 'a kind under the wrong API group',
      object: () => ({ ...clone(gateway), apiVersion: 'v1' }),
      error: /no schema for v1 Deployment/,
    },
  ];

  const brokenOthers: { desc: string; object: () => K8sObject; error: RegExp }[] = [
    {
      desc: 'a Service of a type the API does not have',
      object: () => {
        const service = clone(named<K8sObject & { spec: { type?: string } }>(rendered.local, 'Service', 'gateway'));
        service.spec.type = 'Cluster';
        return service;
      },
      error: /\/spec\/type must be equal to one of the allowed values/,
    },
    {
      desc: 'a NetworkPolicy with an unknown policy type',
      object: () => {
        const policy = clone(named<K8sObject & { spec: { policyTypes: string[] } }>(rendered.local, 'NetworkPolicy', 'default-deny-ingress'));
        policy.spec.policyTypes = ['Inbound'];
        return policy;
      },
      error: /\/spec\/policyTypes\/0 must be equal to one of the allowed values/,
    },
    {
      desc: 'a HorizontalPodAutoscaler whose target type is not a string',
      object: () => {
        const hpa = clone(named<K8sObject & { spec: { metrics: { resource: { target: { type: unknown } } }[] } }>(rendered.local, 'HorizontalPodAutoscaler', 'gateway'));
        hpa.spec.metrics[0]!.resource.target.type = 42;
        return hpa;
      },
      error: /target\/type must be string/,
    },
  ];

  // One validator process for every broken object.
  let brokenResults: Map<string, string[]>;
  beforeAll(() => {
    const rows = [...broken, ...brokenOthers];
    const results = validateSchemas(rows.map((row) => row.object()));
    brokenResults = new Map(rows.map((row, i) => [row.desc, results[i]!.errors]));
  });

  it.each(broken)('rejects a Deployment with $desc', ({ desc, error }) => {
    const errors = brokenResults.get(desc)!;
    expect(errors.length).toBeGreaterThan(0);
    expect(errors.join('\n')).toMatch(error);
  });

  it.each(brokenOthers)('rejects $desc', ({ desc, error }) => {
    expect(brokenResults.get(desc)!.join('\n')).toMatch(error);
  });
});

describe('fields the API does not have (strict, like kubectl --validate=strict)', () => {
  const gateway = named<Deployment>(rendered.local, 'Deployment', 'gateway');
  const misspelled: { desc: string; object: () => K8sObject; error: RegExp }[] = [
    {
      desc: 'a Deployment whose container has readinesProbe',
      object: () => {
        const d = clone(gateway);
        const c = d.spec.template.spec.containers[0]! as unknown as Record<string, unknown>;
        c.readinesProbe = c.readinessProbe;
        delete c.readinessProbe;
        return d;
      },
      error: /'"readinesProbe"' does not exist in type 'IContainer'/,
    },
    {
      desc: 'a NetworkPolicy with podSelecter',
      object: () => {
        const policy = clone(named<K8sObject & { spec: Record<string, unknown> }>(rendered.local, 'NetworkPolicy', 'redis'));
        policy.spec.podSelecter = policy.spec.podSelector;
        return policy;
      },
      error: /'"podSelecter"' does not exist/,
    },
    {
      desc: 'a PodDisruptionBudget with minAvaliable',
      object: () => {
        const pdb = clone(named<K8sObject & { spec: Record<string, unknown> }>(rendered.local, 'PodDisruptionBudget', 'gateway'));
        pdb.spec.minAvaliable = pdb.spec.minAvailable;
        delete pdb.spec.minAvailable;
        return pdb;
      },
      error: /'"minAvaliable"' does not exist/,
    },
  ];

  // One compile for the rendered objects and the misspelled ones.
  let errors: { base: string[][]; local: string[][]; misspelled: Map<string, string[]> };
  beforeAll(() => {
    const all = strictFieldErrors([...rendered.base, ...rendered.local, ...misspelled.map((row) => row.object())]);
    const baseCount = rendered.base.length;
    const localCount = rendered.local.length;
    errors = {
      base: all.slice(0, baseCount),
      local: all.slice(baseCount, baseCount + localCount),
      misspelled: new Map(misspelled.map((row, i) => [row.desc, all[baseCount + localCount + i]!])),
    };
  }, 60_000);

  it.each(['base', 'local'] as const)('finds none in %s', (name) => {
    const found = rendered[name].flatMap((o, i) => errors[name][i]!.map((e) => `${o.kind}/${o.metadata.name}: ${e}`));
    expect(found).toEqual([]);
  });

  it.each(misspelled)('rejects $desc', ({ desc, error }) => {
    expect(errors.misspelled.get(desc)!.join('\n')).toMatch(error);
  });
});
