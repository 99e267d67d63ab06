//! `spiderpool-bench report`: reads criterion's estimates of the last `cargo bench` run and
//! prints the medians as the tables of `docs/benchmarks.md`, with the ratios and the targets.

use std::fs;
use std::path::{Path, PathBuf};

use spiderpool_bench::PoolShape;

/// Options of `report`.
#[derive(Debug, clap::Args)]
pub struct Report {
    /// Criterion's output directory: `criterion` under the cargo target directory.
    #[arg(long, default_value = "target/criterion")]
    criterion_dir: PathBuf,
}

/// Fill levels of the allocation benchmarks.
const FILLS: [u8; 3] = [0, 50, 99];

/// Target of `pool_allocate_release`, in nanoseconds.
const POOL_TARGET_NS: f64 = 200.0;
/// Largest ratio allowed between the slowest and the fastest `pool_allocate_release` case.
const POOL_TARGET_RATIO: f64 = 2.0;
/// Target of `candidate_resolution`, in nanoseconds.
const CANDIDATE_TARGET_NS: f64 = 20_000.0;

/// The median and its 95 % confidence interval, in nanoseconds, of one benchmark.
fn median(dir: &Path, group: &str, id: &str) -> Result<(f64, f64, f64), String> {
    let path = dir
        .join(group)
        .join(id.replace('/', "_"))
        .join("new/estimates.json");
    let text = fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read {}: {e}; run `cargo bench -p spiderpool-bench` first, and pass \
             --criterion-dir when CARGO_TARGET_DIR is set",
            path.display()
        )
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let number = |pointer: &str| {
        json.pointer(pointer)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| format!("{} has no {pointer}", path.display()))
    };
    Ok((
        number("/median/point_estimate")?,
        number("/median/confidence_interval/lower_bound")?,
        number("/median/confidence_interval/upper_bound")?,
    ))
}

/// Nanoseconds as text: `412 ns` or `2.55 µs`.
fn time(ns: f64) -> String {
    if ns < 1000.0 {
        format!("{ns:.0} ns")
    } else {
        format!("{:.2} µs", ns / 1000.0)
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// Prints one allocation group as a table (shapes by fill levels) and returns its medians.
fn allocation_table(dir: &Path, group: &str) -> Result<Vec<(String, f64)>, String> {
    println!("{group} (median, ns or µs; 95 % interval of the median in brackets)\n");
    println!("| pool | {} |", FILLS.map(|fill| format!("{fill} %")).join(" | "));
    println!("|---|{}", "---:|".repeat(FILLS.len()));
    let mut medians = Vec::new();
    for shape in PoolShape::BENCHMARKED {
        let mut cells = Vec::new();
        for fill in FILLS {
            let id = format!("{}/{fill}", shape.label());
            let (point, lower, upper) = median(dir, group, &id)?;
            cells.push(format!("{} [{}, {}]", time(point), time(lower), time(upper)));
            medians.push((id, point));
        }
        println!("| {} | {} |", shape.label(), cells.join(" | "));
    }
    let fastest = medians
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("twelve cases");
    let slowest = medians
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("twelve cases");
    println!(
        "\nfastest {} {}, slowest {} {}: ratio {:.2}\n",
        fastest.0,
        time(fastest.1),
        slowest.0,
        time(slowest.1),
        slowest.1 / fastest.1
    );
    Ok(medians)
}

/// Prints the report.
pub fn run(options: &Report) -> Result<(), String> {
    let dir = &options.criterion_dir;
    let pool = allocation_table(dir, "pool_allocate_release")?;
    let (fastest, slowest) = pool.iter().fold((f64::MAX, 0f64), |(low, high), (_, ns)| {
        (low.min(*ns), high.max(*ns))
    });
    let over: Vec<&str> = pool
        .iter()
        .filter(|(_, ns)| *ns > POOL_TARGET_NS)
        .map(|(id, _)| id.as_str())
        .collect();
    println!(
        "target median <= {POOL_TARGET_NS} ns: {} ({} of 12 cases over{}); target ratio <= {POOL_TARGET_RATIO}: {}\n",
        verdict(over.is_empty()),
        over.len(),
        if over.is_empty() {
            String::new()
        } else {
            format!(": {}", over.join(", "))
        },
        verdict(slowest / fastest <= POOL_TARGET_RATIO)
    );
    let request = allocation_table(dir, "request_allocate_release")?;
    let ratios: Vec<f64> = request.iter().zip(&pool).map(|(r, p)| r.1 / p.1).collect();
    println!(
        "request flow / pool step: {:.1}x to {:.1}x\n",
        ratios.iter().copied().fold(f64::MAX, f64::min),
        ratios.iter().copied().fold(0.0, f64::max)
    );
    println!("candidate_resolution (10,000 pools, 1,000 nodes, 4 candidates; median)\n");
    println!("| variant | median | 95 % interval | target <= 20 µs |");
    println!("|---|---:|---:|---|");
    for variant in ["explicit", "glob"] {
        let (point, lower, upper) = median(dir, "candidate_resolution", variant)?;
        println!(
            "| {variant} | {} | {} to {} | {} |",
            time(point),
            time(lower),
            time(upper),
            verdict(point <= CANDIDATE_TARGET_NS)
        );
    }
    Ok(())
}
