import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';

/**
 * Readers for the files that describe the compose stack: docker-compose.yml, the Dockerfile, the Collector,
 * Loki and Prometheus configs, and Grafana's provisioning. They parse and shape-check; the tests assert the
 * wiring.
 */

export const ROOT = path.resolve(__dirname, '../..');

export function repoPath(...parts: string[]): string {
  return path.join(ROOT, ...parts);
}

export function readText(relative: string): string {
  return readFileSync(repoPath(relative), 'utf8');
}

/** Parses YAML with `<<` merge keys on, as Compose and docker-compose 1.29 read them. */
export function readYaml(relative: string): unknown {
  return parse(readText(relative), { merge: true });
}

export type YamlMap = Record<string, unknown>;

export function isMap(value: unknown): value is YamlMap {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function asMap(value: unknown, where: string): YamlMap {
  if (!isMap(value)) throw new Error(`${where}: expected a mapping, got ${JSON.stringify(value)}`);
  return value;
}

export function asList(value: unknown, where: string): unknown[] {
  if (!Array.isArray(value)) throw new Error(`${where}: expected a list, got ${JSON.stringify(value)}`);
  return value;
}

export function asString(value: unknown, where: string): string {
  if (typeof value !== 'string') throw new Error(`${where}: expected a string, got ${JSON.stringify(value)}`);
  return value;
}

// ---- docker-compose.yml -------------------------------------------------------------------------------

export interface ComposeService {
  name: string;
  image?: string;
  build?: unknown;
  command: string[];
  ports: string[];
  expose: string[];
  environment: Record<string, string>;
  healthcheck?: { test: string[] };
  dependsOn: Record<string, string>;
  volumes: string[];
  /** `stop_grace_period` as written (`30s`), if set. */
  stopGracePeriod?: string;
  /** `read_only`, `cap_drop`, `security_opt` and `tmpfs` as written. */
  readOnly: boolean;
  capDrop: string[];
  securityOpt: string[];
  tmpfs: string[];
}

export interface ComposeFile {
  services: Map<string, ComposeService>;
  volumes: string[];
}

function stringList(value: unknown, where: string): string[] {
  if (value === undefined) return [];
  return asList(value, where).map((item, i) => asString(String(item), `${where}[${i}]`));
}

export function readCompose(): ComposeFile {
  const file = asMap(readYaml('docker-compose.yml'), 'docker-compose.yml');
  const services = new Map<string, ComposeService>();
  for (const [name, raw] of Object.entries(asMap(file.services, 'services'))) {
    const where = `services.${name}`;
    const service = asMap(raw, where);
    const environment: Record<string, string> = {};
    if (service.environment !== undefined) {
      // Only the mapping form: a list of KEY=VALUE strings would hide duplicate keys.
      for (const [key, value] of Object.entries(asMap(service.environment, `${where}.environment`))) {
        environment[key] = String(value);
      }
    }
    const dependsOn: Record<string, string> = {};
    if (service.depends_on !== undefined) {
      for (const [target, rule] of Object.entries(asMap(service.depends_on, `${where}.depends_on`))) {
        dependsOn[target] = asString(asMap(rule, `${where}.depends_on.${target}`).condition, `${where}.depends_on.${target}.condition`);
      }
    }
    const healthcheck = service.healthcheck === undefined
      ? undefined
      : { test: stringList(asMap(service.healthcheck, `${where}.healthcheck`).test, `${where}.healthcheck.test`) };
    services.set(name, {
      name,
      image: service.image === undefined ? undefined : asString(service.image, `${where}.image`),
      build: service.build,
      command: stringList(service.command, `${where}.command`),
      ports: stringList(service.ports, `${where}.ports`),
      expose: stringList(service.expose, `${where}.expose`),
      environment,
      healthcheck,
      dependsOn,
      volumes: stringList(service.volumes, `${where}.volumes`),
      stopGracePeriod: service.stop_grace_period === undefined ? undefined : asString(service.stop_grace_period, `${where}.stop_grace_period`),
      readOnly: service.read_only === true,
      capDrop: stringList(service.cap_drop, `${where}.cap_drop`),
      securityOpt: stringList(service.security_opt, `${where}.security_opt`),
      tmpfs: stringList(service.tmpfs, `${where}.tmpfs`),
    });
  }
  const volumes = file.volumes === undefined ? [] : Object.keys(asMap(file.volumes, 'volumes'));
  return { services, volumes };
}

export function service(compose: ComposeFile, name: string): ComposeService {
  const found = compose.services.get(name);
  if (!found) throw new Error(`docker-compose.yml has no service ${name}`);
  return found;
}

/** The compose services that run the application image (they are built, not pulled). */
export function appServices(compose: ComposeFile): ComposeService[] {
  return [...compose.services.values()].filter((s) => s.build !== undefined);
}

/** A service's `ports` entries (`[ip:]host:container[/tcp]`), parsed. */
export function publishedPorts(s: ComposeService): { ip: string; host: number; container: number }[] {
  return s.ports.map((spec) => {
    const match = /^(?:(\d+\.\d+\.\d+\.\d+):)?(\d+):(\d+)(?:\/tcp)?$/.exec(spec);
    if (!match) throw new Error(`${s.name}: unexpected port spec ${spec}`);
    return { ip: match[1] ?? '0.0.0.0', host: Number(match[2]), container: Number(match[3]) };
  });
}

/** The ports a service listens on inside the compose network: what it exposes or publishes. */
export function containerPorts(s: ComposeService): number[] {
  return [...s.expose.map(Number), ...publishedPorts(s).map((p) => p.container)];
}

/** `host:port` or `scheme://host:port/path` -> host and port. */
export function hostAndPort(endpoint: string): { host: string; port: number } {
  const url = new URL(endpoint.includes('://') ? endpoint : `tcp://${endpoint}`);
  return { host: url.hostname, port: Number(url.port) };
}

// ---- Dockerfile ---------------------------------------------------------------------------------------

export interface DockerStage {
  name: string;
  from: string;
  instructions: { keyword: string; args: string }[];
}

/** Splits a Dockerfile into stages of instructions (comments dropped, `\` continuations joined). */
export function readDockerfile(): DockerStage[] {
  const lines = readText('Dockerfile').split('\n');
  const logical: string[] = [];
  let pending = '';
  for (const line of lines) {
    const trimmed = line.trim();
    if (pending === '' && (trimmed === '' || trimmed.startsWith('#'))) continue;
    if (trimmed.endsWith('\\')) {
      pending += `${trimmed.slice(0, -1)} `;
      continue;
    }
    logical.push(pending + trimmed);
    pending = '';
  }
  const stages: DockerStage[] = [];
  for (const line of logical) {
    const match = /^(\S+)\s+(.*)$/.exec(line);
    if (!match) throw new Error(`Dockerfile: cannot read ${line}`);
    const keyword = match[1]!.toUpperCase();
    const args = match[2]!;
    if (keyword === 'FROM') {
      const from = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args);
      if (!from) throw new Error(`Dockerfile: cannot read FROM ${args}`);
      stages.push({ name: from[2] ?? String(stages.length), from: from[1]!, instructions: [] });
    } else {
      const stage = stages[stages.length - 1];
      if (!stage) throw new Error(`Dockerfile: ${keyword} before the first FROM`);
      stage.instructions.push({ keyword, args });
    }
  }
  return stages;
}

/** The exec-form (JSON array) arguments of an instruction such as CMD. */
export function execForm(args: string): string[] {
  const parsed: unknown = JSON.parse(args);
  if (!Array.isArray(parsed) || !parsed.every((a) => typeof a === 'string')) {
    throw new Error(`expected an exec-form JSON array, got ${args}`);
  }
  return parsed;
}

// ---- Grafana ------------------------------------------------------------------------------------------

export const GRAFANA_DATASOURCES = 'grafana/provisioning/datasources';
export const GRAFANA_DASHBOARD_PROVIDERS = 'grafana/provisioning/dashboards';
export const GRAFANA_DASHBOARDS = 'grafana/dashboards';

export function yamlFilesIn(relativeDir: string): string[] {
  if (!existsSync(repoPath(relativeDir))) return [];
  return readdirSync(repoPath(relativeDir))
    .filter((f) => f.endsWith('.yaml') || f.endsWith('.yml'))
    .map((f) => `${relativeDir}/${f}`);
}

export function jsonFilesIn(relativeDir: string): string[] {
  if (!existsSync(repoPath(relativeDir))) return [];
  return readdirSync(repoPath(relativeDir))
    .filter((f) => f.endsWith('.json'))
    .map((f) => `${relativeDir}/${f}`);
}

export interface Datasource extends YamlMap {
  name: string;
  type: string;
  uid: string;
  url: string;
  jsonData: YamlMap;
}

export function readDatasources(): Datasource[] {
  return yamlFilesIn(GRAFANA_DATASOURCES).flatMap((file) => {
    const doc = asMap(readYaml(file), file);
    return asList(doc.datasources, `${file}: datasources`).map((raw, i) => {
      const where = `${file}: datasources[${i}]`;
      const ds = asMap(raw, where);
      return {
        ...ds,
        name: asString(ds.name, `${where}.name`),
        type: asString(ds.type, `${where}.type`),
        uid: asString(ds.uid, `${where}.uid`),
        url: asString(ds.url, `${where}.url`),
        jsonData: ds.jsonData === undefined ? {} : asMap(ds.jsonData, `${where}.jsonData`),
      };
    });
  });
}

export interface DashboardPanel extends YamlMap {
  title: string;
  type: string;
  datasource?: { type?: string; uid?: string };
  targets?: { refId?: string; expr?: string; exemplar?: boolean; datasource?: { type?: string; uid?: string } }[];
  panels?: DashboardPanel[];
}

export function readDashboards(): { file: string; dashboard: YamlMap; panels: DashboardPanel[] }[] {
  return jsonFilesIn(GRAFANA_DASHBOARDS).map((file) => {
    const dashboard = asMap(JSON.parse(readText(file)), file);
    const top = asList(dashboard.panels ?? [], `${file}: panels`) as DashboardPanel[];
    // Rows may nest panels; flatten them.
    const panels = top.flatMap((p) => [p, ...(p.panels ?? [])]);
    return { file, dashboard, panels };
  });
}

// ---- PromQL -------------------------------------------------------------------------------------------------
// Enough of PromQL to read the dashboard's own queries: selectors, label matchers, label lists. Not a parser.

const PROMQL_KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'offset', 'and', 'or', 'unless', 'atan2', 'inf', 'nan']);
const PROMQL_LABEL_LIST = /\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g;

export interface PromqlMatcher {
  label: string;
  op: string;
  value: string;
}

/** The label matchers inside one `{...}`. */
function promqlMatchers(braces: string): PromqlMatcher[] {
  return [...braces.matchAll(/([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"/g)].map((l) => ({ label: l[1]!, op: l[2]!, value: l[3]! }));
}

/**
 * The vector selectors of a PromQL expression: each metric name with its label matchers (`up{job="x"}`). Names
 * followed by `(` are functions or aggregations; `by (...)`-style label lists and `[...]` ranges are skipped.
 */
export function promqlSelectors(expr: string): { metric: string; matchers: PromqlMatcher[] }[] {
  const text = expr.replace(/\[[^\]]*\]/g, ' ').replace(PROMQL_LABEL_LIST, ' ');
  const selectors: { metric: string; matchers: PromqlMatcher[] }[] = [];
  for (const m of text.matchAll(/(?<![\w:$."])([a-zA-Z_:][\w:]*)(?![\w:])\s*(\{[^}]*\})?/g)) {
    const [whole, name, braces] = m;
    if (braces === undefined && /^\s*\(/.test(text.slice(m.index + whole.length))) continue;
    if (PROMQL_KEYWORDS.has(name!.toLowerCase())) continue;
    selectors.push({ metric: name!, matchers: promqlMatchers(braces ?? '') });
  }
  return selectors;
}

/** Label names in `by (...)`, `without (...)`, `on (...)`, `ignoring (...)` and `group_*(...)` lists. */
export function promqlGroupingLabels(expr: string): string[] {
  return [...expr.matchAll(PROMQL_LABEL_LIST)].flatMap((m) => m[1]!.split(',').map((l) => l.trim()).filter((l) => l !== ''));
}
