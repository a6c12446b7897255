#!/usr/bin/env bash
# Installs the tools that tests/observability.rs runs:
#   - prometheus and promtool (Debian's `prometheus` package);
#   - @grafana/schema, ts-json-schema-generator and ajv-cli (npm), into
#     monitoring/schema/node_modules, to validate the Grafana dashboards.
# Idempotent: each step is skipped when its tool is already present.
set -euo pipefail
cd "$(dirname "$0")/../.."

export DEBIAN_FRONTEND=noninteractive
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v npm >/dev/null 2>&1 || need+=(npm)
if ((${#need[@]})); then
  apt-get update -qq
  # --no-install-recommends: no node-exporter & co. The package's postinst
  # may try to start a service; that is harmless (no systemd in CI) and the
  # tests run their own prometheus.
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian's package enables a system prometheus on :9090 where an init
  # system runs; the tests never use it.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus || true
  fi
fi
echo "prometheus: $(prometheus --version 2>&1 | head -1)"
echo "promtool: $(promtool --version 2>&1 | head -1)"

schema_dir=monitoring/schema
bin=$schema_dir/node_modules/.bin
if [ -x "$bin/ajv" ] && [ -x "$bin/ts-json-schema-generator" ] \
  && [ -d "$schema_dir/node_modules/@grafana/schema" ]; then
  echo "dashboard schema tools: already installed"
else
  # Exact versions from monitoring/schema/package.json (and its lock file
  # when present).
  if [ -f "$schema_dir/package-lock.json" ]; then
    (cd "$schema_dir" && npm ci --no-audit --no-fund --loglevel=error)
  else
    (cd "$schema_dir" && npm install --no-audit --no-fund --loglevel=error)
  fi
fi
echo "dashboard schema tools: $(cd "$schema_dir" && npm ls --depth=0 2>/dev/null | tail -n +2 | tr '\n' ' ')"
