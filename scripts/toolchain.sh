#!/usr/bin/env bash
# Build the real tools that the real-engine tests drive, at pinned versions, from the Go module
# proxy: the Pulumi CLI, the Kubernetes provider plugin and the Kubernetes control plane.
#
# Why build: these machines have no Docker engine, no cloud cluster and no download site but the
# package registries, so the only real Pulumi engine and API server available are the ones that
# compile here. Builds are heavy (about an hour of CPU in all), so each tool lands in a cache
# outside the repository, keyed by its version and the Go version, and is reused when present.
#
#   scripts/toolchain.sh            build what is missing, print what it built and how long it took
#   scripts/toolchain.sh TOOL...    only these: pulumi, provider, kubernetes, crds
#   scripts/toolchain.sh --print    print the bin directory (for PATH) and nothing else
#
# The cache root is $CELERY_REDIS_TOOLCHAIN (default /var/cache/celery-redis-toolchain).
set -euo pipefail

# Pins. PROVIDER_VERSION must equal requirements.txt's pulumi-kubernetes pin: the Python SDK asks
# the engine for exactly that plugin version.
PULUMI_VERSION=3.274.1
PROVIDER_VERSION=4.25.0
PROVIDER_MODULE_VERSION=v4.0.0-20260115033456-f47bc2d6f199 # the v4.25.0 release, as the proxy serves it
KUBERNETES_VERSION=1.34.4
# The CustomResourceDefinitions of what the prod stack expects on a cluster, as each project
# publishes them in its source module (the tests install them with their real schemas).
KEDA_VERSION=2.16.1
CERT_MANAGER_VERSION=1.16.2
PROMETHEUS_OPERATOR_VERSION=0.81.0

cache_root=${CELERY_REDIS_TOOLCHAIN:-/var/cache/celery-redis-toolchain}
go_version=$(go env GOVERSION)
bin_dir="$cache_root/bin-$go_version"
print_only=0
[ "${1:-}" = "--print" ] && print_only=1

if [ $print_only -eq 1 ]; then
  echo "$bin_dir"
  exit 0
fi

mkdir -p "$bin_dir"
export GOFLAGS=-mod=mod
export CGO_ENABLED=0

log() { echo "toolchain: $*" >&2; }

# have NAME STAMP: the binary exists and was built from exactly these pins.
have() { [ -x "$bin_dir/$1" ] && [ "$(cat "$bin_dir/.$1.stamp" 2>/dev/null)" = "$2" ]; }
done_build() { echo "$2" >"$bin_dir/.$1.stamp"; }

# wrapper_module DIR: a throwaway module from which `go build` resolves one upstream package.
wrapper_module() {
  rm -rf "$1"
  mkdir -p "$1"
  (cd "$1" && go mod init toolchain.local/wrapper >/dev/null 2>&1)
}

timed() {
  local name=$1 start
  shift
  start=$(date +%s)
  "$@"
  log "$name done in $(($(date +%s) - start)) s"
}

build_pulumi() {
  local stamp="pulumi $PULUMI_VERSION" work="$cache_root/work/pulumi"
  if have pulumi "$stamp"; then
    log "pulumi $PULUMI_VERSION: cached"
    return
  fi
  # A binary already on PATH will do when it is the pinned version.
  local found
  found=$(command -v pulumi || true)
  if [ -n "$found" ] && [ "$("$found" version 2>/dev/null)" = "v$PULUMI_VERSION" ]; then
    ln -sf "$found" "$bin_dir/pulumi"
    done_build pulumi "$stamp"
    log "pulumi $PULUMI_VERSION: using $found"
    return
  fi
  wrapper_module "$work"
  (
    cd "$work"
    # pkg/v3's own go.mod replaces the clipboard module; replaces of a dependency are ignored,
    # so the wrapper must repeat it.
    go mod edit -require="github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION" \
      -require="github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION" \
      -replace=github.com/atotto/clipboard=github.com/tgummerer/clipboard@v0.0.0-20241001131231-d02d263e614e
    go build -trimpath -o "$bin_dir/pulumi" \
      -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION" \
      github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
  )
  done_build pulumi "$stamp"
}

install_dynamic_host() {
  # Python dynamic resources (components/generated_secret.py) run in a plugin that Pulumi's
  # release archive ships beside the CLI: a two-line script starting the SDK's own host. A CLI
  # built from source lacks it, so write the same thing here (for the python3 on PATH, which
  # must have the pulumi SDK: the project's virtualenv).
  local path="$bin_dir/pulumi-resource-pulumi-python"
  printf '#!/bin/sh\nexec python3 -u -m pulumi.dynamic "$@"\n' >"$path"
  chmod 755 "$path"
}

build_provider() {
  local name=pulumi-resource-kubernetes stamp="provider $PROVIDER_VERSION $PROVIDER_MODULE_VERSION"
  local work="$cache_root/work/provider" module=github.com/pulumi/pulumi-kubernetes/provider/v4
  if have "$name" "$stamp"; then
    log "kubernetes provider $PROVIDER_VERSION: cached"
    return
  fi
  wrapper_module "$work"
  (
    cd "$work"
    go mod edit -require="$module@$PROVIDER_MODULE_VERSION"
    go mod download "$module"
    # The provider's command embeds two files that its `go generate` step writes and the module
    # zip lacks. Build the command as the wrapper's own main package: its main.go, schema and
    # mapping copied from the module, and the embedded files written by the module's own
    # generator (generate.go), so nothing here re-implements either.
    local src
    src=$(go list -m -f '{{.Dir}}' "$module")/cmd/pulumi-resource-kubernetes
    cp "$src/main.go" "$src/generate.go" "$src/schema.json" "$src/terraform-mapping.json" .
    chmod u+w ./*.go ./*.json
    go mod tidy >/dev/null 2>&1 || true
    VERSION=$PROVIDER_VERSION go run generate.go
    rm -f generate.go
    go build -trimpath -o "$bin_dir/$name" \
      -ldflags "-s -w -X $module/pkg/version.Version=$PROVIDER_VERSION" .
  )
  done_build "$name" "$stamp"
}

build_kubernetes() {
  local stamp="kubernetes $KUBERNETES_VERSION" work="$cache_root/work/kubernetes"
  local binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  local all=1 b
  for b in "${binaries[@]}"; do have "$b" "$stamp" || all=0; done
  if [ $all -eq 1 ]; then
    log "kubernetes $KUBERNETES_VERSION: cached"
    return
  fi
  wrapper_module "$work"
  (
    cd "$work"
    go mod edit -require="k8s.io/kubernetes@v$KUBERNETES_VERSION"
    go mod download k8s.io/kubernetes
    # kubernetes points every staging module at its own tree; a dependent module must point
    # them at the published copies of the same release instead, and keep its godebug default.
    local kmod
    kmod=$(go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" | python3 -c \
      'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    local staging
    staging=$(sed -n 's|^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*|\1|p' "$kmod")
    local edits=()
    for m in $staging; do edits+=("-replace=$m=$m@v0.${KUBERNETES_VERSION#1.}"); done
    go mod edit "${edits[@]}"
    grep -q '^godebug' go.mod || printf '\ngodebug default=go1.24\n' >>go.mod
    local version_flags="-X k8s.io/component-base/version.gitVersion=v$KUBERNETES_VERSION"
    version_flags+=" -X k8s.io/component-base/version.gitMajor=1"
    version_flags+=" -X k8s.io/component-base/version.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
    version_flags+=" -X k8s.io/component-base/version.gitTreeState=clean"
    version_flags+=" -X k8s.io/client-go/pkg/version.gitVersion=v$KUBERNETES_VERSION"
    for b in "${binaries[@]}"; do
      go build -trimpath -o "$bin_dir/$b" -ldflags "-s -w $version_flags" "k8s.io/kubernetes/cmd/$b"
    done
  )
  for b in "${binaries[@]}"; do done_build "$b" "$stamp"; done
}

# Arguments pick tools (pulumi, provider, kubernetes); none means all of them.
wanted=("$@")
[ ${#wanted[@]} -eq 0 ] && wanted=(pulumi provider kubernetes crds)
install_crds() {
  local stamp="crds keda $KEDA_VERSION cert-manager $CERT_MANAGER_VERSION prometheus-operator $PROMETHEUS_OPERATOR_VERSION"
  local dir="$cache_root/crds"
  if [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "CRDs: cached"
    return
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  local spec module_dir
  for spec in \
    "github.com/kedacore/keda/v2@v$KEDA_VERSION:config/crd/bases/keda.sh_scaledobjects.yaml config/crd/bases/keda.sh_triggerauthentications.yaml" \
    "github.com/cert-manager/cert-manager@v$CERT_MANAGER_VERSION:deploy/crds/crd-certificates.yaml" \
    "github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION:example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"; do
    module_dir=$(cd "$cache_root" && go mod download -json "${spec%%:*}" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    for file in ${spec#*:}; do cp "$module_dir/$file" "$dir/"; done
  done
  chmod -R u+w "$dir"
  echo "$stamp" >"$dir/.stamp"
}

start=$(date +%s)
for tool in "${wanted[@]}"; do
  case $tool in
  pulumi)
    timed pulumi build_pulumi
    install_dynamic_host
    ;;
  provider) timed "kubernetes provider" build_provider ;;
  kubernetes) timed "kubernetes control plane" build_kubernetes ;;
  crds) timed "custom resource definitions" install_crds ;;
  *)
    log "unknown tool '$tool'; allowed: pulumi, provider, kubernetes, crds"
    exit 2
    ;;
  esac
done
log "toolchain ready in $bin_dir after $(($(date +%s) - start)) s"
