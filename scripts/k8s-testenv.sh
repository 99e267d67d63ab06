#!/usr/bin/env bash
# A real Kubernetes API server for tests, on loopback: etcd plus kube-apiserver, no kubelet,
# scheduler or controller manager (like controller-runtime's envtest).
#
#   k8s-testenv.sh start DIR   starts both with their data, certificates and logs in DIR, waits
#                              until /readyz is ok and the default namespace exists, and writes
#                              DIR/kubeconfig (admin: CN=admin, O=system:masters), whose path it
#                              prints as the last line of stdout; usable as
#                              `kubectl --kubeconfig DIR/kubeconfig` and by kube-rs (KUBECONFIG=).
#   k8s-testenv.sh stop DIR    stops both (SIGTERM, then SIGKILL after a grace period) and waits
#                              until they are gone. Idempotent; DIR stays, for its logs.
#
# DIR holds: etcd/ (data), pki/ (CA, serving, admin and service-account keys), etcd.log,
# kube-apiserver.log, etcd.pid, kube-apiserver.pid, ports (etcd client/peer, API server),
# kubeconfig, env (export lines for KUBECONFIG and SPIDERPOOL_TEST_KUBECONFIG).
#
# Ports are free loopback ports picked at start, so parallel environments do not clash (a start
# that loses a port race is retried). Works as root and as any other user.
#
# Binaries: K8S_TESTENV_BIN (a directory with kube-apiserver, etcd and k8s-testenv-certs), by
# default the one scripts/install-k8s-testenv.sh builds or finds in its cache.
# Start timeout: K8S_TESTENV_TIMEOUT seconds for each server to become ready (default 120).
# The flags and why: docs/decisions/0006-kubernetes-test-server.md.
set -euo pipefail

say() { echo "k8s-testenv: $*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}
usage() {
  echo "usage: $0 start DIR | stop DIR" >&2
  exit 2
}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

[ $# -eq 2 ] || usage
action="$1"
[ -n "$2" ] || usage
command -v python3 >/dev/null 2>&1 || die "python3 is needed (free ports, readiness checks)"

# True while pid $1 runs the program named $2 (not a zombie, not a reused pid).
running() {
  local pid="$1" name="$2" state exe
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/stat" ]; then
    state="$(sed 's/^.*) \(.\).*/\1/' "/proc/$pid/stat" 2>/dev/null || true)"
    [ "$state" != Z ] || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || echo "$name")"
    exe="${exe% (deleted)}" # the binary was rebuilt meanwhile
    [ "${exe##*/}" = "$name" ] || return 1
  fi
  return 0
}

# Stops the process recorded in $dir/$1.pid, if it still runs, and waits for it to go.
stop_one() {
  local name="$1" pidfile="$dir/$1.pid" pid i
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if running "$pid" "$name"; then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do # 30 s of grace
      running "$pid" "$name" || break
      sleep 0.1
    done
    if running "$pid" "$name"; then
      say "$name (pid $pid) ignored SIGTERM for 30s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        running "$pid" "$name" || break
        sleep 0.1
      done
      running "$pid" "$name" && die "$name (pid $pid) is still running after SIGKILL"
    fi
  fi
  rm -f "$pidfile"
}

stop_all() {
  stop_one kube-apiserver
  stop_one etcd
}

log_size() { # name
  stat -c %s "$dir/$1.log" 2>/dev/null || echo 0
}

# True when the log of $1 says, after byte $2, that a port was taken.
port_taken() { # name offset
  tail -c "+$(($2 + 1))" "$dir/$1.log" 2>/dev/null | grep -q 'address already in use'
}

log_tail() { # name
  say "last lines of $dir/$1.log:"
  tail -n 40 "$dir/$1.log" >&2 2>/dev/null || true
}

# Polls until what $1 names is ready; exits 0 when ready, 1 on time-out, 2 when the process
# (pid $2) died. Modes: etcd URL | apiserver URL (readyz, then the default namespace).
wait_ready() {
  python3 - "$@" "$dir/pki" "${K8S_TESTENV_TIMEOUT:-120}" <<'EOF'
import json, os, ssl, sys, time, urllib.error, urllib.request
mode, pid, url, pki, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
context = None
if mode == "apiserver":
    context = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
    context.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
checks = [url + "/health"] if mode == "etcd" else [url + "/readyz", url + "/api/v1/namespaces/default"]
deadline = time.monotonic() + timeout
last = "no answer yet"
for check in checks:
    while True:
        try:
            with urllib.request.urlopen(check, timeout=5, context=context) as response:
                body = response.read().decode(errors="replace")
            if mode != "etcd" or json.loads(body).get("health") == "true":
                break
            last = body
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}: " + error.read().decode(errors="replace")[-2000:]
        except Exception as error:  # connection refused, TLS not up yet, ...
            last = repr(error)
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    raise ProcessLookupError
        except FileNotFoundError:
            pass
        except ProcessLookupError:
            print(f"the process (pid {pid}) exited; last answer of {check}: {last}", file=sys.stderr)
            sys.exit(2)
        if time.monotonic() > deadline:
            print(f"not ready after {timeout:.0f}s; last answer of {check}: {last}", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.2)
EOF
}

free_ports() { # count
  python3 - "$1" <<'EOF'
import socket, sys
sockets = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    sockets.append(s)
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
}

# One start: 0 when up, 1 on failure, 3 on failure due to a port taken meanwhile (retry).
start_once() {
  local etcd_port peer_port api_port pid status offset
  read -r etcd_port peer_port api_port <<<"$(free_ports 3)"
  [ -n "$api_port" ] || die "could not pick free loopback ports"
  echo "etcd_client=$etcd_port etcd_peer=$peer_port apiserver=$api_port" >"$dir/ports"
  local server="https://127.0.0.1:$api_port"
  "$bin/k8s-testenv-certs" -dir "$dir/pki" -kubeconfig "$dir/kubeconfig" -server "$server" ||
    die "k8s-testenv-certs could not write $dir/pki and $dir/kubeconfig"

  say "starting etcd on 127.0.0.1:$etcd_port"
  offset="$(log_size etcd)"
  "$bin/etcd" \
    --name=spiderpool-test \
    --data-dir="$dir/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="spiderpool-test=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync=true \
    --log-level=warn \
    </dev/null >>"$dir/etcd.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/etcd.pid"
  status=0
  wait_ready etcd "$pid" "http://127.0.0.1:$etcd_port" || status=$?
  if [ "$status" != 0 ]; then
    stop_all
    port_taken etcd "$offset" && return 3
    log_tail etcd
    return 1
  fi

  say "starting kube-apiserver on $server"
  offset="$(log_size kube-apiserver)"
  "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$api_port" \
    --cert-dir="$dir/pki" \
    --tls-cert-file="$dir/pki/apiserver.crt" \
    --tls-private-key-file="$dir/pki/apiserver.key" \
    --client-ca-file="$dir/pki/ca.crt" \
    --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$dir/pki/sa.pub" \
    --service-account-signing-key-file="$dir/pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --allow-privileged=true \
    --disable-admission-plugins=ServiceAccount \
    --endpoint-reconciler-type=none \
    --profiling=false \
    </dev/null >>"$dir/kube-apiserver.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/kube-apiserver.pid"
  status=0
  wait_ready apiserver "$pid" "$server" || status=$?
  if [ "$status" != 0 ]; then
    stop_all
    port_taken kube-apiserver "$offset" && return 3
    log_tail kube-apiserver
    return 1
  fi
  return 0
}

case "$action" in
  start)
    mkdir -p "$2" || die "cannot create $2"
    dir="$(cd "$2" && pwd)"
    for name in kube-apiserver etcd; do
      if [ -f "$dir/$name.pid" ] && running "$(cat "$dir/$name.pid")" "$name"; then
        die "$name already runs for $dir (pid $(cat "$dir/$name.pid")): run '$0 stop $dir' first"
      fi
    done
    if [ -n "${K8S_TESTENV_BIN:-}" ]; then
      bin="$K8S_TESTENV_BIN"
    else
      bin="$(bash "$here/install-k8s-testenv.sh" | tail -n1)" || die "install-k8s-testenv.sh failed"
    fi
    for tool in kube-apiserver etcd k8s-testenv-certs; do
      [ -x "$bin/$tool" ] || die "$bin/$tool is missing (K8S_TESTENV_BIN or install-k8s-testenv.sh)"
    done
    started=$SECONDS
    for attempt in 1 2 3; do
      status=0
      start_once || status=$?
      [ "$status" = 0 ] && break
      if [ "$status" != 3 ] || [ "$attempt" = 3 ]; then
        die "the test environment in $dir did not start (logs: $dir/*.log)"
      fi
      say "a picked port was taken meanwhile: retrying with other ports"
    done
    {
      echo "export KUBECONFIG='$dir/kubeconfig'"
      echo "export SPIDERPOOL_TEST_KUBECONFIG='$dir/kubeconfig'"
    } >"$dir/env"
    say "ready in $((SECONDS - started))s: $(cat "$dir/ports"); kubeconfig $dir/kubeconfig"
    echo "$dir/kubeconfig"
    ;;
  stop)
    [ -d "$2" ] || {
      say "nothing to stop: $2 does not exist"
      exit 0
    }
    dir="$(cd "$2" && pwd)"
    stop_all
    say "stopped ($dir)"
    ;;
  *) usage ;;
esac
