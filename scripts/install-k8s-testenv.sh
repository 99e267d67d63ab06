#!/usr/bin/env bash
# Builds the binaries of the Kubernetes test environment (scripts/k8s-testenv.sh) and prints the
# absolute path of their directory (last line of stdout):
#   ${SPIDERPOOL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiderpool-test}/k8s-<version>/bin/
#     kube-apiserver       k8s.io/kubernetes/cmd/kube-apiserver (scripts/k8s-testenv/apiserver)
#     etcd                 go.etcd.io/etcd/server/v3/etcdmain (scripts/k8s-testenv/etcd)
#     k8s-testenv-certs    the PKI and kubeconfig writer (scripts/k8s-testenv/certs)
#     kubectl              k8s.io/kubernetes/cmd/kubectl, only when no kubectl is on PATH
#
# Everything comes from the Go module proxy, pinned by the go.mod/go.sum files of the three small
# modules under scripts/k8s-testenv/ (see docs/decisions/0006-kubernetes-test-server.md). No Go
# installation is needed: scripts/lib-go.sh uses the `go` on PATH when it is new enough, else
# fetches a pinned Go toolchain from the proxy. GOMODCACHE and GOCACHE live in the same cache
# directory during the build and are removed after it (about 6.5 GB; only the binaries are kept).
#
# The directory name carries the Kubernetes version, and bin/.stamp a hash of the modules' files
# and build flags: a version bump or any change to those modules rebuilds; otherwise the cached
# binaries are only checked. A cold build takes about 7 minutes on 2 cores (the docs give the
# measured time). Progress goes to stderr. Any failure exits non-zero with a message saying what
# failed, so the test command fails rather than skipping the Kubernetes tests.
#
# Overrides: GOPROXY (default https://proxy.golang.org), SPIDERPOOL_TEST_CACHE.
set -euo pipefail

say() { echo "install-k8s-testenv: $*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib-go.sh
. "$here/lib-go.sh"
src="$here/k8s-testenv"

K8S_VERSION="$(go_mod_requires "$src/apiserver/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(go_mod_requires "$src/etcd/go.mod" go.etcd.io/etcd/server/v3)"
GO_MIN_VERSION="$(awk '$1 == "go" { print $2; exit }' "$src/apiserver/go.mod")"
[[ "$K8S_VERSION" =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || die "unexpected Kubernetes version $K8S_VERSION"
K8S_MAJOR="${BASH_REMATCH[1]}"
K8S_MINOR="${BASH_REMATCH[2]}"

# What `kube-apiserver --version` and the /version endpoint report, as Kubernetes' own release
# build sets it (hack/lib/version.sh); without these it reports v0.0.0-master.
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$K8S_MAJOR"
  version_ldflags+=" -X $pkg.gitMinor=$K8S_MINOR -X $pkg.gitTreeState=clean"
done
BUILD_FLAGS=(-trimpath "-ldflags=-s -w$version_ldflags")

base="$(test_cache_base)"
dir="$base/k8s-$K8S_VERSION"
bin="$dir/bin"

stamp="$(
  cd "$src"
  {
    printf '%s\n' "${BUILD_FLAGS[@]}"
    for file in apiserver/go.mod apiserver/go.sum etcd/go.mod etcd/go.sum etcd/*.go certs/go.mod certs/*.go; do
      printf '== %s\n' "$file"
      cat "$file"
    done
  } | sha256sum | cut -d' ' -f1
)" || die "cannot hash the modules in $src"

cached() {
  [ "$(cat "$bin/.stamp" 2>/dev/null)" = "$stamp" ] &&
    [ -x "$bin/k8s-testenv-certs" ] &&
    [[ "$("$bin/kube-apiserver" --version 2>&1)" == "Kubernetes $K8S_VERSION" ]] &&
    [[ "$("$bin/etcd" --version 2>&1)" == *"etcd Version: ${ETCD_VERSION#v}"* ]]
}

# kubectl is preinstalled on development machines; where it is not (a fresh CI machine), the
# tests' real client is built from the same module, k8s.io/kubernetes/cmd/kubectl.
need_kubectl() {
  ! command -v kubectl >/dev/null 2>&1 && ! [ -x "$bin/kubectl" ]
}

if cached && ! need_kubectl; then
  say "cached: kube-apiserver $K8S_VERSION, etcd $ETCD_VERSION in $bin"
  echo "$bin"
  exit 0
fi

mkdir -p "$bin" || die "cannot create the cache directory $bin"
# One build at a time per cache directory.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$dir/.lock"
  flock 9 || die "cannot lock $dir/.lock"
  if cached && ! need_kubectl; then
    say "built by another process: $bin"
    echo "$bin"
    exit 0
  fi
fi
command -v sha256sum >/dev/null 2>&1 || die "sha256sum (coreutils) is needed"

go_select "$GO_MIN_VERSION"
rm -f "$bin/.stamp"
started=$SECONDS

build() { # module-dir output package
  say "building $2 ($1)"
  (cd "$src/$1" && go_run "$dir" build "${BUILD_FLAGS[@]}" -o "$bin/$2.tmp" "$3") >&2 ||
    die "go build of $3 in $src/$1 failed (see the messages above)"
  mv -f "$bin/$2.tmp" "$bin/$2"
}
if ! cached; then
  build certs k8s-testenv-certs .
  build etcd etcd .
  build apiserver kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
fi
if need_kubectl; then
  build apiserver kubectl k8s.io/kubernetes/cmd/kubectl
fi

echo "$stamp" >"$bin/.stamp"
cached || die "the built binaries in $bin do not report kube-apiserver $K8S_VERSION / etcd $ETCD_VERSION"
go_drop_caches "$dir"
say "built kube-apiserver $K8S_VERSION and etcd $ETCD_VERSION in $((SECONDS - started))s: $bin"
echo "$bin"
