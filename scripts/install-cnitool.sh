#!/usr/bin/env bash
# Prints the absolute path of a working libcni `cnitool` (last line of stdout), building it on
# first use into a cache outside the source tree:
#   ${SPIDERPOOL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiderpool-test}/cnitool-<cni>-<go>/
#
# No Go installation is needed: a pinned Go toolchain is fetched from the Go module proxy (the
# `golang.org/toolchain` module, checked against its go.sum hash from sum.golang.org), then
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
GO_VERSION=1.23.12
# go.sum hash of golang.org/toolchain@v0.0.1-go1.23.12.linux-amd64, as sum.golang.org records it.
GO_TOOLCHAIN_H1_AMD64='h1:CQZ55qhuGAYcgv4npnr3DsfZP3i8URMjkpv7TYHRIH4='

say() { echo "install-cnitool: $*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}

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

case "$(uname -m)" in
  x86_64 | amd64) GOARCH=amd64 ;;
  aarch64 | arm64) GOARCH=arm64 ;;
  *) die "unsupported machine $(uname -m): only amd64 and arm64 toolchains are fetched" ;;
esac

base="${SPIDERPOOL_TEST_CACHE:-${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/spiderpool-test}"
dir="$base/cnitool-$CNI_VERSION-go$GO_VERSION"
tool="$dir/bin/cnitool"

if [ -x "$tool" ] && works "$tool"; then
  say "cached: $tool"
  echo "$tool"
  exit 0
fi

command -v python3 >/dev/null 2>&1 || die "python3 is needed to unpack the Go toolchain"
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

proxy="${GOPROXY:-https://proxy.golang.org}"
proxy="${proxy%%,*}" # the first proxy of a list
case "$proxy" in
  http://* | https://*) ;;
  *) die "GOPROXY=$proxy: need an http(s) module proxy to fetch the Go toolchain" ;;
esac

download() { # url file
  say "downloading $1"
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 3 -o "$2" "$1" || die "download of $1 failed (curl)"
  else
    python3 - "$1" "$2" <<'EOF' || die "download of $1 failed (python3)"
import shutil, sys, urllib.request
url, path = sys.argv[1], sys.argv[2]
with urllib.request.urlopen(url, timeout=120) as response, open(path, "wb") as out:
    shutil.copyfileobj(response, out)
EOF
  fi
}

toolchain="v0.0.1-go$GO_VERSION.linux-$GOARCH"
goroot="$dir/go"
if [ ! -x "$goroot/bin/go" ]; then
  zip="$dir/toolchain.zip"
  download "$proxy/golang.org/toolchain/@v/$toolchain.zip" "$zip"
  expected=""
  if [ "$GOARCH" = amd64 ]; then
    expected="$GO_TOOLCHAIN_H1_AMD64"
  else
    say "no pinned hash for the $GOARCH toolchain: trusting the proxy's TLS alone"
  fi
  say "verifying and unpacking the Go $GO_VERSION toolchain"
  rm -rf "$goroot.tmp"
  # Checks the module hash (go.sum's h1: the SHA-256 of the sorted per-file SHA-256 list),
  # then extracts with the files' modes, dropping the module path prefix.
  python3 - "$zip" "$goroot.tmp" "golang.org/toolchain@$toolchain/" "$expected" <<'EOF' ||
import base64, hashlib, os, sys, zipfile
path, target, prefix, expected = sys.argv[1:5]
with zipfile.ZipFile(path) as archive:
    names = sorted(archive.namelist())
    summary = "".join(
        f"{hashlib.sha256(archive.read(name)).hexdigest()}  {name}\n" for name in names
    )
    found = "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()
    if expected and found != expected:
        sys.exit(f"toolchain hash {found} is not the pinned {expected}")
    for info in archive.infolist():
        if not info.filename.startswith(prefix):
            sys.exit(f"unexpected file {info.filename} in the toolchain zip")
        relative = info.filename[len(prefix):]
        if not relative or relative.endswith("/"):
            continue
        out = os.path.join(target, relative)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "wb") as handle:
            handle.write(archive.read(info))
        mode = (info.external_attr >> 16) & 0o777
        os.chmod(out, mode or 0o644)
EOF
    {
      rm -rf "$zip" "$goroot.tmp"
      die "the Go toolchain zip from $proxy did not verify or unpack"
    }
  rm -rf "$goroot"
  mv "$goroot.tmp" "$goroot"
  rm -f "$zip"
fi
"$goroot/bin/go" version >&2 || die "the Go toolchain in $goroot does not run; remove $dir and retry"

say "building cnitool $CNI_VERSION (go install from $proxy)"
mkdir -p "$dir/bin"
env -u GOFLAGS -u GOROOT -u GOPATH \
  GOROOT="$goroot" GOPATH="$dir/gopath" GOMODCACHE="$dir/gopath/pkg/mod" GOCACHE="$dir/gocache" \
  GOBIN="$dir/bin" GOPROXY="$proxy" GOTOOLCHAIN=local GOENV=off CGO_ENABLED=0 GOFLAGS=-modcacherw \
  "$goroot/bin/go" install "github.com/containernetworking/cni/cnitool@$CNI_VERSION" >&2 ||
  die "go install github.com/containernetworking/cni/cnitool@$CNI_VERSION failed"
[ -x "$tool" ] || die "go install succeeded but $tool is missing"
works "$tool" || die "$tool does not run as cnitool (no gc/status in its usage)"
rm -rf "$dir/gocache" # only the binary is needed from now on
say "built $tool"
echo "$tool"
