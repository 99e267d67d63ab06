#!/usr/bin/env bash
# Runs every test of the workspace: unit, example, property and doc tests, the replay of the
# fuzz corpora, and the plugin's tests, end to end in network namespaces when run as root.
#
# As root it first installs what the end-to-end tests drive: Debian's CNI plugins
# (containernetworking-plugins: macvlan, bridge, host-local in /usr/lib/cni), iproute2 and
# ping, and libcni's cnitool (built from the Go module proxy into a cache outside the tree).
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

cargo test --workspace --locked "$@"
