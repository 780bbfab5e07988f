#!/usr/bin/env bash
# Set up what the project needs on a fresh Debian machine; safe to run again (it only adds).
#   scripts/bootstrap.sh          the virtualenv with the run-time packages (render, check)
#   scripts/bootstrap.sh --test   also Debian's redis-server and the test-only tools
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

apt_install() {
  # Install Debian packages that are missing; needs root (CI and these machines run as root).
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: please install these Debian packages: ${missing[*]}" >&2
    exit 1
  fi
  echo "bootstrap: apt-get install ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Debian's python3, not a pyenv one under /root: the end-to-end tests run the virtualenv as
# non-root pod users, who cannot read /root.
apt_install python3 python3-venv
if [ $want_test -eq 1 ]; then
  apt_install redis-server redis-tools iproute2 util-linux procps openssl prometheus
  # Node may come from elsewhere than Debian (with npm bundled): only install what is missing.
  command -v node >/dev/null 2>&1 || apt_install nodejs
  command -v npm >/dev/null 2>&1 || apt_install npm
fi

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
requirements=requirements.txt
[ $want_test -eq 1 ] && requirements=requirements-test.txt
stamp=".venv/.installed-$(sha256sum "$requirements" requirements.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r "$requirements"
  touch "$stamp"
fi
if [ $want_test -eq 1 ]; then
  # checkov pins libraries that clash with pulumi's, so it gets a virtualenv of its own.
  [ -x .venv-checkov/bin/python ] || /usr/bin/python3 -m venv .venv-checkov
  cstamp=".venv-checkov/.installed-$(sha256sum requirements-checkov.txt | cut -c1-16)"
  if [ ! -f "$cstamp" ]; then
    .venv-checkov/bin/pip install -q --disable-pip-version-check -r requirements-checkov.txt
    touch "$cstamp"
  fi
fi
if [ $want_test -eq 1 ] && [ -x tests/support/install-node-tools.sh ]; then
  tests/support/install-node-tools.sh
fi
