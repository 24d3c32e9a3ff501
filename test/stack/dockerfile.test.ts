import { readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { DEFAULT_CONFIG_PATH } from '../../src/config';
import { appServices, execForm, readCompose, readDockerfile, readText, repoPath, ROOT, service, type DockerStage } from './stack-files';

const stages = readDockerfile();
const compose = readCompose();
const runtime = stages.at(-1)!;

function instructions(stage: DockerStage, keyword: string): string[] {
  return stage.instructions.filter((i) => i.keyword === keyword).map((i) => i.args);
}

function stageNamed(name: string): DockerStage {
  const found = stages.find((s) => s.name === name);
  if (!found) throw new Error(`Dockerfile has no stage ${name}`);
  return found;
}

/** `COPY [--from=x] [--chown=...] src... dest` -> its parts. */
function copies(stage: DockerStage): { from?: string; sources: string[]; dest: string }[] {
  return instructions(stage, 'COPY').map((args) => {
    const words = args.split(/\s+/);
    const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
    const paths = words.filter((w) => !w.startsWith('--'));
    return { from, sources: paths.slice(0, -1), dest: paths.at(-1)! };
  });
}

/** What `tsc -p tsconfig.build.json` emits: every compiled source's .js path, relative to the repo root. */
function buildOutputs(): Map<string, string> {
  const file = repoPath('tsconfig.build.json');
  const read = ts.readConfigFile(file, (p) => readFileSync(p, 'utf8'));
  if (read.error) throw new Error(ts.flattenDiagnosticMessageText(read.error.messageText, '\n'));
  const parsed = ts.parseJsonConfigFileContent(read.config, ts.sys, ROOT, undefined, file);
  const outDir = parsed.options.outDir!;
  const rootDir = parsed.options.rootDir ?? ROOT;
  const outputs = new Map<string, string>();
  for (const source of parsed.fileNames.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))) {
    const emitted = path.join(outDir, path.relative(rootDir, source)).replace(/\.ts$/, '.js');
    outputs.set(path.relative(ROOT, emitted), path.relative(ROOT, source));
  }
  return outputs;
}

const outputs = buildOutputs();

/** Every process the image runs: the Dockerfile's default command and each compose service's command. */
const commands: [string, string[]][] = [
  ['Dockerfile CMD', execForm(instructions(runtime, 'CMD').at(-1) ?? '[]')],
  ...appServices(compose).map((s): [string, string[]] => [`compose ${s.name}`, s.command]),
];

describe('Dockerfile', () => {
  it('builds and runs on one exactly pinned Node 24 image', () => {
    const images = new Set(stages.map((s) => s.from));
    expect(images.size).toBe(1);
    expect([...images][0]).toMatch(/^node:24\.\d+\.\d+-[a-z0-9.-]+$/);
    expect(stages.length).toBeGreaterThanOrEqual(2);
  });

  it('runs as a non-root user', () => {
    const user = instructions(runtime, 'USER').at(-1);
    expect(user).toBeDefined();
    expect(['root', '0', '0:0']).not.toContain(user);
  });

  it('ships only production dependencies, installed from the committed lock file', () => {
    const modules = copies(runtime).find((c) => c.dest === './node_modules' || c.dest === 'node_modules');
    expect(modules?.from).toBeDefined();
    const depsStage = stageNamed(modules!.from!);
    expect(instructions(depsStage, 'RUN').join(' ')).toMatch(/\bnpm ci\b[^&]*--omit=dev/);
    expect(copies(depsStage).flatMap((c) => c.sources)).toEqual(expect.arrayContaining(['package.json', 'package-lock.json', '.npmrc']));
    expect(stages.flatMap((s) => instructions(s, 'RUN')).join(' ')).not.toMatch(/\bnpm (install|i)\b/);
    expect(instructions(runtime, 'RUN')).toEqual([]);
  });

  it('compiles with `npm run build` and copies its dist/ into the working directory of the final image', () => {
    const scripts = (JSON.parse(readText('package.json')) as { scripts: Record<string, string> }).scripts;
    expect(scripts.build).toBe('tsc -p tsconfig.build.json');
    const dist = copies(runtime).find((c) => c.dest === './dist');
    expect(dist?.from).toBeDefined();
    const buildStage = stageNamed(dist!.from!);
    expect(instructions(buildStage, 'RUN')).toContain('npm run build');
    const workdir = instructions(buildStage, 'WORKDIR').at(-1);
    expect(dist!.sources).toEqual([`${workdir}/dist`]);
    expect(instructions(runtime, 'WORKDIR').at(-1)).toBe(workdir);
  });

  it('copies the route file the gateway reads from its working directory, and compose names that file', () => {
    const copied = copies(runtime).filter((c) => c.from === undefined).flatMap((c) => c.sources);
    expect(copied).toContain(DEFAULT_CONFIG_PATH);
    expect(service(compose, 'gateway').environment.GATEWAY_CONFIG).toBe(DEFAULT_CONFIG_PATH);
  });

  it.each(commands)('%s preloads the telemetry bootstrap, then starts one main file', (_where, command) => {
    expect(command.slice(-3)).toEqual(['--require', './dist/otel/register.js', expect.stringMatching(/^dist\/.+\/main\.js$/)]);
  });

  // Loading the OpenTelemetry SDK takes 0.1-0.25 s: a SIGTERM then, to a gateway that is PID 1, was ignored (the pod
  // served until SIGKILL), and a SIGHUP ended it, because main.ts, which holds them, had not loaded yet.
  it.each(commands.filter(([, command]) => command.at(-1) === 'dist/src/main.js'))('%s holds the stop signals from before the telemetry bootstrap loads', (_where, command) => {
    const preloads = command.flatMap((arg, index) => (command[index - 1] === '--require' ? [arg] : []));
    expect(preloads).toEqual(['./dist/src/stop-signals-held.js', './dist/otel/register.js']);
  });

  it.each(commands)('%s runs node with the flags its `npm run start:*` script has, and no others', (_where, command) => {
    const scripts = (JSON.parse(readText('package.json')) as { scripts: Record<string, string> }).scripts;
    const script = Object.values(scripts).find((line) => line.startsWith('node ') && line.endsWith(` ${command.at(-1)!}`));
    expect(script).toBeDefined();
    expect(command).toEqual(script!.split(' '));
  });

  it.each(commands)('%s starts only files that tsconfig.build.json compiles from a source in the repo', (_where, command) => {
    const started = command.filter((arg) => arg.endsWith('.js')).map((arg) => path.normalize(arg));
    expect(started.length).toBeGreaterThan(0);
    for (const file of started) {
      // The source (src/main.ts, services/*/main.ts, otel/register.ts) must exist and be in the build.
      expect({ file, compiledFrom: outputs.get(file) }).toEqual({ file, compiledFrom: expect.stringMatching(/\.ts$/) });
    }
  });

  it('runs a different process in each app service: the gateway and the three services', () => {
    const mains = appServices(compose).map((s) => s.command.at(-1)).sort();
    expect(mains).toEqual(['dist/services/notifications/main.js', 'dist/services/orders/main.js', 'dist/services/users/main.js', 'dist/src/main.js']);
  });
});

describe('.dockerignore', () => {
  const patterns = readText('.dockerignore')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));

  /** Docker semantics, for the simple patterns used here: `*` within a segment; a match excludes a folder's contents. */
  function ignored(file: string): boolean {
    const parts = file.split('/');
    return patterns.some((pattern) => {
      if (pattern.startsWith('!')) throw new Error('exceptions are not used here; extend ignored() first');
      const regex = new RegExp(`^${pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*')}$`);
      return parts.some((_, i) => regex.test(parts.slice(0, i + 1).join('/')));
    });
  }

  it.each(['node_modules', 'dist', '.git', 'test', 'grafana', 'docker-compose.yml', '.env'])('keeps %s out of the build context', (file) => {
    expect(ignored(file)).toBe(true);
  });

  it('lets in every file the Dockerfile copies from the context', () => {
    const sources = stages.flatMap((s) => copies(s).filter((c) => c.from === undefined).flatMap((c) => c.sources));
    expect(sources.length).toBeGreaterThan(0);
    expect(sources.filter(ignored)).toEqual([]);
    // And the TypeScript sources inside the copied folders.
    expect([...outputs.values()].filter(ignored)).toEqual([]);
  });
});

