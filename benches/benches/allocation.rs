//! Criterion benchmarks of the allocation engine: see `docs/benchmarks.md` for the figures and
//! the fill rule.
//!
//! - `pool_allocate_release/{shape}/{fill}`: one pool-level engine step, `next_free` then
//!   applying a pre-built allocate and release of that address.
//! - `request_allocate_release/{shape}/{fill}`: the full flow of one pod, `allocate` with the
//!   pod's `ipam.spidernet.io/ippool` annotation naming the pool, apply, `release`, apply.
//! - `candidate_resolution/{explicit,glob}`: `allocate` (planning only) with 10,000 pools over
//!   1,000 nodes and four candidates of which only the last serves the node.
//! - `subnet/{parse,contains,display}/{core,ipnet}`: the core's `Subnet` against `ipnet::IpNet`
//!   on the same CIDRs of both families (decision 0009 reads these).

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use spiderpool_bench::{DEFAULT_SEED, FilledPool, PoolShape, zoned_catalog, zoned_request};
use spiderpool_core::{InMemoryState, allocate};

/// Fill levels of the allocation benchmarks, in percent of the fill window.
const FILLS: [u8; 3] = [0, 50, 99];

/// Both allocation groups, sharing each fixture (a /8 at 99 % takes seconds to build and
/// gigabytes to hold, so one fixture lives at a time).
fn allocation(c: &mut Criterion) {
    for shape in PoolShape::BENCHMARKED {
        for fill in FILLS {
            let build = move || {
                let started = Instant::now();
                let built = FilledPool::build(shape, fill, DEFAULT_SEED);
                eprintln!(
                    "fixture {}/{fill}: {} addresses held, built in {:.1} s",
                    shape.label(),
                    built.held,
                    started.elapsed().as_secs_f64()
                );
                built
            };
            // Built on first use, so a filter that skips both benchmarks skips the set-up too.
            let mut fixture: Option<FilledPool> = None;
            let id = format!("{}/{fill}", shape.label());
            let mut group = c.benchmark_group("pool_allocate_release");
            group.bench_function(&id, |b| {
                let pool = fixture.get_or_insert_with(build);
                b.iter(|| pool.allocate_release().expect("room"))
            });
            group.finish();
            let mut group = c.benchmark_group("request_allocate_release");
            group.bench_function(&id, |b| {
                let pool = fixture.get_or_insert_with(build);
                b.iter(|| pool.request_allocate_release().expect("room"))
            });
            group.finish();
        }
    }
}

fn candidate_resolution(c: &mut Criterion) {
    let catalog = zoned_catalog();
    let state = InMemoryState::new();
    let mut group = c.benchmark_group("candidate_resolution");
    for (name, glob) in [("explicit", false), ("glob", true)] {
        let (request, expected) = zoned_request(glob);
        let plan = allocate(&catalog, &state, &request).expect("the last candidate serves the node");
        assert_eq!(plan.changes[0].pool(), expected);
        group.bench_function(name, |b| {
            b.iter(|| allocate(black_box(&catalog), &state, black_box(&request)))
        });
    }
    group.finish();
}

/// The core's `Subnet` and `ipnet::IpNet` on the same work: strict parsing (the canonical
/// check `spec.subnet` needs: ipnet accepts host bits, so its side truncates and compares),
/// containment of an address, and display.
fn subnet(c: &mut Criterion) {
    use spiderpool_core::Subnet;
    const CIDRS: [&str; 4] = [
        "10.6.0.0/16",
        "192.168.100.0/24",
        "fd00:6::/64",
        "2001:db8:abcd::/48",
    ];
    let addresses: Vec<std::net::IpAddr> =
        ["10.6.168.60", "192.168.101.1", "fd00:6::1:2", "2001:db8:abce::1"]
            .iter()
            .map(|a| a.parse().expect("an address"))
            .collect();
    let core: Vec<Subnet> = CIDRS.iter().map(|c| c.parse().expect("canonical")).collect();
    let ipnet: Vec<ipnet::IpNet> = CIDRS.iter().map(|c| c.parse().expect("canonical")).collect();
    let mut group = c.benchmark_group("subnet");
    group.bench_function("parse/core", |b| {
        b.iter(|| {
            CIDRS
                .iter()
                .map(|c| black_box(c).parse::<Subnet>().is_ok() as u32)
                .sum::<u32>()
        })
    });
    group.bench_function("parse/ipnet", |b| {
        b.iter(|| {
            CIDRS
                .iter()
                .map(|c| black_box(c).parse::<ipnet::IpNet>().is_ok_and(|n| n.trunc() == n) as u32)
                .sum::<u32>()
        })
    });
    group.bench_function("contains/core", |b| {
        b.iter(|| {
            let subnets = black_box(&core);
            addresses
                .iter()
                .map(|a| subnets.iter().filter(|s| s.contains(*a)).count())
                .sum::<usize>()
        })
    });
    group.bench_function("contains/ipnet", |b| {
        b.iter(|| {
            let nets = black_box(&ipnet);
            addresses
                .iter()
                .map(|a| nets.iter().filter(|n| n.contains(a)).count())
                .sum::<usize>()
        })
    });
    group.bench_function("display/core", |b| {
        b.iter(|| {
            black_box(&core)
                .iter()
                .map(|s| s.to_string().len())
                .sum::<usize>()
        })
    });
    group.bench_function("display/ipnet", |b| {
        b.iter(|| {
            black_box(&ipnet)
                .iter()
                .map(|n| n.to_string().len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, candidate_resolution, subnet, allocation);
criterion_main!(benches);
