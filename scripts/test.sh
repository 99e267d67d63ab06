#!/usr/bin/env bash
# Runs every test of the workspace: unit, example, property and doc tests, the replay of the
# fuzz corpora, and the plugin's tests, end to end in network namespaces when run as root.
#
# As root it first installs what the end-to-end tests drive: Debian's CNI plugins
# (containernetworking-plugins: macvlan, bridge, host-local in /usr/lib/cni), iproute2 and
# ping, and libcni's cnitool (built from the Go module proxy into a cache outside the tree).
# Helm 3 (scripts/install-helm.sh, built the same way; HELM) serves the Helm chart's tests.
#
# Then it builds (once, cached outside the tree) and starts a real kube-apiserver + etcd on
# loopback (scripts/install-k8s-testenv.sh, scripts/k8s-testenv.sh) and exports
# SPIDERPOOL_TEST_KUBECONFIG for the Kubernetes adapter's tests; the servers are stopped when this
# script exits, whether the tests pass or not. With SPIDERPOOL_TEST_KUBECONFIG already set, that
# cluster is used and nothing is started. Only on a platform with neither a new enough `go` on
# PATH nor a Go toolchain to fetch (not linux amd64/arm64) are these tests left without a server,
# with a warning; a failed build or start fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
  missing=()
  [ -x /usr/lib/cni/macvlan ] || missing+=(containernetworking-plugins)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

if [ -f scripts/install-cnitool.sh ]; then
  CNITOOL="$(bash scripts/install-cnitool.sh)"
  export CNITOOL
fi

# Helm 3 for the chart's tests (spiderpool-k8s/tests/deploy.rs), built like cnitool.
if [ -f scripts/install-helm.sh ]; then
  HELM="$(bash scripts/install-helm.sh | tail -n1)"
  export HELM
fi

if [ -f scripts/install-k8s-testenv.sh ] && [ -z "${SPIDERPOOL_TEST_KUBECONFIG:-}" ]; then
  go_ok=false
  if command -v go >/dev/null 2>&1; then
    go_ok=true
  else
    case "$(uname -s)/$(uname -m)" in
      Linux/x86_64 | Linux/amd64 | Linux/aarch64 | Linux/arm64) go_ok=true ;;
    esac
  fi
  if [ "$go_ok" = true ]; then
    K8S_TESTENV_BIN="$(bash scripts/install-k8s-testenv.sh | tail -n1)"
    export K8S_TESTENV_BIN
    # The tests' kubectl: the one on PATH, else the one built next to the servers.
    command -v kubectl >/dev/null 2>&1 || export PATH="$PATH:$K8S_TESTENV_BIN"
    k8s_dir="$(mktemp -d "${TMPDIR:-/tmp}/spiderpool-k8s-testenv.XXXXXX")"
    stop_k8s() {
      local status=$?
      bash scripts/k8s-testenv.sh stop "$k8s_dir" || status=1
      if [ "$status" = 0 ]; then
        rm -rf "$k8s_dir"
      else
        echo "== the Kubernetes test environment's logs stay in $k8s_dir" >&2
      fi
      exit "$status"
    }
    trap stop_k8s EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    echo "== starting kube-apiserver + etcd in $k8s_dir"
    SPIDERPOOL_TEST_KUBECONFIG="$(bash scripts/k8s-testenv.sh start "$k8s_dir" | tail -n1)"
    export SPIDERPOOL_TEST_KUBECONFIG
  else
    echo "== WARNING: no Go and no Go toolchain for $(uname -s)/$(uname -m): no kube-apiserver for the Kubernetes tests" >&2
  fi
fi

cargo test --workspace --locked "$@"
