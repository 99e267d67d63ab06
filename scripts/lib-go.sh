# shellcheck shell=bash
# Go toolchain helpers shared by install-cnitool.sh and install-k8s-testenv.sh. Source it after
# defining say() and die() (die must exit); it sets nothing else up by itself.
#
#   test_cache_base      the cache root, outside the source tree:
#                        ${SPIDERPOOL_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spiderpool-test}
#   go_select MIN        sets GO_BIN (and GO_ROOT) to a Go of version >= MIN: the `go` on PATH
#                        when it is new enough, else the pinned toolchain below, fetched once
#                        from the Go module proxy into <cache root>/go<version>/
#   go_mod_requires F M  the version go.mod file F requires of module M
#   go_run DIR ARGS...   runs that Go hermetically (no user GOFLAGS/GOENV, GOTOOLCHAIN=local,
#                        CGO off), with GOPATH/GOMODCACHE in DIR/gopath and GOCACHE in DIR/gocache
#   go_drop_caches DIR   removes what go_run DIR kept besides its output (gigabytes for
#                        kube-apiserver), once the binaries are built
#
# The fetched toolchain is the `golang.org/toolchain` module, checked against its go.sum hash as
# sum.golang.org records it; every other Go module is verified by go.sum / the checksum database.
# Downloads use curl when present, else python3. Override the proxy with GOPROXY (the first
# http(s) entry of the list is used; default https://proxy.golang.org).

LIB_GO_VERSION=1.26.8
# go.sum hashes of golang.org/toolchain@v0.0.1-go1.26.8.linux-{amd64,arm64} (sum.golang.org).
LIB_GO_H1_AMD64='h1:ZOmGe1OnfREDMIdb1Qi4G9JSuDPBLGExZMQ4nis1RXM='
LIB_GO_H1_ARM64='h1:sYL/O6MqS68ML0kjsQ36WoYIpJqkw60TxizWUYUKQMc='

test_cache_base() {
  echo "${SPIDERPOOL_TEST_CACHE:-${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/spiderpool-test}"
}

go_proxy_url() {
  local proxy="${GOPROXY:-https://proxy.golang.org}"
  proxy="${proxy%%,*}" # the first proxy of a list
  proxy="${proxy%%|*}"
  case "$proxy" in
    http://* | https://*) echo "${proxy%/}" ;;
    *) die "GOPROXY=$proxy: need an http(s) module proxy to fetch Go modules and the Go toolchain" ;;
  esac
}

go_download() { # url file
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

# True when version $1 (e.g. 1.26.8) is at least $2.
go_version_at_least() {
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

# Sets GO_BIN (and GO_ROOT, empty for the go on PATH) to a Go of version >= $1.
go_select() {
  local min="$1" found
  if command -v go >/dev/null 2>&1; then
    found="$(env -u GOROOT -u GOFLAGS GOTOOLCHAIN=local GOENV=off go env GOVERSION 2>/dev/null || true)"
    found="${found#go}"
    if [ -n "$found" ] && go_version_at_least "${found%%[-+ ]*}" "$min"; then
      GO_BIN="$(command -v go)"
      GO_ROOT=""
      say "using $GO_BIN (go$found >= go$min)"
      return 0
    fi
    say "the go on PATH is go${found:-?}, older than go$min: using the pinned go$LIB_GO_VERSION"
  fi
  go_version_at_least "$LIB_GO_VERSION" "$min" ||
    die "the pinned go$LIB_GO_VERSION is older than the needed go$min: bump LIB_GO_VERSION in lib-go.sh"
  go_fetch_toolchain
}

# Fetches (once) the pinned toolchain and sets GO_BIN and GO_ROOT to it.
go_fetch_toolchain() {
  local goarch expected base dir goroot toolchain zip proxy
  case "$(uname -s)/$(uname -m)" in
    Linux/x86_64 | Linux/amd64) goarch=amd64 expected="$LIB_GO_H1_AMD64" ;;
    Linux/aarch64 | Linux/arm64) goarch=arm64 expected="$LIB_GO_H1_ARM64" ;;
    *) die "no Go on PATH and no pinned toolchain for $(uname -s)/$(uname -m): only linux amd64 and arm64 are fetched" ;;
  esac
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to unpack the Go toolchain"
  base="$(test_cache_base)"
  dir="$base/go$LIB_GO_VERSION"
  goroot="$dir/go"
  GO_BIN="$goroot/bin/go"
  GO_ROOT="$goroot"
  mkdir -p "$dir" || die "cannot create the cache directory $dir"
  if [ ! -x "$GO_BIN" ] && command -v flock >/dev/null 2>&1; then
    exec 8>"$dir/.lock"
    flock 8 || die "cannot lock $dir/.lock"
  fi
  if [ ! -x "$GO_BIN" ]; then
    proxy="$(go_proxy_url)" || exit 1
    toolchain="v0.0.1-go$LIB_GO_VERSION.linux-$goarch"
    zip="$dir/toolchain.zip"
    go_download "$proxy/golang.org/toolchain/@v/$toolchain.zip" "$zip"
    say "verifying and unpacking the Go $LIB_GO_VERSION toolchain"
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
    if found != expected:
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
  "$GO_BIN" version >&2 || die "the Go toolchain in $goroot does not run; remove $dir and retry"
}

# Runs the selected Go with a hermetic environment and caches under $1.
go_run() {
  local dir="$1"
  shift
  local goroot_env=(-u GOROOT) proxy
  [ -z "${GO_ROOT:-}" ] || goroot_env=(GOROOT="$GO_ROOT")
  proxy="$(go_proxy_url)" || exit 1
  env -u GOFLAGS -u GOPATH -u GOWORK -u GOOS -u GOARCH "${goroot_env[@]}" \
    GOPATH="$dir/gopath" GOMODCACHE="$dir/gopath/pkg/mod" GOCACHE="$dir/gocache" \
    GOPROXY="$proxy" GOTOOLCHAIN=local GOENV=off GOWORK=off CGO_ENABLED=0 \
    GOFLAGS="-modcacherw -buildvcs=false" "$GO_BIN" "$@"
}

# Removes go_run's module and build caches under $1. Only the built binaries are used after a
# build, and a new version builds in a new directory, so keeping the caches would only hold disk
# (5.5 GB of compiled packages for kube-apiserver) that a CI machine may not have.
go_drop_caches() {
  rm -rf "$1/gocache" "$1/gopath" || die "cannot remove the Go caches in $1"
}

# The version that go.mod file $1 requires of module $2; fails (die) when it requires none.
go_mod_requires() {
  local version
  version="$(awk -v m="$2" '($1 == m && $2 ~ /^v[0-9]/) { print $2; exit }
    ($1 == "require" && $2 == m) { print $3; exit }' "$1")"
  [ -n "$version" ] || die "$1 does not require $2"
  echo "$version"
}
