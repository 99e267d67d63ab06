//! `spiderpool-bench`: the allocation-throughput harness of spiderpool-core.
//!
//! ```text
//! spiderpool-bench throughput --family 4 --prefix 16 --fill 50 --ops 1000000 --mix allocate=1,release=1
//! spiderpool-bench memory
//! ```
//!
//! `throughput` fills one pool (see the fill rule in `docs/benchmarks.md`), runs a random mix of
//! operations against it and prints operations per second and latency percentiles. `memory`
//! prints the live heap of a /8 IPv4 and a /64 IPv6 pool holding 10,000 allocations, counted by
//! this binary's global allocator.

use std::alloc::System;
use std::fmt;
use std::net::IpAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

mod report;

use clap::{Parser, Subcommand, ValueEnum};
use spiderpool_bench::{DEFAULT_SEED, DEFAULT_WINDOW, FilledPool, Identities, POOL_NAME, PoolShape};
use spiderpool_core::{
    AllocationState, Change, InMemoryState, IpVersion, address_value, allocate, next_free, release,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// Counts every allocation of this binary: requested bytes and number of blocks.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap right now: requested bytes and blocks not yet freed.
#[derive(Debug, Clone, Copy)]
struct Heap {
    bytes: i128,
    blocks: i128,
}

impl Heap {
    fn now() -> Heap {
        let stats = GLOBAL.stats();
        Heap {
            // stats_alloc books a reallocation's growth in `bytes_allocated` and its shrinkage
            // in `bytes_deallocated` (and both again in `bytes_reallocated`, not used here).
            bytes: stats.bytes_allocated as i128 - stats.bytes_deallocated as i128,
            blocks: stats.allocations as i128 - stats.deallocations as i128,
        }
    }

    fn since(self, before: Heap) -> Heap {
        Heap {
            bytes: self.bytes - before.bytes,
            blocks: self.blocks - before.blocks,
        }
    }
}

/// Allocation benchmarks of spiderpool-core.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// What to measure.
    #[command(subcommand)]
    command: Command,
}

/// The measurements.
#[derive(Debug, Subcommand)]
enum Command {
    /// Fill one pool, run a random mix of operations, print ops/s and latency percentiles.
    Throughput(Throughput),
    /// Print the live heap of a /8 IPv4 and a /64 IPv6 pool holding a number of allocations.
    Memory(Memory),
    /// Print the medians of the last `cargo bench` run as the tables of docs/benchmarks.md.
    Report(report::Report),
}

/// Options of `throughput`.
#[derive(Debug, clap::Args)]
struct Throughput {
    /// IP family of the pool: 4 or 6.
    #[arg(long, default_value = "4", value_parser = parse_family)]
    family: IpVersion,
    /// Prefix length of the pool's subnet (IPv4 8-30, IPv6 8-126); ips cover the whole subnet.
    #[arg(long, default_value_t = 16)]
    prefix: u8,
    /// Fill level before the run, in percent (0-100) of the fill window.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    fill: u8,
    /// Addresses in the fill window: the first this many allocatable addresses are filled.
    #[arg(long, default_value_t = DEFAULT_WINDOW as u64, value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    window: u64,
    /// Number of operations to run (at most 500,000,000).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=500_000_000))]
    ops: u64,
    /// Operation mix as weights, e.g. `allocate=1,release=1` or `allocate=3,release=1`.
    #[arg(long, default_value = "allocate=1,release=1")]
    mix: Mix,
    /// What one operation is: the whole request flow an adapter runs, or the pool-level step.
    #[arg(long, value_enum, default_value_t = Level::Request)]
    level: Level,
    /// Seed of the fill and of the operation sequence.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
}

/// Options of `memory`.
#[derive(Debug, clap::Args)]
struct Memory {
    /// Allocations in each pool.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    allocations: u64,
    /// Seed of the identities and of the scattered addresses.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
}

/// What one timed operation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Level {
    /// allocate: `allocate()` for a new pod + apply the plan; release: `release()` of a random
    /// holder + apply.
    Request,
    /// allocate: `next_free()` + apply one `Change::Allocate`; release: apply one
    /// `Change::Release` of a random held address.
    Pool,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Request => "request",
            Level::Pool => "pool",
        })
    }
}

/// Weights of the operations of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mix {
    allocate: u32,
    release: u32,
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            allocate: 0,
            release: 0,
        };
        let mut seen = Vec::new();
        for part in text.split(',') {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not OPERATION=WEIGHT, e.g. allocate=1"))?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                format!("the weight of {name} must be a whole number from 0 to 4294967295, got {weight:?}")
            })?;
            let name = name.trim();
            if seen.contains(&name) {
                return Err(format!("{name} is given twice"));
            }
            match name {
                "allocate" => mix.allocate = weight,
                "release" => mix.release = weight,
                other => return Err(format!("unknown operation {other:?}: use allocate and release")),
            }
            seen.push(name);
        }
        if mix.allocate == 0 && mix.release == 0 {
            return Err("at least one operation needs a positive weight".into());
        }
        Ok(mix)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "allocate={},release={}", self.allocate, self.release)
    }
}

fn parse_family(text: &str) -> Result<IpVersion, String> {
    match text {
        "4" => Ok(IpVersion::V4),
        "6" => Ok(IpVersion::V6),
        other => Err(format!("the family is 4 or 6, got {other:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Throughput(options) => throughput(&options),
        Command::Memory(options) => {
            memory(&options);
            Ok(())
        }
        Command::Report(options) => report::run(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// Latencies of one kind of operation, in nanoseconds.
#[derive(Debug, Default)]
struct Latencies(Vec<u32>);

impl Latencies {
    fn record(&mut self, elapsed: Duration) {
        self.0.push(u32::try_from(elapsed.as_nanos()).unwrap_or(u32::MAX));
    }

    fn total(&self) -> Duration {
        Duration::from_nanos(self.0.iter().map(|&ns| u64::from(ns)).sum())
    }

    /// Sorts, then returns p50, p90, p99 and max.
    fn percentiles(&mut self) -> Option<[u32; 4]> {
        self.0.sort_unstable();
        let at = |q: f64| self.0[((self.0.len() as f64 * q) as usize).min(self.0.len() - 1)];
        (!self.0.is_empty()).then(|| [at(0.50), at(0.90), at(0.99), *self.0.last().expect("non-empty")])
    }
}

/// The median cost of reading the clock twice, which every latency includes.
fn timer_overhead() -> u32 {
    let mut samples = Latencies::default();
    for _ in 0..10_001 {
        let start = Instant::now();
        samples.record(start.elapsed());
    }
    samples.percentiles().map_or(0, |p| p[0])
}

fn throughput(options: &Throughput) -> Result<(), String> {
    let shape = PoolShape::new(options.family, options.prefix).map_err(|e| e.to_string())?;
    let window = u128::from(options.window);
    let before = Heap::now();
    let started = Instant::now();
    // Every held address but the anchor, which stays held to bring the cursor back.
    let mut held: Vec<u128> = Vec::new();
    let mut fixture = FilledPool::build_with(shape, options.fill, window, options.seed, |address| {
        held.push(address_value(address))
    });
    let build_time = started.elapsed();
    let heap = Heap::now().since(before);
    let held_bytes = (held.capacity() * size_of::<u128>()) as i128;
    let state_bytes = heap.bytes - held_bytes;
    println!(
        "pool:        {shape}, {} allocatable addresses",
        fixture.allocatable
    );
    let window_len = fixture.window.1 - fixture.window.0 + 1;
    println!(
        "fill:        {} % of the first {window_len} addresses: {} held (built in {:.1} s; \
         state and catalog {:.1} MiB live heap{})",
        options.fill,
        fixture.held,
        build_time.as_secs_f64(),
        mib(state_bytes),
        if fixture.held > 0 {
            format!(
                ", {:.0} B per allocation",
                state_bytes as f64 / fixture.held as f64
            )
        } else {
            String::new()
        }
    );
    println!(
        "run:         {} operations at {} level, mix {}, seed {}",
        options.ops, options.level, options.mix, options.seed
    );

    let version = shape.version;
    let mut ids = Identities::new(options.seed ^ 0x0b5e_55ed);
    let mut request = fixture.request().clone();
    let mut allocations = Latencies::default();
    let mut releases = Latencies::default();
    let (mut full, mut empty) = (0u64, 0u64);
    let total_weight = u64::from(options.mix.allocate) + u64::from(options.mix.release);
    let wall = Instant::now();
    for _ in 0..options.ops {
        if ids.below(total_weight) < u64::from(options.mix.allocate) {
            let (address, elapsed) = match options.level {
                Level::Request => {
                    ids.refresh_request(&mut request);
                    let start = Instant::now();
                    let address = match allocate(&fixture.catalog, &fixture.state, &request) {
                        Ok(plan) => {
                            fixture.state.apply(&plan.changes).map_err(|e| e.to_string())?;
                            Some(plan.changes[0].address())
                        }
                        Err(_) => None,
                    };
                    (address, start.elapsed())
                }
                Level::Pool => {
                    let holder = ids.holder();
                    let start = Instant::now();
                    let Ok(address) = next_free(&fixture.state, &fixture.pool);
                    if let Some(address) = address {
                        let change = [Change::Allocate {
                            pool: POOL_NAME.into(),
                            address,
                            holder,
                        }];
                        fixture.state.apply(&change).map_err(|e| e.to_string())?;
                    }
                    (address, start.elapsed())
                }
            };
            allocations.record(elapsed);
            match address {
                Some(address) => {
                    held.push(address_value(address));
                    if address_value(address) > fixture.window.1 && fixture.is_windowed() {
                        fixture.recenter();
                    }
                }
                None => full += 1,
            }
        } else {
            if held.is_empty() {
                empty += 1;
                continue;
            }
            let value = held.swap_remove(ids.index(held.len()));
            let address = version.address_at(value).expect("a value within the family");
            let Ok(holder) = fixture.state.holder(POOL_NAME, address);
            let holder = holder.ok_or_else(|| format!("{address} should be held"))?;
            let elapsed = match options.level {
                Level::Request => {
                    let start = Instant::now();
                    let Ok(changes) = release(&fixture.state, &holder.owner(), None);
                    fixture.state.apply(&changes).map_err(|e| e.to_string())?;
                    start.elapsed()
                }
                Level::Pool => {
                    let change = [Change::Release {
                        pool: POOL_NAME.into(),
                        address,
                        holder,
                    }];
                    let start = Instant::now();
                    fixture.state.apply(&change).map_err(|e| e.to_string())?;
                    start.elapsed()
                }
            };
            releases.record(elapsed);
        }
    }
    let wall = wall.elapsed();
    let timed = allocations.total() + releases.total();
    let count = (allocations.0.len() + releases.0.len()) as f64;
    println!(
        "throughput:  {:.0} ops/s over the timed operations ({:.2} s); {:.0} ops/s over the wall clock \
         ({:.2} s, which includes generating identities and picking addresses)",
        count / timed.as_secs_f64(),
        timed.as_secs_f64(),
        count / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!(
        "latency:     in ns, each including about {} ns of reading the clock",
        timer_overhead()
    );
    println!(
        "  {:<10} {:>10} {:>8} {:>8} {:>8} {:>10}",
        "operation", "count", "p50", "p90", "p99", "max"
    );
    let mut all = Latencies(allocations.0.iter().chain(&releases.0).copied().collect());
    for (name, latencies) in [
        ("allocate", &mut allocations),
        ("release", &mut releases),
        ("all", &mut all),
    ] {
        if let Some([p50, p90, p99, max]) = latencies.percentiles() {
            println!(
                "  {name:<10} {:>10} {p50:>8} {p90:>8} {p99:>8} {max:>10}",
                latencies.0.len()
            );
        }
    }
    let Ok(held_at_end) = fixture.state.allocated_count(POOL_NAME);
    println!(
        "outcome:     {full} allocations found the pool full, {empty} releases found nothing held; \
         {held_at_end} addresses held at the end"
    );
    Ok(())
}

fn mib(bytes: i128) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// How the allocations of a memory measurement are placed.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// Through `allocate()`, one new pod after another: consecutive addresses from the cursor.
    Engine,
    /// At addresses drawn uniformly from the whole pool: every allocation is its own run.
    Scattered,
}

fn memory(options: &Memory) {
    println!(
        "Live heap of an allocation state holding {} allocations (requested bytes, counted by the \
         global allocator; target: at most 2 MiB per pool)",
        options.allocations
    );
    println!(
        "{:<22} {:<11} {:>12} {:>10} {:>10} {:>14}  target",
        "pool", "placement", "bytes", "MiB", "blocks", "B/allocation"
    );
    let shapes = [
        PoolShape::new(IpVersion::V4, 8).expect("a valid shape"),
        PoolShape::new(IpVersion::V6, 64).expect("a valid shape"),
    ];
    for shape in shapes {
        for placement in [Placement::Engine, Placement::Scattered] {
            let heap = measure(shape, placement, options);
            let per = heap.bytes as f64 / options.allocations as f64;
            println!(
                "{:<22} {:<11} {:>12} {:>10.3} {:>10} {:>14.1}  {}",
                shape.to_string(),
                format!("{placement:?}").to_lowercase(),
                heap.bytes,
                mib(heap.bytes),
                heap.blocks,
                per,
                if heap.bytes <= 2 << 20 { "met" } else { "missed" }
            );
        }
    }
}

/// The live heap an empty state grows by when `options.allocations` addresses are allocated.
fn measure(shape: PoolShape, placement: Placement, options: &Memory) -> Heap {
    let mut fixture = FilledPool::build(shape, 0, options.seed);
    let mut ids = Identities::new(options.seed);
    let version = shape.version;
    let (first, _) = fixture.window;
    let mut state = InMemoryState::new();
    let heap = match placement {
        Placement::Engine => {
            let mut request = fixture.request().clone();
            ids.refresh_request(&mut request);
            let before = Heap::now();
            for _ in 0..options.allocations {
                ids.refresh_request(&mut request);
                let plan = allocate(&fixture.catalog, &state, &request).expect("room in the pool");
                state.apply(&plan.changes).expect("a fresh plan applies");
            }
            Heap::now().since(before)
        }
        Placement::Scattered => {
            let span = fixture.allocatable;
            let mut offsets = std::collections::BTreeSet::new();
            while (offsets.len() as u64) < options.allocations {
                let offset = match version {
                    IpVersion::V4 => u128::from(ids.below(span as u64)),
                    IpVersion::V6 => u128::from(ids.below(u64::MAX)) % span,
                };
                offsets.insert(offset);
            }
            let mut addresses: Vec<IpAddr> = offsets
                .iter()
                .map(|&offset| {
                    version
                        .address_at(first + offset)
                        .expect("a value within the family")
                })
                .collect();
            // Insert in random order, as pods come and go.
            for index in (1..addresses.len()).rev() {
                addresses.swap(index, ids.index(index + 1));
            }
            let before = Heap::now();
            for &address in &addresses {
                let change = [Change::Allocate {
                    pool: POOL_NAME.into(),
                    address,
                    holder: ids.holder(),
                }];
                state.apply(&change).expect("distinct addresses");
            }
            Heap::now().since(before)
        }
    };
    assert_eq!(state.allocated_count(POOL_NAME), Ok(options.allocations));
    fixture.state = state;
    heap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_refuse_clearly() {
        assert_eq!(
            "allocate=3, release=1".parse::<Mix>(),
            Ok(Mix {
                allocate: 3,
                release: 1
            })
        );
        assert_eq!(
            "allocate=1,free=1".parse::<Mix>().unwrap_err(),
            "unknown operation \"free\": use allocate and release"
        );
        assert_eq!(
            "allocate".parse::<Mix>().unwrap_err(),
            "\"allocate\" is not OPERATION=WEIGHT, e.g. allocate=1"
        );
        assert_eq!(
            "allocate=0".parse::<Mix>().unwrap_err(),
            "at least one operation needs a positive weight"
        );
        assert_eq!(
            "allocate=1,allocate=2".parse::<Mix>().unwrap_err(),
            "allocate is given twice"
        );
    }

    #[test]
    fn a_small_run_keeps_the_books_straight() {
        let options = Throughput {
            family: IpVersion::V6,
            prefix: 64,
            fill: 90,
            window: 1000,
            ops: 2000,
            mix: "allocate=1,release=1".parse().unwrap(),
            level: Level::Request,
            seed: 1,
        };
        throughput(&options).unwrap();
        throughput(&Throughput {
            level: Level::Pool,
            family: IpVersion::V4,
            prefix: 24,
            fill: 100,
            ..options
        })
        .unwrap();
    }
}
