#!/usr/bin/env bash
# Set up what the project needs on a fresh Debian machine; safe to run again (it only adds).
#   scripts/bootstrap.sh          the virtualenv with the run-time packages (render, check)
#   scripts/bootstrap.sh --test   also Debian's redis-server and the test-only tools
#   scripts/bootstrap.sh --lint   the virtualenv plus ruff (pinned in requirements-test.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
want_lint=0
case "${1:-}" in
  "") ;;
  --test) want_test=1 ;;
  --lint) want_lint=1 ;;
  *)
    echo "bootstrap: unknown option ${1}; allowed: --test, --lint, or nothing" >&2
    exit 2
    ;;
esac

# Another apt or dpkg (unattended-upgrades, a second bootstrap) may hold the package locks:
# wait for it this long instead of failing, then give up with apt's own message.
APT_LOCK_TIMEOUT=${APT_LOCK_TIMEOUT:-600}
APT_GET=(apt-get -o "DPkg::Lock::Timeout=${APT_LOCK_TIMEOUT}")

apt_update() {
  # DPkg::Lock::Timeout covers dpkg's locks but not the package lists' lock that
  # `apt-get update` takes (apt 2.6 fails at once), so that one is retried here.
  local deadline=$((SECONDS + APT_LOCK_TIMEOUT)) output waited=0
  while true; do
    # timeout: a mirror that stops answering must not hang the bootstrap.
    if output=$(timeout 900 "${APT_GET[@]}" update -qq 2>&1); then
      return 0
    fi
    if ! grep -q "Could not get lock" <<<"$output" || [ "$SECONDS" -ge "$deadline" ]; then
      echo "$output" >&2
      return 1
    fi
    [ $waited -eq 0 ] && echo "bootstrap: waiting for another apt to release its lock" >&2
    waited=1
    sleep 1
  done
}

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
  apt_update
  DEBIAN_FRONTEND=noninteractive "${APT_GET[@]}" install -y -qq "${missing[@]}" >/dev/null
}

# Debian's python3, not a pyenv one under /root: the end-to-end tests run the virtualenv as
# non-root pod users, who cannot read /root.
apt_install python3 python3-venv
if [ $want_test -eq 1 ]; then
  apt_install redis-server redis-sentinel redis-tools iproute2 util-linux procps openssl prometheus
  # The real-engine tests: etcd for the control plane (scripts/toolchain.sh builds the rest).
  apt_install etcd-server
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
if [ $want_lint -eq 1 ]; then
  # Only the linter, at the version the tests pin, without the rest of the test tools.
  ruff_pin=$(grep -E '^ruff==' requirements-test.txt)
  if [ "$(.venv/bin/ruff --version 2>/dev/null)" != "ruff ${ruff_pin#ruff==}" ]; then
    .venv/bin/pip install -q --disable-pip-version-check "$ruff_pin"
  fi
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
if [ $want_test -eq 1 ]; then
  # Workers on Celery 5.5 and 5.6 for the recovery tests: pinned virtualenvs cached outside the
  # repository (scripts/celery_venvs.py), built once, a no-op when warm.
  .venv/bin/python scripts/celery_venvs.py
fi
if [ $want_test -eq 1 ] && [ -x tests/support/install-node-tools.sh ]; then
  tests/support/install-node-tools.sh
fi
