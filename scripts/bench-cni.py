#!/usr/bin/env python3
"""ADD/DEL latency of the `spiderpool` CNI IPAM plugin against Debian's `host-local`.

Both plugins are called as a container runtime calls them: one process per call, the CNI_*
environment, the network configuration on stdin, the result read from stdout. In one run:

1. each binary's exec floor: CNI_COMMAND=VERSION, which does no IPAM work;
2. ADD and DEL latency (p50/p90/p99) of both plugins at 0, 1,000 and 10,000 existing
   allocations, then of spiderpool alone at 100,000. At each level every iteration is one ADD
   of a new container followed by its DEL, so the occupancy stays at the level. Each plugin
   runs its iterations in a block of its own, after `sync`, as on a node that uses only one
   of them (see measure()).

spiderpool runs with its defaults: WAL, synchronous=FULL (every ADD and DEL is on disk before
the plugin answers), busy wait 10 s. host-local writes one file per address (no fsync).

Prefilling: at 0 nothing. Otherwise the pool is prefilled with exactly the state the plugins
would leave after N ADDs of N containers, written directly, because N real ADDs of host-local
at 10,000 take minutes (and 100,000 of spiderpool several). spiderpool: one real ADD creates
the store (schema, pool-file cache, pool row), then one SQLite transaction adds the other
allocations, their run of held addresses, the pool's count and cursor. host-local: one file
per address holding "<container ID>\\r\\n<ifname>", and last_reserved_ip.0. Before measuring,
the script checks both shortcuts: 40 real ADDs in one directory and the shortcut for 40 in
another must give identical state (every table row; every file name and content). With
`--prefill real`, spiderpool is prefilled by real ADDs instead (100,000 take several minutes).

Nothing is written into the repository. Data directories go to a temporary directory under
/var/tmp (a disk, so that fsync means something; the script prints the file system), removed
only at the end (unless --keep): deleting thousands of files between levels would slow down
the next level's file creations (ext4 skips inodes deleted in the last 60 to 300 s when it
allocates one, and spiderpool creates its -wal and -shm files on every call), so also leave
the machine a few minutes between two runs.

Usage:
  scripts/bench-cni.py [--spiderpool PATH] [--host-local PATH] [--iterations N]
                       [--floor-iterations N] [--levels 0,1000,10000] [--big-level 100000]
                       [--prefill fast|real] [--workdir /var/tmp] [--keep]

Without --spiderpool the script builds it first (cargo build --release -p spiderpool-cni).
"""

import argparse
import datetime
import hashlib
import ipaddress
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

NETWORK = "bench-net"
POOL = "bench"
SUBNET = ipaddress.ip_network("10.0.0.0/8")
GATEWAY = ipaddress.ip_address("10.0.0.1")
FIRST = ipaddress.ip_address("10.0.0.2")
LAST = ipaddress.ip_address("10.255.255.254")
IFNAME = "eth0"
HOST_LOCAL = "/usr/lib/cni/host-local"

POOL_YAML = f"""apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata:
  name: {POOL}
spec:
  subnet: {SUBNET}
  ips:
    - {FIRST}-{LAST}
  gateway: {GATEWAY}
"""

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fail(message):
    print(f"bench-cni: {message}", file=sys.stderr)
    sys.exit(1)


def container_id(index):
    """A 64-hex container ID, as containerd and CRI-O make them."""
    return hashlib.sha256(f"bench-{index}".encode()).hexdigest()


def pod_uid(index):
    return f"{index:08x}-0000-4000-8000-{index:012x}"


def pod_name(index):
    return f"bench-{index}"


def cni_env(command, index, cni_path):
    """The environment a runtime (containerd through Multus) sets for one call."""
    cid = container_id(index)
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": f"/var/run/netns/cni-{cid[:8]}",
        "CNI_IFNAME": IFNAME,
        "CNI_ARGS": (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod_name(index)};"
            f"K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID={pod_uid(index)}"
        ),
        "CNI_PATH": cni_path,
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }


class Plugin:
    """One IPAM plugin with its configuration and data directory."""

    def __init__(self, label, binary, config, cni_path):
        self.label = label
        self.binary = binary
        self.config = json.dumps(config).encode()
        self.cni_path = cni_path

    def call(self, command, index):
        """Runs one plugin process; returns (seconds, stdout). Exits on failure."""
        env = cni_env(command, index, self.cni_path)
        stdin = b'{"cniVersion":"1.0.0"}' if command == "VERSION" else self.config
        started = time.perf_counter_ns()
        done = subprocess.run(
            [self.binary], input=stdin, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        elapsed = (time.perf_counter_ns() - started) / 1e9
        if done.returncode != 0:
            fail(
                f"{self.label} {command} of container {index} failed ({done.returncode}): "
                f"{done.stdout.decode().strip()} {done.stderr.decode().strip()}"
            )
        if command == "ADD" and b'"ips"' not in done.stdout:
            fail(f"{self.label} ADD answered no address: {done.stdout!r}")
        return elapsed, done.stdout


def spiderpool_plugin(binary, pools, data_dir):
    config = {
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "macvlan",
        "master": "eth0",
        "ipam": {
            "type": "spiderpool",
            "ippools_path": pools,
            "data_dir": data_dir,
            "node_name": "bench-node",
        },
        "args": {"cni": {"annotations": {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [POOL]})}}},
    }
    return Plugin("spiderpool", binary, config, f"/usr/lib/cni:{os.path.dirname(binary)}")


def host_local_plugin(binary, data_dir):
    config = {
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "macvlan",
        "master": "eth0",
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [
                [{"subnet": str(SUBNET), "rangeStart": str(FIRST), "rangeEnd": str(LAST), "gateway": str(GATEWAY)}]
            ],
        },
    }
    return Plugin("host-local", binary, config, "/usr/lib/cni")


def key(address):
    """spiderpool's stored form of an address: 16 bytes big-endian."""
    return int(address).to_bytes(16, "big")


def prefill_spiderpool(plugin, data_dir, count, mode="fast"):
    """The state of `count` ADDs of containers 0..count-1.

    real: `count` plugin calls. fast: the first ADD for real (it creates the store, caches the
    pool file and writes container 0's row), then one transaction writes the rows of the
    others: copies of row 0 with every value that names container 0 (its address, container
    ID, pod UID, pod name) replaced by container i's, whatever the columns are called; the run
    of held addresses is extended, the pool's count and cursor set. verify_prefill compares
    the result with real ADDs, so a schema change that this does not follow stops the run."""
    if count == 0:
        return
    if mode == "real":
        for i in range(count):
            plugin.call("ADD", i)
        return
    plugin.call("ADD", 0)
    if count == 1:
        return
    db = sqlite3.connect(os.path.join(data_dir, "state.db"), isolation_level=None)
    columns = [row[1] for row in db.execute("PRAGMA table_info(allocations)")]
    (row,) = db.execute("SELECT * FROM allocations").fetchall()
    first = key(FIRST)
    by_value = {
        first: lambda i: key(FIRST + i),
        container_id(0): container_id,
        pod_uid(0): pod_uid,
        pod_name(0): pod_name,
    }
    makers = [by_value.get(value) for value in row]
    if makers.count(None) == len(makers) or by_value[first] not in makers:
        fail(f"the allocations table has no address column: {columns}")

    def rows():
        for i in range(1, count):
            yield tuple(value if make is None else make(i) for value, make in zip(row, makers))

    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        f"INSERT INTO allocations ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows()
    )
    last = key(FIRST + count - 1)
    db.execute("UPDATE runs SET end = ? WHERE pool = ? AND start = ?", (last, POOL, first))
    db.execute("UPDATE pools SET cursor = ?, allocated = ? WHERE name = ?", (last, count, POOL))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def prefill_host_local(data_dir, count):
    """The files host-local leaves after `count` ADDs of containers 0..count-1."""
    if count == 0:
        return
    network_dir = os.path.join(data_dir, NETWORK)
    os.makedirs(network_dir, exist_ok=True)
    for i in range(count):
        with open(os.path.join(network_dir, str(FIRST + i)), "w", newline="") as f:
            f.write(f"{container_id(i)}\r\n{IFNAME}")
    with open(os.path.join(network_dir, "last_reserved_ip.0"), "w") as f:
        f.write(str(FIRST + count - 1))
    open(os.path.join(network_dir, "lock"), "a").close()


def spiderpool_dump(data_dir):
    db = sqlite3.connect(os.path.join(data_dir, "state.db"))
    dump = {
        table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    }
    db.close()
    return dump


def host_local_dump(data_dir):
    network_dir = os.path.join(data_dir, NETWORK)
    dump = {}
    for name in sorted(os.listdir(network_dir)):
        with open(os.path.join(network_dir, name), "rb") as f:
            dump[name] = f.read()
    return dump


def verify_prefill(spiderpool, host_local, pools, base, mode):
    """Real ADDs and the shortcut must leave identical state."""
    count = 40
    real, fast = os.path.join(base, "verify-real"), os.path.join(base, "verify-fast")
    for make_plugin, prefill, dump in (
        (lambda d: spiderpool_plugin(spiderpool, pools, d),
         lambda plugin, d, n: prefill_spiderpool(plugin, d, n, mode), spiderpool_dump),
        (lambda d: host_local_plugin(host_local, d), lambda _plugin, d, n: prefill_host_local(d, n),
         host_local_dump),
    ):
        shutil.rmtree(real, ignore_errors=True)
        shutil.rmtree(fast, ignore_errors=True)
        plugin = make_plugin(real)
        for i in range(count):
            plugin.call("ADD", i)
        prefill(make_plugin(fast), fast, count)
        if dump(real) != dump(fast):
            fail(f"{plugin.label}: the prefill shortcut does not give the state of real ADDs:\n"
                 f"{dump(real)}\n{dump(fast)}")
        print(f"  {plugin.label}: {count} real ADDs and the prefill shortcut give identical state", flush=True)
    shutil.rmtree(real, ignore_errors=True)
    shutil.rmtree(fast, ignore_errors=True)


def percentile(samples, p):
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def summary(samples):
    return {p: percentile(samples, p) * 1000 for p in (50, 90, 99)}


def measure(plugins, level, iterations, warmup):
    """Per plugin, one block of ADD of a new container then its DEL, `warmup + iterations`
    times; the blocks run one after the other, each after `sync`, so that neither plugin's
    dirty pages or cache traffic land in the other's figures (interleaving the two call by
    call slowed spiderpool's fsyncs down by up to 1 ms while host-local walked 10,000 files)."""
    times = {}
    for plugin in plugins:
        os.sync()
        adds, dels = [], []
        for i in range(warmup + iterations):
            index = level + i
            add, _ = plugin.call("ADD", index)
            delete, _ = plugin.call("DEL", index)
            if i >= warmup:
                adds.append(add)
                dels.append(delete)
        times[(plugin.label, "ADD")] = adds
        times[(plugin.label, "DEL")] = dels
    return times


def file_system(path):
    best = ("?", "?")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            device, point, kind = line.split()[:3]
            if path.startswith(point) and len(point) >= len(best[0]):
                best = (point, f"{kind} on {device}")
    return best[1]


def machine():
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        memory = int(meminfo.readline().split()[1]) // 1024 // 1024
    return f"{os.cpu_count()} vCPUs ({model}), {memory} GiB, Linux {platform.release()}"


def git_commit():
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def build_spiderpool():
    print("building spiderpool (cargo build --release -p spiderpool-cni) ...", flush=True)
    subprocess.run(["cargo", "build", "--release", "-p", "spiderpool-cni"], cwd=REPO, check=True)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    return os.path.join(target, "release", "spiderpool")


def ensure_host_local(path):
    if os.access(path, os.X_OK):
        return
    if path != HOST_LOCAL:
        fail(f"{path} is not an executable")
    print("installing containernetworking-plugins (apt-get) ...", flush=True)
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "containernetworking-plugins"], check=True)


def package_version(name):
    done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spiderpool", help="the spiderpool binary (default: build it, release)")
    parser.add_argument("--host-local", default=HOST_LOCAL, help=f"the host-local binary ({HOST_LOCAL})")
    parser.add_argument("--iterations", type=int, default=300, help="ADD+DEL pairs per level (300)")
    parser.add_argument("--warmup", type=int, default=10, help="pairs run first and not counted (10)")
    parser.add_argument("--floor-iterations", type=int, default=500, help="VERSION calls per binary (500)")
    parser.add_argument("--levels", default="0,1000,10000", help="occupancies for both plugins")
    parser.add_argument("--big-level", type=int, default=100_000, help="occupancy for spiderpool alone (0: skip)")
    parser.add_argument("--workdir", default="/var/tmp", help="where the data directories go (/var/tmp)")
    parser.add_argument("--prefill", choices=("fast", "real"), default="fast",
                        help="spiderpool prefill: one SQLite transaction (fast, checked), or real ADDs")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args()

    spiderpool = os.path.abspath(args.spiderpool) if args.spiderpool else build_spiderpool()
    if not os.access(spiderpool, os.X_OK):
        fail(f"{spiderpool} is not an executable")
    ensure_host_local(args.host_local)
    levels = [int(level) for level in args.levels.split(",")]
    base = tempfile.mkdtemp(prefix="bench-cni-", dir=args.workdir)
    pools = os.path.join(base, "pools.yaml")
    with open(pools, "w") as f:
        f.write(POOL_YAML)

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    print(f"date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print(f"spiderpool: {spiderpool} (commit {git_commit()}); host-local: {args.host_local} "
          f"(containernetworking-plugins {package_version('containernetworking-plugins')})")
    print(f"data directories: {base} ({file_system(base)})")
    print(f"pool: {SUBNET}, {FIRST}-{LAST}, gateway {GATEWAY}; iterations {args.iterations} "
          f"(+{args.warmup} warm-up) per level, {args.floor_iterations} VERSION calls per binary", flush=True)

    rows = []  # (binary, level, op, n, p50, p90, p99)
    try:
        print("checking the prefill shortcuts ...", flush=True)
        verify_prefill(spiderpool, args.host_local, pools, base, args.prefill)

        print("exec floor (VERSION) ...", flush=True)
        floor_plugins = [
            spiderpool_plugin(spiderpool, pools, os.path.join(base, "floor")),
            host_local_plugin(args.host_local, os.path.join(base, "floor")),
        ]
        floor = {plugin.label: [] for plugin in floor_plugins}
        for i in range(args.floor_iterations + args.warmup):
            for plugin in floor_plugins:
                elapsed, _ = plugin.call("VERSION", i)
                if i >= args.warmup:
                    floor[plugin.label].append(elapsed)
        for label, samples in floor.items():
            s = summary(samples)
            rows.append((label, "-", "VERSION", len(samples), s[50], s[90], s[99]))

        plan = [(level, True) for level in levels]
        if args.big_level:
            plan.append((args.big_level, False))
        for level, with_host_local in plan:
            print(f"level {level:,} ...", flush=True)
            ours_dir = os.path.join(base, f"spiderpool-{level}")
            ours = spiderpool_plugin(spiderpool, pools, ours_dir)
            prefill_spiderpool(ours, ours_dir, level, args.prefill)
            plugins = [ours]
            if with_host_local:
                theirs_dir = os.path.join(base, f"host-local-{level}")
                prefill_host_local(theirs_dir, level)
                plugins.append(host_local_plugin(args.host_local, theirs_dir))
            times = measure(plugins, level, args.iterations, args.warmup)
            for (label, op), samples in times.items():
                s = summary(samples)
                rows.append((label, f"{level:,}", op, len(samples), s[50], s[90], s[99]))
            # Back at the level, and nothing else held.
            if with_host_local:
                held = len([n for n in os.listdir(os.path.join(theirs_dir, NETWORK)) if n[0].isdigit()])
                if held != level:
                    fail(f"host-local holds {held} addresses after the level {level} run")
            if level:
                count = sqlite3.connect(os.path.join(ours_dir, "state.db")).execute(
                    "SELECT count(*) FROM allocations").fetchone()[0]
                if count != level:
                    fail(f"spiderpool holds {count} addresses after the level {level} run")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    load_after = os.getloadavg()
    finished = datetime.datetime.now(datetime.timezone.utc)
    print()
    print(f"Run {started:%Y-%m-%d %H:%M}-{finished:%H:%M} UTC; load average after: "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print()
    print("| binary | allocations | call | n | p50 (ms) | p90 (ms) | p99 (ms) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for binary, level, op, n, p50, p90, p99 in rows:
        print(f"| {binary} | {level} | {op} | {n} | {p50:.2f} | {p90:.2f} | {p99:.2f} |")

    def p50(binary, level, op):
        for row in rows:
            if row[0] == binary and row[1] == level and row[2] == op:
                return row[4]
        return None

    print()
    checks = []
    ours_0, theirs_0 = p50("spiderpool", "0", "ADD"), p50("host-local", "0", "ADD")
    ours_floor = p50("spiderpool", "-", "VERSION")
    ours_10k, theirs_10k = p50("spiderpool", "10,000", "ADD"), p50("host-local", "10,000", "ADD")
    if ours_0 is not None and theirs_0 is not None:
        checks.append((f"ADD p50 at 0 no slower than host-local's: {ours_0:.2f} vs {theirs_0:.2f} ms",
                       ours_0 <= theirs_0))
    if ours_0 is not None:
        checks.append((f"ADD p50 at 0 within 1 ms of the exec floor: {ours_0:.2f} - {ours_floor:.2f} = "
                       f"{ours_0 - ours_floor:.2f} ms", ours_0 - ours_floor <= 1.0))
    if ours_10k is not None and theirs_10k is not None:
        checks.append((f"ADD p50 at 10,000 at least 15x faster than host-local: {theirs_10k:.2f} / "
                       f"{ours_10k:.2f} = {theirs_10k / ours_10k:.1f}x", theirs_10k / ours_10k >= 15))
    if ours_10k is not None and ours_0 is not None:
        checks.append((f"ADD p50 at 10,000 within 1.3x of ADD p50 at 0: {ours_10k:.2f} / {ours_0:.2f} = "
                       f"{ours_10k / ours_0:.2f}x", ours_10k / ours_0 <= 1.3))
    for text, met in checks:
        print(f"- target {'met' if met else 'MISSED'}: {text}")


if __name__ == "__main__":
    main()
