#!/usr/bin/env bash
# Install the pinned CRD schema packages (tests/support/package.json + package-lock.json) into
# tests/support/node_modules for tests/support/crd_schema.py. Safe to run again: `npm ci` runs
# only when the lock file changed since the last install.
set -euo pipefail
cd "$(dirname "$0")"

command -v npm >/dev/null || { echo "install-node-tools: npm is missing (apt-get install npm)" >&2; exit 1; }

stamp="node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # ci: exactly the versions in the lock file; the packages declare node >=22 but their
  # generated validators run on Debian 12's node 20 (tests/unit/test_metrics.py proves it).
  npm ci --no-audit --no-fund --loglevel=error --engine-strict=false
  touch "$stamp"
fi
