#!/usr/bin/env bash
# Runs every test of the workspace: unit, example, property and doc tests, and the replay of
# the fuzz corpora and regressions (through plain `cargo test`, no fuzzer needed).
# Installs nothing yet: the tests of spiderpool-core need only Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked "$@"
