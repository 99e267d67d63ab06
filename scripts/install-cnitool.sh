#!/usr/bin/env bash
# Prints the absolute path of a working libcni `cnitool` (last line of stdout), building it on
# first use into a cache outside the source tree:
#   ${SPIDERPOOL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiderpool-test}/cnitool-<cni>/
#
# No Go installation is needed: the `go` on PATH is used when it is new enough, else a pinned Go
# toolchain is fetched from the Go module proxy (scripts/lib-go.sh: the `golang.org/toolchain`
# module, checked against its go.sum hash from sum.golang.org). Then
# `go install github.com/containernetworking/cni/cnitool@<version>` builds cnitool, with every
# Go module verified by the checksum database. Downloads use curl when present, else python3.
#
# When cached, it only checks the binary and prints its path. Progress goes to stderr. Any
# failure exits non-zero with a message saying what failed: the test command then fails
# rather than skipping the cnitool tests.
#
# Overrides: CNITOOL (an existing cnitool to use as is), GOPROXY (default
# https://proxy.golang.org).
set -euo pipefail

CNI_VERSION=v1.3.0 # cnitool with add, check, del, gc and status; v1.2.3 is the oldest with gc/status
GO_MIN_VERSION=1.21 # the go directive of cni v1.3.0's go.mod

say() { echo "install-cnitool: $*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}
# shellcheck source=lib-go.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-go.sh"

# A working cnitool prints its usage, naming the gc and status commands, when called bare.
works() {
  local usage
  usage="$("$1" 2>&1 || true)"
  [[ "$usage" == *gc* && "$usage" == *status* ]]
}

if [ -n "${CNITOOL:-}" ]; then
  [ -x "$CNITOOL" ] || die "CNITOOL=$CNITOOL is not an executable file"
  works "$CNITOOL" || die "CNITOOL=$CNITOOL does not look like cnitool >= v1.2.3 (no gc/status in its usage)"
  say "using CNITOOL=$CNITOOL"
  echo "$CNITOOL"
  exit 0
fi

base="$(test_cache_base)"
dir="$base/cnitool-$CNI_VERSION"
tool="$dir/bin/cnitool"

if [ -x "$tool" ] && works "$tool"; then
  say "cached: $tool"
  echo "$tool"
  exit 0
fi

mkdir -p "$dir" || die "cannot create the cache directory $dir"

# One build at a time per cache directory.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$dir/.lock"
  flock 9 || die "cannot lock $dir/.lock"
  if [ -x "$tool" ] && works "$tool"; then
    say "built by another process: $tool"
    echo "$tool"
    exit 0
  fi
fi

go_select "$GO_MIN_VERSION"

say "building cnitool $CNI_VERSION (go install from $(go_proxy_url))"
mkdir -p "$dir/bin"
GOBIN="$dir/bin" go_run "$dir" install "github.com/containernetworking/cni/cnitool@$CNI_VERSION" >&2 ||
  die "go install github.com/containernetworking/cni/cnitool@$CNI_VERSION failed"
[ -x "$tool" ] || die "go install succeeded but $tool is missing"
works "$tool" || die "$tool does not run as cnitool (no gc/status in its usage)"
go_drop_caches "$dir"
say "built $tool"
echo "$tool"
