//! Replays every stored fuzz input, `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`,
//! through the same checks the fuzz targets run, in plain `cargo test` (no libFuzzer and no
//! C++ compiler needed). A missing or empty corpus directory fails, so the replay cannot pass
//! by finding nothing.

use std::fs;
use std::path::{Path, PathBuf};

use spiderpool_check::Target;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fuzz")
}

/// The inputs of one directory, in name order; dot files (`.gitkeep`) are not inputs.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{} must exist: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            path.is_file()
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// Runs every input of `target` and reports all failures at once.
fn replay(target: Target) {
    let corpus = inputs(&fuzz_dir().join("corpus").join(target.name()));
    assert!(!corpus.is_empty(), "fuzz/corpus/{} holds no input", target.name());
    let regressions = inputs(&fuzz_dir().join("regressions").join(target.name()));
    let mut failures = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(failure) = target.check(&data) {
            failures.push(format!("{}: {failure}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs of {} fail:\n{}",
        failures.len(),
        corpus.len() + regressions.len(),
        target.name(),
        failures.join("\n")
    );
}

#[test]
fn range_inputs_pass() {
    replay(Target::Range);
}

#[test]
fn subnet_inputs_pass() {
    replay(Target::Subnet);
}

#[test]
fn documents_inputs_pass() {
    replay(Target::Documents);
}

#[test]
fn annotations_inputs_pass() {
    replay(Target::Annotations);
}

#[test]
fn selector_inputs_pass() {
    replay(Target::Selector);
}

#[test]
fn allocation_ops_inputs_pass() {
    replay(Target::AllocationOps);
}

#[test]
fn cni_call_inputs_pass() {
    replay(Target::CniCall);
}

#[test]
fn agent_call_inputs_pass() {
    replay(Target::AgentCall);
}

#[test]
fn api_records_inputs_pass() {
    replay(Target::ApiRecords);
}

/// Every fuzz target of `fuzz/Cargo.toml` is replayed here, and every target replayed here
/// is a fuzz target.
#[test]
fn every_fuzz_target_is_replayed() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut declared: Vec<&str> = manifest
        .lines()
        .filter_map(|line| line.strip_prefix("name = \""))
        .map(|rest| rest.trim_end_matches('"'))
        .filter(|name| *name != "spiderpool-fuzz")
        .collect();
    declared.sort_unstable();
    let mut replayed: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
    replayed.sort_unstable();
    assert_eq!(declared, replayed);
    for name in replayed {
        let source = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(source.is_file(), "{} is missing", source.display());
    }
}
