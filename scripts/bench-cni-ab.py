#!/usr/bin/env python3
"""Two builds of the spiderpool plugin against each other, call by call.

    scripts/bench-cni-ab.py OLD_BINARY NEW_BINARY [--rounds 600] [--workdir /var/tmp]

Each round runs, for one build and then the other (the order alternating from round to
round), a VERSION call, the ADD of a new container and its DEL, as scripts/bench-cni.py calls
them (its environment, network configuration and /8 pool; one data directory per build).
The first 20 rounds are warm-up. Prints each build's medians and, per call, the median of
the paired differences NEW - OLD, which the machine's drift between blocks does not move.
"""
import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_cni", os.path.join(HERE, "bench-cni.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

WARMUP = 20
CALLS = ("VERSION", "ADD", "DEL")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="the spiderpool binary to compare against")
    parser.add_argument("new", help="the spiderpool binary measured")
    parser.add_argument("--rounds", type=int, default=600, help="measured rounds (600)")
    parser.add_argument("--workdir", default="/var/tmp", help="where the data directories go (/var/tmp)")
    args = parser.parse_args()
    builds = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    root = tempfile.mkdtemp(dir=args.workdir, prefix="bench-cni-ab-")
    try:
        pools = os.path.join(root, "pools.yaml")
        with open(pools, "w") as f:
            f.write(bench.POOL_YAML)
        plugins = {label: bench.spiderpool_plugin(binary, pools, os.path.join(root, label))
                   for label, binary in builds.items()}
        samples = {label: {call: [] for call in CALLS} for label in builds}
        os.sync()
        for index in range(WARMUP + args.rounds):
            order = ("old", "new") if index % 2 == 0 else ("new", "old")
            for label in order:
                for call in CALLS:
                    seconds, _ = plugins[label].call(call, index)
                    if index >= WARMUP:
                        samples[label][call].append(seconds)
        ms = lambda values: statistics.median(values) * 1000
        for label, binary in builds.items():
            medians = {call: ms(values) for call, values in samples[label].items()}
            print(f"{label} ({binary}): " + ", ".join(f"{call} p50 {medians[call]:.2f} ms" for call in CALLS)
                  + f"; ADD above VERSION {medians['ADD'] - medians['VERSION']:.2f} ms")
        for call in CALLS:
            paired = [n - o for n, o in zip(samples["new"][call], samples["old"][call])]
            print(f"{call}: new - old, median of {len(paired)} paired differences: {ms(paired):+.3f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
