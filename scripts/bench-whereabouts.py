#!/usr/bin/env python3
"""ADD/DEL latency of the Whereabouts IPAM CNI plugin (kubernetes datastore), for comparison
with scripts/bench-cni.py.

Whereabouts is called as a container runtime calls an IPAM plugin: one process per call, the
CNI_* environment, the network configuration on stdin, the result read from stdout. It keeps
its state in the API server: per ADD it takes the Lease "whereabouts" (client-go leader
election, released on exit), lists the IPPools, reads the pool, reads the
OverlappingRangeIPReservation of the chosen address, JSON-patches the pool (guarded by a
resourceVersion test; a conflict is retried) and creates the reservation. DEL does the same
with a removal. It does not GET the pod (only its separate reconciler does), so no Pod objects
are created; it does not enter CNI_NETNS either (the path given here does not exist).

The plugin gets what the Whereabouts daemonset installs on a node: a flat file
(configuration_path) holding {"datastore", "kubernetes": {"kubeconfig"}}, and a kubeconfig
whose context names the namespace Whereabouts keeps its objects in. The script writes a copy
of --kubeconfig whose context names the bench namespace (--namespace, created if missing,
never deleted: this API server may have no controller manager to finalize a deletion); all
IPPools, OverlappingRangeIPReservations and Leases in it are deleted before and after the run.
Whereabouts' log level is left at its default (debug, to stderr) unless --log-level is given;
stderr is read per call to count retried pool updates (PATCH conflicts), pool creations, lost
races for the free Lease, and failed lease renewals and releases (see Whereabouts.counts;
client-go logs a wait for a held lease only at -v=4, which the plugin cannot be given, so
such waits show as latency only).

Per level (--levels): the pool is prefilled, untimed, with real ADDs of distinct containers
(pod prefill-N) until it holds that many allocations; then --sequential iterations, each one
ADD of a new container (timed) followed by its DEL (timed), so that every ADD sees the level.
Then, after deleting the pool (a fresh range), --concurrent ADDs of distinct containers are
started at once (threads released by one barrier, one process each) and the total wall time
from the first start to the last exit is printed, with failures and a check that the
addresses given out are distinct and that the pool holds exactly that many allocations.

Usage:
  scripts/bench-whereabouts.py --kubeconfig /tmp/k8s-wb/kubeconfig [--whereabouts PATH]
        [--levels 0,1000] [--sequential 200] [--concurrent 200] [--prefill-jobs 1]
        [--namespace wb-bench] [--range 10.200.0.0/16] [--log-level LEVEL]
        [--log-dir DIR] [--keep]

Each measured phase also prints the API server's own time per request kind (from its
apiserver_request_duration_seconds metric, read before and after the phase), to tell server
time from client time.

Standard library only; calls kubectl (on PATH or --kubectl) for setup, checks and cleanup.
"""

import argparse
import datetime
import ipaddress
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

NETWORK = "wb-bench"


def say(message):
    print(f"bench-whereabouts: {message}", file=sys.stderr, flush=True)


def die(message):
    say(f"FAILED: {message}")
    sys.exit(1)


def percentile(samples, p):
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def stats_ms(samples):
    return (percentile(samples, 50) * 1000, percentile(samples, 90) * 1000,
            percentile(samples, 99) * 1000, max(samples) * 1000)


class Kubectl:
    def __init__(self, kubectl, kubeconfig, namespace):
        self.base = [kubectl, "--kubeconfig", kubeconfig]
        self.namespace = namespace

    def run(self, *args, check=True, namespaced=True, stdin=None):
        command = self.base + (["-n", self.namespace] if namespaced else []) + list(args)
        done = subprocess.run(command, input=stdin, capture_output=True, text=True)
        if check and done.returncode != 0:
            die(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def json(self, *args):
        return json.loads(self.run(*args, "-o", "json").stdout)


class Whereabouts:
    """One CNI call = one process, as a runtime makes it."""

    def __init__(self, binary, workdir, ipam_range, log_level, log_dir=None):
        self.binary = binary
        self.log_dir = log_dir
        self.workdir = workdir
        self.cni_path = os.path.dirname(os.path.abspath(binary))
        ipam = {
            "type": "whereabouts",
            "range": ipam_range,
            "configuration_path": os.path.join(workdir, "whereabouts.conf"),
        }
        if log_level:
            ipam["log_level"] = log_level
        self.config = json.dumps({
            "cniVersion": "0.4.0",
            "name": NETWORK,
            "type": "macvlan",
            "master": "eth0",
            "ipam": ipam,
        }).encode()
        self.lock = threading.Lock()
        # Calls (from their stderr, client-go's leader election logs included) whose pool PATCH
        # failed and was retried (a resourceVersion conflict); whose pool GET was retried (the
        # call that created the pool retries once); that lost a race to take the free Lease
        # (its create or update conflicted with another caller's, and it polled again); whose
        # lease renewal failed while it held the lease (the renewal missed the 1 s renew
        # deadline, or was cut by the call's own end: leadership is then lost, but the call
        # goes on); and whose release of the lease failed (the lease then stays held for its
        # 1 s duration, and the next caller waits for it to expire).
        self.counts = {"update_retries": 0, "pool_created": 0, "lease_races": 0,
                       "renew_failures": 0, "release_failures": 0}
        self.stderr_samples = []

    def env(self, command, container, pod):
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            # Any string: Whereabouts never opens it (the path does not exist).
            "CNI_NETNS": f"/var/run/netns/wb-bench-{container[:12]}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": self.cni_path,
            # As containerd passes them; IgnoreUnknown=1 because K8S_POD_UID is not a
            # field Whereabouts knows (it rejects unknown args otherwise).
            "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};"
                         f"K8S_POD_INFRA_CONTAINER_ID={container};"
                         f"K8S_POD_UID={uuid.uuid5(uuid.NAMESPACE_DNS, pod)}"),
        }

    def call(self, command, container, pod):
        """Runs one call; returns (seconds, ok, ip or None, stderr)."""
        env = self.env(command, container, pod)
        started = time.perf_counter()
        done = subprocess.run([self.binary], input=self.config, env=env, capture_output=True)
        elapsed = time.perf_counter() - started
        stderr = done.stderr.decode(errors="replace")
        ip = None
        ok = done.returncode == 0
        if ok and command == "ADD":
            try:
                result = json.loads(done.stdout)
                ip = result["ips"][0]["address"].split("/")[0]
            except (ValueError, KeyError, IndexError):
                ok = False
                stderr += f"\n[bench] unexpected ADD result: {done.stdout[:500]!r}"
        if self.account(stderr) or not ok:
            self.keep_log(command, container, pod, done.returncode, stderr)
        if not ok and len(self.stderr_samples) < 3:
            self.stderr_samples.append(
                f"{command} {container[:12]} exit {done.returncode}: "
                f"stdout {done.stdout[-500:]!r} stderr ...{stderr[-1500:]}")
        return elapsed, ok, ip, stderr

    def account(self, stderr):
        found = {
            "update_retries": "IPAM error updating pool" in stderr,
            "pool_created": "IPAM error reading pool" in stderr,
            "lease_races": ("Failed to update lock: " in stderr
                            or "error initially creating leader election record" in stderr),
            "renew_failures": "failed to renew lease" in stderr,
            "release_failures": "Failed to release lock" in stderr,
        }
        with self.lock:
            for key, hit in found.items():
                self.counts[key] += hit
        return any(hit for key, hit in found.items() if key != "pool_created")

    def keep_log(self, command, container, pod, returncode, stderr):
        """With --log-dir: the stderr of a call that failed, retried or lost a lease race."""
        if self.log_dir:
            name = os.path.join(self.log_dir, f"{pod}-{command}.log")
            with open(name, "w") as log:
                log.write(f"# {command} {container} pod {pod}: exit {returncode}\n{stderr}")

    def counted_since(self, before):
        new = {key: self.counts[key] - before[key] for key in self.counts}
        return (f"calls that retried a pool update (conflict): {new['update_retries']}, "
                f"created the pool: {new['pool_created']}, lost a race for the free lease: "
                f"{new['lease_races']}, failed a lease renewal while holding it: "
                f"{new['renew_failures']}, failed to release it: {new['release_failures']}")

    def about(self):
        done = subprocess.run([self.binary], stdin=subprocess.DEVNULL, capture_output=True,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        return done.stderr.decode(errors="replace").splitlines()[0].strip()

    def version(self):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "VERSION"}
        started = time.perf_counter()
        done = subprocess.run([self.binary], input=b'{"cniVersion":"0.4.0"}', env=env,
                              capture_output=True)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            die(f"VERSION failed: {done.stderr.decode(errors='replace')}")
        return elapsed, done.stdout.decode()


def container_id(kind, n):
    return uuid.uuid5(uuid.NAMESPACE_URL, f"wb-bench/{kind}/{n}").hex * 2  # 64 hex digits


def pool_allocations(kubectl, pool_name):
    done = kubectl.run("get", "ippools.whereabouts.cni.cncf.io", pool_name, "-o", "json",
                       check=False)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout).get("spec", {}).get("allocations") or {}


def clean(kubectl):
    """Deletes every Whereabouts object and lease in the bench namespace."""
    for resource in ("ippools.whereabouts.cni.cncf.io",
                     "overlappingrangeipreservations.whereabouts.cni.cncf.io",
                     "leases.coordination.k8s.io"):
        kubectl.run("delete", resource, "--all", "--wait=true", "--ignore-not-found")


def count_objects(kubectl, resource):
    return len(kubectl.json("get", resource)["items"])


def prefill(wb, want, have, jobs):
    """Real ADDs of containers prefill-<have>..prefill-<want-1>, untimed."""
    numbers = list(range(have, want))
    failures = []
    lock = threading.Lock()

    def worker(mine):
        for n in mine:
            _, ok, _, stderr = wb.call("ADD", container_id("prefill", n), f"prefill-{n}")
            if not ok:
                with lock:
                    failures.append((n, stderr[-800:]))

    threads = [threading.Thread(target=worker, args=(numbers[i::jobs],)) for i in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        die(f"{len(failures)} prefill ADDs failed; first: {failures[0]}")


def sequential(wb, level, iterations):
    adds, dels = [], []
    for i in range(iterations):
        container, pod = container_id(f"seq-{level}", i), f"seq-{level}-{i}"
        elapsed, ok, ip, stderr = wb.call("ADD", container, pod)
        if not ok:
            die(f"level {level}: ADD {i} failed: {stderr[-1500:]}")
        adds.append(elapsed)
        elapsed, ok, _, stderr = wb.call("DEL", container, pod)
        if not ok:
            die(f"level {level}: DEL {i} failed: {stderr[-1500:]}")
        dels.append(elapsed)
    return adds, dels


def concurrent(wb, count):
    barrier = threading.Barrier(count + 1)
    results = [None] * count
    starts = [0.0] * count
    ends = [0.0] * count

    def one(i):
        barrier.wait()
        starts[i] = time.perf_counter()
        results[i] = wb.call("ADD", container_id("concurrent", i), f"concurrent-{i}")
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    total = max(ends) - min(starts)
    spread = max(starts) - min(starts)
    return total, spread, results


def server_metrics(kubectl):
    """API server request time, per (resource, verb), of the objects Whereabouts uses:
    {(resource, verb): [seconds, count]} from apiserver_request_duration_seconds."""
    done = kubectl.run("get", "--raw", "/metrics", namespaced=False, check=False)
    totals = {}
    for line in done.stdout.splitlines():
        for suffix, index in (("_sum{", 0), ("_count{", 1)):
            head = "apiserver_request_duration_seconds" + suffix
            if not line.startswith(head):
                continue
            labels, value = line[len(head):].rsplit("} ", 1)
            fields = dict(item.split("=", 1) for item in labels.split(",") if "=" in item)
            fields = {k: v.strip('"') for k, v in fields.items()}
            if fields.get("group") == "whereabouts.cni.cncf.io" or fields.get("resource") == "leases":
                key = (fields.get("resource", "?"), fields.get("verb", "?"))
                totals.setdefault(key, [0.0, 0])[index] += float(value)
    return totals


def server_report(before, after, calls):
    """One line: mean server time per request kind between two snapshots, and per call."""
    short = {"ippools": "pool", "overlappingrangeipreservations": "reservation",
             "leases": "lease"}
    parts, total = [], 0.0
    for key in sorted(after):
        seconds = after[key][0] - before.get(key, [0.0, 0])[0]
        count = after[key][1] - before.get(key, [0.0, 0])[1]
        if count <= 0:
            continue
        total += seconds
        parts.append(f"{short.get(key[0], key[0])} {key[1]} {int(count)}x {seconds / count * 1000:.1f}")
    if not parts:
        return "no API server metrics"
    return (f"API server time per request, mean ms: {', '.join(parts)}; "
            f"{total / max(calls, 1) * 1000:.1f} ms of server time per call")


def load_average():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--whereabouts", default="/tmp/wb/whereabouts")
    parser.add_argument("--kubectl", default=shutil.which("kubectl") or "kubectl")
    parser.add_argument("--levels", default="0,1000")
    parser.add_argument("--sequential", type=int, default=200, metavar="N")
    parser.add_argument("--concurrent", type=int, default=200, metavar="N",
                        help="0 skips the concurrent run")
    parser.add_argument("--prefill-jobs", type=int, default=1,
                        help="parallel prefill callers (they contend for the lease)")
    parser.add_argument("--namespace", default="wb-bench")
    parser.add_argument("--range", default="10.200.0.0/16")
    parser.add_argument("--log-level", default="",
                        help="Whereabouts log_level (default: unset, i.e. debug to stderr)")
    parser.add_argument("--log-dir", default="",
                        help="write there the stderr of every call that failed, retried a pool "
                             "update, lost a lease race or failed to renew or release the lease")
    parser.add_argument("--keep", action="store_true",
                        help="keep the objects and the work directory at the end")
    args = parser.parse_args()

    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if levels != sorted(levels):
        die("--levels must be ascending")
    net = ipaddress.ip_network(args.range)
    if max(levels + [0]) + max(args.sequential, args.concurrent) + 2 > net.num_addresses:
        die(f"--range {net} is too small for these levels")
    if not os.access(args.whereabouts, os.X_OK):
        die(f"{args.whereabouts} is not executable")
    kubeconfig = os.path.abspath(args.kubeconfig)
    if not os.path.isfile(kubeconfig):
        die(f"{kubeconfig} does not exist")

    run_started = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc)
    workdir = tempfile.mkdtemp(prefix="wb-bench-")
    # The kubeconfig Whereabouts uses: the given one, with the bench namespace in its context.
    wb_kubeconfig = os.path.join(workdir, "kubeconfig")
    shutil.copyfile(kubeconfig, wb_kubeconfig)
    admin = Kubectl(args.kubectl, kubeconfig, args.namespace)
    admin.run("config", "set-context", "--current", f"--namespace={args.namespace}",
              "--kubeconfig", wb_kubeconfig, namespaced=False)
    with open(os.path.join(workdir, "whereabouts.conf"), "w") as conf:
        json.dump({"datastore": "kubernetes", "kubernetes": {"kubeconfig": wb_kubeconfig}}, conf)

    for crd in ("ippools.whereabouts.cni.cncf.io",
                "overlappingrangeipreservations.whereabouts.cni.cncf.io"):
        if admin.run("get", "crd", crd, check=False, namespaced=False).returncode != 0:
            die(f"CRD {crd} is not installed (kubectl apply -f the module's doc/crds/)")
    if admin.run("get", "namespace", args.namespace, check=False,
                 namespaced=False).returncode != 0:
        admin.run("create", "namespace", args.namespace, namespaced=False)
    clean(admin)

    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    wb = Whereabouts(os.path.abspath(args.whereabouts), workdir, str(net), args.log_level,
                     args.log_dir or None)
    pool_name = str(net).replace("/", "-")  # Whereabouts' name for it (no network_name set)

    floor = [wb.version()[0] for _ in range(20)]
    version_text = wb.about()
    server_version = admin.run("version", "-o", "json", namespaced=False, check=False)
    try:
        server = json.loads(server_version.stdout)["serverVersion"]["gitVersion"]
    except (ValueError, KeyError):
        server = "?"

    print(f"date: {started:%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs, kernel {platform.release()}")
    print(f"load average before: {load_average()}")
    print(f"whereabouts: {wb.binary} ({version_text}); API server {server} "
          f"({kubeconfig}); namespace {args.namespace}; range {net} (pool {pool_name})")
    print(f"whereabouts log level: {args.log_level or 'default (debug, stderr)'}; "
          f"sequential {args.sequential} per level (ADD then DEL of a new container), "
          f"concurrent {args.concurrent}; prefill jobs {args.prefill_jobs}")
    print(f"whereabouts exec floor (VERSION, 20 calls): p50 "
          f"{percentile(floor, 50) * 1000:.1f} ms, max {max(floor) * 1000:.1f} ms", flush=True)

    rows = []
    have = 0
    for level in levels:
        if level > have:
            t0 = time.monotonic()
            prefill(wb, level, have, args.prefill_jobs)
            have = level
            held = pool_allocations(admin, pool_name)
            if held is None or len(held) != level:
                die(f"after prefill the pool holds {None if held is None else len(held)}, "
                    f"not {level}")
            print(f"  prefilled {level} allocations by real ADDs in "
                  f"{time.monotonic() - t0:.1f} s (untimed)", flush=True)
        print(f"  level {level}: load average at start {load_average()}", flush=True)
        before = dict(wb.counts)
        metrics = server_metrics(admin)
        adds, dels = sequential(wb, level, args.sequential)
        metrics = server_report(metrics, server_metrics(admin), 2 * len(adds))
        held = pool_allocations(admin, pool_name)
        if (held is None and level) or (held is not None and len(held) != level):
            die(f"level {level}: after ADD+DEL pairs the pool holds "
                f"{None if held is None else len(held)} allocations")
        a50, a90, a99, amax = stats_ms(adds)
        d50, d90, d99, dmax = stats_ms(dels)
        print(f"whereabouts level {level}: sequential ADD p50 {a50:.1f} ms, p90 {a90:.1f} ms, "
              f"max {amax:.1f} ms ({len(adds)} calls)")
        print(f"whereabouts level {level}: sequential DEL p50 {d50:.1f} ms, p90 {d90:.1f} ms, "
              f"max {dmax:.1f} ms ({len(dels)} calls)")
        print(f"  level {level}: {wb.counted_since(before)}")
        print(f"  level {level}: {metrics}", flush=True)
        rows.append((level, "ADD", len(adds), a50, a90, a99, amax))
        rows.append((level, "DEL", len(dels), d50, d90, d99, dmax))

    if args.concurrent > 0:
        clean(admin)  # a fresh range: no pool, no reservations, no lease
        print(f"  concurrent: load average at start {load_average()}", flush=True)
        before = dict(wb.counts)
        metrics = server_metrics(admin)
        total, spread, results = concurrent(wb, args.concurrent)
        metrics = server_report(metrics, server_metrics(admin), args.concurrent)
        failed = [r for r in results if not r[1]]
        ips = [r[2] for r in results if r[1]]
        latencies = [r[0] for r in results if r[1]]
        held = pool_allocations(admin, pool_name) or {}
        reservations = count_objects(admin, "overlappingrangeipreservations.whereabouts.cni.cncf.io")
        timeouts = sum("time limit exceeded" in r[3] for r in failed)
        print(f"whereabouts: {args.concurrent} concurrent ADDs in {total:.2f} s, "
              f"{len(failed)} failed")
        if latencies:
            c50, c90, _, cmax = stats_ms(latencies)
            print(f"  concurrent: started within {spread * 1000:.0f} ms; per-call latency of "
                  f"the successful ones p50 {c50:.0f} ms, p90 {c90:.0f} ms, max {cmax:.0f} ms; "
                  f"{len(set(ips))} distinct addresses for {len(ips)} successes; pool holds "
                  f"{len(held)} allocations, {reservations} OverlappingRangeIPReservations")
        print(f"  concurrent: {wb.counted_since(before)}; failures on the 2-minute ADD time "
              f"limit: {timeouts}")
        print(f"  concurrent: {metrics}")
        if len(set(ips)) != len(ips):
            print("  ERROR: duplicate addresses were given out")
        if len(held) != len(ips):
            print(f"  ERROR: the pool holds {len(held)} allocations, not {len(ips)}")
        for sample in wb.stderr_samples:
            print(f"  failure sample: {sample}")

    if not args.keep:
        clean(admin)
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept: objects in namespace {args.namespace}, work directory {workdir}")

    print()
    print(f"load average after: {load_average()}; wall time of the run "
          f"{time.monotonic() - run_started:.0f} s")
    print()
    print("| binary | allocations | call | n | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for level, op, n, p50, p90, p99, pmax in rows:
        print(f"| whereabouts | {level} | {op} | {n} | {p50:.1f} | {p90:.1f} | {p99:.1f} "
              f"| {pmax:.1f} |")


if __name__ == "__main__":
    main()
