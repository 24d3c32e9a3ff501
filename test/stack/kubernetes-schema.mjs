// Validates Kubernetes objects against the API schemas of kubernetes-models (generated from the Kubernetes
// OpenAPI spec, see test/stack/kubernetes-manifests.ts for the pinned version). The package is ESM-only and
// Jest runs CommonJS, so the tests run this file with node: a JSON array of objects on stdin, one result per
// object on stdout: { kind, name, errors } (errors empty when the object is valid).
import { readFileSync } from 'node:fs';

/** `apps/v1` + `Deployment` -> the package's module for that kind (`v1` is the core group's folder). */
function modulePath(apiVersion, kind) {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : [undefined, apiVersion];
  return group === undefined ? `kubernetes-models/${version}/${kind}` : `kubernetes-models/${group}/${version}/${kind}`;
}

async function validate(object) {
  const kind = String(object?.kind);
  const name = String(object?.metadata?.name);
  if (typeof object?.apiVersion !== 'string' || typeof object?.kind !== 'string' || !/^[A-Za-z0-9]+$/.test(object.kind)) {
    return { kind, name, errors: ['apiVersion and kind must be strings naming a kind'] };
  }
  let Model;
  try {
    Model = (await import(modulePath(object.apiVersion, object.kind)))[object.kind];
  } catch {
    Model = undefined;
  }
  if (typeof Model !== 'function') return { kind, name, errors: [`no schema for ${object.apiVersion} ${object.kind}`] };
  try {
    new Model(object).validate();
    return { kind, name, errors: [] };
  } catch (error) {
    const details = Array.isArray(error?.errors) ? error.errors.map((e) => `${e.instancePath || '/'} ${e.message}`) : [String(error?.message ?? error)];
    return { kind, name, errors: details };
  }
}

const objects = JSON.parse(readFileSync(0, 'utf8'));
const results = [];
for (const object of objects) results.push(await validate(object));
process.stdout.write(JSON.stringify(results));
