import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { parseAllDocuments } from 'yaml';
import { repoPath, ROOT } from './stack-files';

/**
 * Renders deploy/kubernetes with the pinned kubectl's kustomize and reads the objects, for the Kubernetes
 * tests. Nothing here talks to a cluster.
 */

/** kubectl (and its built-in kustomize v5.7.1), installed by deploy/kubernetes/install-kubectl.sh. */
export const KUBECTL_VERSION = 'v1.35.2';
export const KUBECTL = repoPath('node_modules/.cache', `kubectl-${KUBECTL_VERSION}`, 'kubectl');

/**
 * The schema package, pinned exactly in package.json: generated from the Kubernetes v1.36.0 OpenAPI spec, merged
 * with older specs for APIs since removed (kubernetes-schemas.test.ts allows only the stable versions).
 */
export const SCHEMA_PACKAGE = { name: 'kubernetes-models', version: '5.1.0' } as const;

/**
 * The base reads gateway.config.json and otel/collector.yaml from the repository, outside its own folder:
 * every build passes this flag (the README's commands too).
 */
export const KUSTOMIZE_FLAGS = ['--load-restrictor', 'LoadRestrictionsNone'] as const;

export const BASE = 'deploy/kubernetes/base';
export const LOCAL_OVERLAY = 'deploy/kubernetes/overlays/local';

/** Fails with the way out when the pinned kubectl is missing (never skips). */
export function requireKubectl(): string {
  if (!existsSync(KUBECTL)) {
    throw new Error(`kubectl ${KUBECTL_VERSION} is not installed at ${path.relative(ROOT, KUBECTL)}: run \`bash deploy/kubernetes/install-kubectl.sh\` (.ci/run does)`);
  }
  const version = execFileSync(KUBECTL, ['version', '--client'], { encoding: 'utf8' });
  if (!version.includes(`Client Version: ${KUBECTL_VERSION}`)) {
    throw new Error(`${path.relative(ROOT, KUBECTL)} is not kubectl ${KUBECTL_VERSION}: ${version.trim()}`);
  }
  return KUBECTL;
}

export type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [key: string]: unknown;
};

export function render(kustomization: string): K8sObject[] {
  const yaml = execFileSync(requireKubectl(), ['kustomize', ...KUSTOMIZE_FLAGS, kustomization], { cwd: ROOT, encoding: 'utf8' });
  return parseAllDocuments(yaml).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`${kustomization}: ${doc.errors[0]!.message}`);
    return doc.toJS() as K8sObject;
  });
}

export interface SchemaResult {
  kind: string;
  name: string;
  errors: string[];
}

/** Each object checked against its kind's schema (test/stack/kubernetes-schema.mjs, in a node child process). */
export function validateSchemas(objects: readonly unknown[]): SchemaResult[] {
  const script = path.join(__dirname, 'kubernetes-schema.mjs');
  const run = spawnSync(process.execPath, [script], { cwd: ROOT, input: JSON.stringify(objects), encoding: 'utf8', env: { PATH: process.env.PATH ?? '' } });
  if (run.status !== 0) throw new Error(`schema validation did not run: ${run.stderr}`);
  return JSON.parse(run.stdout) as SchemaResult[];
}

/** `apps/v1` + `Deployment` -> the schema package's module for that kind (`v1` is the core group's folder). */
function modelModule(apiVersion: string, kind: string): string {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : [undefined, apiVersion];
  return group === undefined ? `kubernetes-models/${version}/${kind}` : `kubernetes-models/${group}/${version}/${kind}`;
}

/**
 * Fields the API does not have, like `kubectl apply --validate=strict`: the JSON schemas accept unknown
 * properties (Kubernetes' OpenAPI does not close its objects), so each object is also type-checked as an
 * object literal against the package's interfaces, generated from the same OpenAPI spec, where TypeScript
 * refuses any property the type does not declare. One compile for all objects; messages per object.
 */
export function strictFieldErrors(objects: readonly K8sObject[]): string[][] {
  const file = path.join(__dirname, '__kubernetes-strict-check__.mts');
  // Two lines per object: its type import, then the object; a diagnostic's line gives the object.
  const source = objects
    .map((o, i) => `import type { I${o.kind} as T${i} } from ${JSON.stringify(modelModule(o.apiVersion, o.kind))};\nexport const o${i}: T${i} = ${JSON.stringify(o)};\n`)
    .join('');
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2023,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const readFromDisk = host.getSourceFile.bind(host);
  const existsOnDisk = host.fileExists.bind(host);
  // The checked file exists only in memory, beside this one, so the package resolves from the repository.
  host.getSourceFile = (name, language, ...rest) => (name === file ? ts.createSourceFile(name, source, language) : readFromDisk(name, language, ...rest));
  host.fileExists = (name) => name === file || existsOnDisk(name);
  const program = ts.createProgram([file], options, host);
  const errors: string[][] = objects.map(() => []);
  for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
    const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, ' ');
    if (diagnostic.file?.fileName !== file || diagnostic.start === undefined) throw new Error(`strict check did not run: ${message}`);
    const line = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start).line;
    errors[Math.floor(line / 2)]!.push(message);
  }
  return errors;
}

export function installedVersion(pkg: string): string {
  return (JSON.parse(readFileSync(repoPath('node_modules', pkg, 'package.json'), 'utf8')) as { version: string }).version;
}

// ---- the shapes the tests read (only the fields they use) -------------------------------------------------

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string; optional?: boolean }; [source: string]: unknown };
}

export interface Probe {
  httpGet?: { path: string; port: number | string };
  tcpSocket?: { port: number | string };
  exec?: { command: string[] };
}

export interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  ports?: { name?: string; containerPort: number }[];
  env?: EnvVar[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  startupProbe?: Probe;
  lifecycle?: { preStop?: { sleep?: { seconds: number }; exec?: { command: string[] } } };
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: { allowPrivilegeEscalation?: boolean; readOnlyRootFilesystem?: boolean; runAsNonRoot?: boolean; runAsUser?: number; capabilities?: { drop?: string[] }; seccompProfile?: { type: string } };
  volumeMounts?: { name: string; mountPath: string; subPath?: string; readOnly?: boolean }[];
}

export interface PodSpec {
  containers: Container[];
  volumes?: { name: string; configMap?: { name: string }; emptyDir?: unknown; secret?: unknown }[];
  securityContext?: { runAsNonRoot?: boolean; runAsUser?: number; seccompProfile?: { type: string } };
  terminationGracePeriodSeconds?: number;
  automountServiceAccountToken?: boolean;
  enableServiceLinks?: boolean;
}

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist'; values?: string[] }[];
}

export interface Deployment extends K8sObject {
  spec: { replicas?: number; selector: LabelSelector; template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
}

export interface Service extends K8sObject {
  spec: { selector: Record<string, string>; ports: { name?: string; port: number; targetPort?: number | string }[] };
}

export interface NetworkPolicyPeer {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
  ipBlock?: unknown;
}

export interface NetworkPolicy extends K8sObject {
  spec: {
    podSelector: LabelSelector;
    policyTypes?: string[];
    ingress?: { from?: NetworkPolicyPeer[]; ports?: { port?: number | string; protocol?: string }[] }[];
  };
}

export function ofKind<T extends K8sObject>(objects: readonly K8sObject[], kind: string): T[] {
  return objects.filter((o) => o.kind === kind) as T[];
}

export function named<T extends K8sObject>(objects: readonly K8sObject[], kind: string, name: string): T {
  const found = ofKind<T>(objects, kind).find((o) => o.metadata.name === name);
  if (!found) throw new Error(`no ${kind} ${name} in the rendered manifests`);
  return found;
}

/** Kubernetes label-selector semantics; an empty selector selects everything. */
export function selects(selector: LabelSelector, labels: Readonly<Record<string, string>>): boolean {
  const byLabel = Object.entries(selector.matchLabels ?? {}).every(([key, value]) => labels[key] === value);
  const byExpression = (selector.matchExpressions ?? []).every(({ key, operator, values = [] }) => {
    switch (operator) {
      case 'In':
        return key in labels && values.includes(labels[key]!);
      case 'NotIn':
        return !(key in labels) || !values.includes(labels[key]!);
      case 'Exists':
        return key in labels;
      case 'DoesNotExist':
        return !(key in labels);
    }
  });
  return byLabel && byExpression;
}

/** A container port given by number or by name, as a number. */
export function resolvePort(container: Container, port: number | string): number | undefined {
  if (typeof port === 'number') return port;
  return container.ports?.find((p) => p.name === port)?.containerPort;
}

export function envMap(container: Container): Map<string, EnvVar> {
  return new Map((container.env ?? []).map((variable) => [variable.name, variable]));
}
