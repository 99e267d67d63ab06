#!/usr/bin/env bash
# Prints the absolute path of a working Helm 3 binary (last line of stdout), building it on first
# use into a cache outside the source tree:
#   ${SPIDERPOOL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiderpool-test}/helm-<version>/helm
# for the tests of charts/spiderpool (spiderpool-k8s/tests/deploy.rs: `helm template` of the
# chart, applied with `kubectl apply --dry-run=server`).
#
# Helm comes from the Go module proxy, pinned by the go.mod/go.sum of the small module in
# scripts/helm/ (its `tool helm.sh/helm/v3/cmd/helm` line), built with the version flags of Helm's
# own Makefile, so that `helm version` reports the release and `helm template` defaults to the
# Kubernetes version of its client-go. No Go installation is needed: scripts/lib-go.sh uses the
# `go` on PATH when it is new enough, else fetches a pinned Go toolchain from the proxy.
#
# helm-<version>/.stamp holds a hash of the module's files and build flags: a version bump or
# any change to them rebuilds; otherwise the cached binary is only checked. A cold build (111
# modules downloaded, then compiled) took 111 s on 2 cores with go1.26.8 on PATH (add the Go
# toolchain's download where none is); only the binary (59 MB) is kept. Progress goes to stderr. Any failure exits non-zero with a message saying what failed: the test command then
# fails rather than skipping the chart's tests.
#
# Overrides: HELM (an existing helm 3 to use as is), GOPROXY (default https://proxy.golang.org),
# SPIDERPOOL_TEST_CACHE.
set -euo pipefail

say() { echo "install-helm: $*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib-go.sh
. "$here/lib-go.sh"
src="$here/helm"

HELM_VERSION="$(go_mod_requires "$src/go.mod" helm.sh/helm/v3)"
GO_MIN_VERSION="$(awk '$1 == "go" { print $2; exit }' "$src/go.mod")"
# The Kubernetes version `helm template` and `helm lint` assume without a cluster: Helm's Makefile
# takes it from the client-go it is built with (v0.X.Y is Kubernetes 1.X).
CLIENT_GO_VERSION="$(awk '($1 == "k8s.io/client-go" && $2 ~ /^v0\.[0-9]+\./) { print $2; exit }' "$src/go.mod")"
[[ "$CLIENT_GO_VERSION" =~ ^v0\.([0-9]+)\. ]] || die "$src/go.mod does not require k8s.io/client-go v0.x.y"
K8S_MINOR="${BASH_REMATCH[1]}"

# A working helm reports its version.
works() {
  [ "$("$1" version --template '{{.Version}}' 2>/dev/null)" = "$2" ]
}

if [ -n "${HELM:-}" ]; then
  [ -x "$HELM" ] || die "HELM=$HELM is not an executable file"
  found="$("$HELM" version --template '{{.Version}}' 2>/dev/null)" || die "HELM=$HELM: \`helm version\` fails"
  [[ "$found" == v3.* ]] || die "HELM=$HELM is helm ${found:-?}, not helm 3"
  say "using HELM=$HELM ($found)"
  echo "$HELM"
  exit 0
fi

LDFLAGS="-s -w"
for flag in "version=$HELM_VERSION" "metadata=" "gitTreeState=clean"; do
  LDFLAGS+=" -X helm.sh/helm/v3/internal/version.$flag"
done
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  LDFLAGS+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$K8S_MINOR"
done
BUILD_FLAGS=(-trimpath "-ldflags=$LDFLAGS")

base="$(test_cache_base)"
dir="$base/helm-$HELM_VERSION"
tool="$dir/helm"

command -v sha256sum >/dev/null 2>&1 || die "sha256sum (coreutils) is needed"
stamp="$(
  cd "$src"
  {
    printf '%s\n' "${BUILD_FLAGS[@]}"
    for file in go.mod go.sum; do
      printf '== %s\n' "$file"
      cat "$file"
    done
  } | sha256sum | cut -d' ' -f1
)" || die "cannot hash the module in $src"

cached() {
  [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ] && [ -x "$tool" ] && works "$tool" "$HELM_VERSION"
}

if cached; then
  say "cached: helm $HELM_VERSION: $tool"
  echo "$tool"
  exit 0
fi

mkdir -p "$dir" || die "cannot create the cache directory $dir"
# One build at a time per cache directory.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$dir/.lock"
  flock 9 || die "cannot lock $dir/.lock"
  if cached; then
    say "built by another process: $tool"
    echo "$tool"
    exit 0
  fi
fi

go_select "$GO_MIN_VERSION"
rm -f "$dir/.stamp"
started=$SECONDS
say "building helm $HELM_VERSION (go build from $(go_proxy_url))"
(cd "$src" && go_run "$dir" build "${BUILD_FLAGS[@]}" -o "$tool.tmp" helm.sh/helm/v3/cmd/helm) >&2 ||
  die "go build of helm.sh/helm/v3/cmd/helm in $src failed (see the messages above)"
mv -f "$tool.tmp" "$tool"
works "$tool" "$HELM_VERSION" || die "$tool does not report helm $HELM_VERSION"
echo "$stamp" >"$dir/.stamp"
go_drop_caches "$dir"
say "built helm $HELM_VERSION in $((SECONDS - started))s: $tool"
echo "$tool"
