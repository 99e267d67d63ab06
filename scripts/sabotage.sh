#!/usr/bin/env bash
# Shows that the simulation of the cluster protocol notices each of its rules broken on
# purpose. Every patch of check/sabotage/ breaks one rule of spiderpool-core/src/round.rs (its
# first line says which); each is applied to a copy of the committed tree, and the simulation
# must fail there. Prints the first violation of each. Not part of the test command: every
# patch builds the core and what depends on it again (a minute or two each on 2 cores). The
# copies build into target/sabotage (or SPIDERPOOL_SABOTAGE_TARGET), kept between runs so that
# the dependencies are built once; never into the tree's own build directory: Cargo names a
# workspace crate's build by its path within the workspace, so a patched copy's build would
# pass for the tree's.
#
#   bash scripts/sabotage.sh              # 10,000 schedules per patch, or SPIDERPOOL_SIM_SCHEDULES
#   bash scripts/sabotage.sh check/sabotage/no-compensation.patch     # one patch
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
schedules="${SPIDERPOOL_SIM_SCHEDULES:-10000}"
target="${SPIDERPOOL_SABOTAGE_TARGET:-$repo/target/sabotage}"
work="$(mktemp -d "${TMPDIR:-/tmp}/spiderpool-sabotage.XXXXXX")"
cleanup() {
  git -C "$repo" worktree remove --force "$work/tree" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
git worktree add -q --detach "$work/tree" HEAD
status=0
if [ "$#" -eq 0 ]; then
  set -- check/sabotage/*.patch
fi
for patch in "$@"; do
  git -C "$work/tree" checkout -q -- .
  git -C "$work/tree" apply "$repo/$patch"
  echo "== $patch: $(head -n1 "$patch" | sed 's/^# //')"
  if output=$(cd "$work/tree" && CARGO_TARGET_DIR="$target" SPIDERPOOL_SIM_SCHEDULES="$schedules" \
      cargo test -q -p spiderpool-check --test simulation 2>&1); then
    echo "   NOT caught in $schedules schedules"
    status=1
  else
    echo "   caught: $(grep -m1 'broke the protocol' <<<"$output" | sed 's/^.*schedule/schedule/')"
  fi
done
exit "$status"
