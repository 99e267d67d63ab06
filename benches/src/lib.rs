//! Fixtures shared by the criterion benchmarks (`benches/allocation.rs`) and the
//! `spiderpool-bench` harness: pools of a chosen size, allocation states filled to a chosen
//! level with realistic holders, and the zoned catalog of the candidate-resolution benchmark.
//!
//! Randomness lives here, never in the core: a seeded generator decides which addresses of a
//! pool are held, so every run builds the same fragmented state.
//!
//! ## The fill rule
//!
//! A pool filled to `p` % holds `p` % (rounded) of its *fill window*: the first
//! [`DEFAULT_WINDOW`] (2^24) allocatable addresses, which is the whole pool for every IPv4 pool
//! up to a /8. A /64 IPv6 pool at 50 % would need 2^63 allocations, which no IPAM ever holds, so
//! only its window is filled. The first address of the window (the *anchor*) is always held
//! and is allocated last, so it is the pool's cursor: the next allocation searches from there,
//! inside the filled window. When allocations walk the cursor past the end of a window smaller
//! than the pool, [`FilledPool::recenter`] brings it back to the anchor.
//!
//! ```
//! use spiderpool_bench::{FilledPool, PoolShape};
//! use spiderpool_core::IpVersion;
//! let shape = PoolShape::new(IpVersion::V4, 24).unwrap();
//! let mut pool = FilledPool::build(shape, 99, 1);
//! assert_eq!(pool.allocatable, 253);
//! assert_eq!(pool.held, 250);
//! let address = pool.allocate_release().unwrap();
//! assert!(pool.window_contains(address));
//! ```

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};

use spiderpool_core::{
    API_VERSION, AllocateError, AllocationState, Change, Holder, IPPoolSpec, InMemoryState, IpVersion,
    LabelSelector, Labels, ObjectMeta, OwnerKey, PodRef, Pool, PoolCatalog, Request, SpiderIPPool,
    address_value, allocate, annotations, next_free, release,
};

/// Addresses in the fill window of a pool: 2^24, the whole of an IPv4 /8.
pub const DEFAULT_WINDOW: u128 = 1 << 24;

/// The name of the single pool of a [`FilledPool`].
pub const POOL_NAME: &str = "bench-pool";

/// The seed the criterion benchmarks use.
pub const DEFAULT_SEED: u64 = 0x5eed_2024;

/// The family and prefix length of a benchmark pool. IPv4 pools are carved from
/// `10.0.0.0/8`, IPv6 pools from `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolShape {
    /// The family.
    pub version: IpVersion,
    /// The prefix length of the subnet.
    pub prefix: u8,
}

/// A pool shape the fixtures cannot build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an IPv{family} pool needs a prefix length from {min} to {max}, got /{prefix}")]
pub struct ShapeError {
    /// 4 or 6.
    pub family: u8,
    /// The prefix asked for.
    pub prefix: u8,
    /// The shortest prefix supported.
    pub min: u8,
    /// The longest prefix supported.
    pub max: u8,
}

impl PoolShape {
    /// The four shapes of the allocation benchmarks: IPv4 /24, /16, /8 and IPv6 /64.
    pub const BENCHMARKED: [PoolShape; 4] = [
        PoolShape {
            version: IpVersion::V4,
            prefix: 24,
        },
        PoolShape {
            version: IpVersion::V4,
            prefix: 16,
        },
        PoolShape {
            version: IpVersion::V4,
            prefix: 8,
        },
        PoolShape {
            version: IpVersion::V6,
            prefix: 64,
        },
    ];

    /// A shape, refused unless the subnet fits the base network and leaves at least two
    /// allocatable addresses: IPv4 /8 to /30, IPv6 /8 to /126.
    pub fn new(version: IpVersion, prefix: u8) -> Result<PoolShape, ShapeError> {
        let (min, max) = match version {
            IpVersion::V4 => (8, 30),
            IpVersion::V6 => (8, 126),
        };
        if !(min..=max).contains(&prefix) {
            return Err(ShapeError {
                family: version.number(),
                prefix,
                min,
                max,
            });
        }
        Ok(PoolShape { version, prefix })
    }

    /// A short label such as `v4-24` or `v6-64`, used in benchmark names.
    pub fn label(&self) -> String {
        format!("v{}-{}", self.version.number(), self.prefix)
    }

    fn network(&self) -> u128 {
        match self.version {
            IpVersion::V4 => address_value(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0))),
            IpVersion::V6 => 0xfd00_u128 << 112,
        }
    }

    fn last(&self) -> u128 {
        self.network() + ((1u128 << (self.version.bits() - u32::from(self.prefix))) - 1)
    }

    /// The subnet in canonical CIDR form, such as `10.0.0.0/16` or `fd00::/64`.
    pub fn subnet(&self) -> String {
        format!(
            "{}/{}",
            self.version
                .address_at(self.network())
                .expect("a value within the family"),
            self.prefix
        )
    }

    /// The `SpiderIPPool` of this shape: `ips` cover every usable address of the subnet (all
    /// but the network and, for IPv4, broadcast addresses), the gateway is the first of them
    /// and is excluded, as Spiderpool requires of a gateway inside `ips`.
    pub fn object(&self, name: &str) -> SpiderIPPool {
        let first = self.network() + 1;
        let last = match self.version {
            IpVersion::V4 => self.last() - 1,
            IpVersion::V6 => self.last(),
        };
        let address = |value| self.version.address_at(value).expect("a value within the family");
        let gateway = address(first).to_string();
        pool_object(
            name,
            IPPoolSpec {
                subnet: self.subnet(),
                ips: vec![format!("{}-{}", address(first), address(last))],
                exclude_ips: vec![gateway.clone()],
                gateway: Some(gateway),
                ..IPPoolSpec::default()
            },
        )
    }
}

impl fmt::Display for PoolShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.subnet(), self.version)
    }
}

fn pool_object(name: &str, spec: IPPoolSpec) -> SpiderIPPool {
    SpiderIPPool {
        api_version: API_VERSION.into(),
        kind: "SpiderIPPool".into(),
        metadata: ObjectMeta {
            name: name.into(),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// Generates realistic, unique identities of Kubernetes pods from a seeded generator: a pod
/// UID as a lowercase UUID (version 4), a 64-hex container ID, and a pod name such as
/// `app-7d4b9c-xk2p9` in namespace `default`, on interface `eth0`.
///
/// ```
/// use spiderpool_bench::Identities;
/// use spiderpool_core::OwnerKey;
/// let mut ids = Identities::new(7);
/// let holder = ids.holder();
/// let OwnerKey::Pod(uid) = holder.owner() else { panic!() };
/// assert_eq!(uid.len(), 36);
/// assert_eq!(holder.container_id().len(), 64);
/// assert_eq!(holder.pod().unwrap().namespace, "default");
/// assert_eq!(holder.interface(), "eth0");
/// ```
#[derive(Debug, Clone)]
pub struct Identities {
    rng: fastrand::Rng,
    /// Buffers of the last identity, rewritten in place.
    owner: OwnerKey,
    pod: PodRef,
    container_id: String,
}

/// Characters Kubernetes uses in generated name suffixes.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

impl Identities {
    /// A generator with a fixed seed.
    pub fn new(seed: u64) -> Identities {
        Identities {
            rng: fastrand::Rng::with_seed(seed),
            owner: OwnerKey::Pod(String::with_capacity(36)),
            pod: PodRef {
                namespace: "default".into(),
                name: String::with_capacity(16),
            },
            container_id: String::with_capacity(64),
        }
    }

    /// The holder of a fresh pod, on `eth0`.
    pub fn holder(&mut self) -> Holder {
        let (OwnerKey::Pod(uid) | OwnerKey::Container(uid)) = &mut self.owner;
        let mut rng = self.rng.clone();
        Identities::uid(&mut rng, uid);
        Identities::pod_name(&mut rng, &mut self.pod.name);
        Identities::container_id(&mut rng, &mut self.container_id);
        self.rng = rng;
        Holder::new(&self.owner, "eth0", Some(&self.pod), &self.container_id)
    }

    /// Gives the pod of `request` a fresh UID, name and container ID, reusing its buffers.
    pub fn refresh_request(&mut self, request: &mut Request) {
        Identities::uid(&mut self.rng, request.pod.uid.get_or_insert_with(String::new));
        Identities::pod_name(&mut self.rng, &mut request.pod.name);
        Identities::container_id(&mut self.rng, &mut request.container_id);
    }

    fn uid(rng: &mut fastrand::Rng, out: &mut String) {
        // Version 4, variant 10xx, as Kubernetes generates them.
        let value = (rng.u128(..) & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
        out.clear();
        write!(
            out,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            value >> 96,
            (value >> 80) & 0xffff,
            (value >> 64) & 0xffff,
            (value >> 48) & 0xffff,
            value & 0xffff_ffff_ffff
        )
        .expect("writing to a String");
    }

    fn pod_name(rng: &mut fastrand::Rng, out: &mut String) {
        out.clear();
        out.push_str("app-");
        for index in 0..11 {
            if index == 6 {
                out.push('-');
            }
            out.push(char::from(NAME_ALPHABET[rng.usize(..NAME_ALPHABET.len())]));
        }
    }

    fn container_id(rng: &mut fastrand::Rng, out: &mut String) {
        out.clear();
        write!(out, "{:032x}{:032x}", rng.u128(..), rng.u128(..)).expect("writing to a String");
    }

    /// A uniform random index below `bound` (which must be positive).
    pub fn index(&mut self, bound: usize) -> usize {
        self.rng.usize(..bound)
    }

    /// A uniform random number below `bound` (which must be positive).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.rng.u64(..bound)
    }
}

/// A catalog with one pool of a given shape, and an allocation state filled to a given level
/// (see the fill rule in the crate documentation), ready to allocate from.
#[derive(Debug)]
pub struct FilledPool {
    /// The shape of the pool.
    pub shape: PoolShape,
    /// The fill level asked for, in percent of the window.
    pub fill_percent: u8,
    /// The catalog holding the pool, [`POOL_NAME`].
    pub catalog: PoolCatalog,
    /// The pool itself.
    pub pool: Pool,
    /// The allocation state.
    pub state: InMemoryState,
    /// Allocatable addresses of the pool.
    pub allocatable: u128,
    /// First and last address value of the fill window.
    pub window: (u128, u128),
    /// Addresses held by the fill.
    pub held: u64,
    /// The anchor (the window's first address) and its holder, when anything is held.
    anchor: Option<(IpAddr, Holder)>,
    /// Pre-built changes of [`FilledPool::allocate_release`]; only the address is rewritten.
    allocate_change: [Change; 1],
    release_change: [Change; 1],
    /// The request of [`FilledPool::request_allocate_release`].
    request: Request,
    owner: OwnerKey,
}

impl FilledPool {
    /// Builds the pool and fills [`DEFAULT_WINDOW`] to `fill_percent` % with the seeded
    /// generator.
    pub fn build(shape: PoolShape, fill_percent: u8, seed: u64) -> FilledPool {
        FilledPool::build_with(shape, fill_percent, DEFAULT_WINDOW, seed, |_| {})
    }

    /// Builds the pool and fills `window` addresses to `fill_percent` % (at most 100), calling
    /// `on_held` with every address held except the anchor, in ascending order.
    ///
    /// Addresses are chosen by selection sampling (exactly the rounded count, in one ascending
    /// pass), and inserted in ascending order so the B-trees of the state grow at their edge.
    pub fn build_with(
        shape: PoolShape,
        fill_percent: u8,
        window: u128,
        seed: u64,
        mut on_held: impl FnMut(IpAddr),
    ) -> FilledPool {
        assert!(fill_percent <= 100, "a fill level is a percentage");
        assert!(window > 0, "a fill window holds at least one address");
        let catalog = PoolCatalog::new([shape.object(POOL_NAME)], []);
        let pool = catalog
            .pool(POOL_NAME)
            .unwrap_or_else(|| panic!("the benchmark pool is valid: {:?}", catalog.invalid().next()))
            .clone();
        let allocatable = pool.allocatable().len();
        let version = shape.version;
        let start = address_value(pool.allocatable().first().expect("a non-empty pool"));
        let window_len = window.min(allocatable);
        // The pool's allocatable set is one range (the gateway is excluded at its start).
        let end = start + window_len - 1;
        let target = (window_len * u128::from(fill_percent) + 50) / 100;
        let mut identities = Identities::new(seed);
        let mut state = InMemoryState::new();
        let mut anchor = None;
        if target > 0 {
            let anchor_holder = identities.holder();
            // The anchor is held; choose the rest among the other addresses of the window.
            let mut needed = u64::try_from(target - 1).expect("a window below 2^64");
            let mut left = u64::try_from(window_len - 1).expect("a window below 2^64");
            let mut value = start + 1;
            while needed > 0 {
                if identities.below(left) < needed {
                    let address = version.address_at(value).expect("a value within the family");
                    let change = [Change::Allocate {
                        pool: POOL_NAME.into(),
                        address,
                        holder: identities.holder(),
                    }];
                    state.apply(&change).expect("fill addresses are free");
                    on_held(address);
                    needed -= 1;
                }
                left -= 1;
                value += 1;
            }
            // Allocated last, the anchor becomes the cursor.
            let address = version.address_at(start).expect("a value within the family");
            let change = [Change::Allocate {
                pool: POOL_NAME.into(),
                address,
                holder: anchor_holder.clone(),
            }];
            state.apply(&change).expect("the anchor is free");
            anchor = Some((address, anchor_holder));
        }
        let mut bench = Identities::new(seed ^ 0xbe4c_0de5);
        let holder = bench.holder();
        let owner = holder.owner();
        let first = version.address_at(start).expect("a value within the family");
        let mut request = Request::new(holder.container_id(), "eth0");
        request.pod.namespace = "default".into();
        request.pod.name = holder.pod().map(|p| p.name).unwrap_or_default();
        request.pod.uid = Some(owner.id().to_owned());
        request.node.name = "worker-node-1".into();
        let family = match version {
            IpVersion::V4 => "ipv4",
            IpVersion::V6 => "ipv6",
        };
        request.pod.annotations.insert(
            annotations::POD_IPPOOL.into(),
            format!(r#"{{"{family}": ["{POOL_NAME}"]}}"#),
        );
        FilledPool {
            shape,
            fill_percent,
            catalog,
            pool,
            state,
            allocatable,
            window: (start, end),
            held: u64::try_from(target).expect("a window below 2^64"),
            anchor,
            allocate_change: [Change::Allocate {
                pool: POOL_NAME.into(),
                address: first,
                holder: holder.clone(),
            }],
            release_change: [Change::Release {
                pool: POOL_NAME.into(),
                address: first,
                holder,
            }],
            request,
            owner,
        }
    }

    /// Whether `address` lies in the fill window.
    pub fn window_contains(&self, address: IpAddr) -> bool {
        (self.window.0..=self.window.1).contains(&address_value(address))
    }

    /// Whether the window is smaller than the pool, so the cursor can leave it.
    pub fn is_windowed(&self) -> bool {
        self.window.1 - self.window.0 + 1 < self.allocatable
    }

    /// The anchor address (the window's first address, held), when anything is held.
    pub fn anchor(&self) -> Option<IpAddr> {
        self.anchor.as_ref().map(|(address, _)| *address)
    }

    /// Moves the cursor back to the anchor by releasing and re-allocating it, so the next
    /// allocation searches the filled window again. Does nothing when nothing is held.
    pub fn recenter(&mut self) {
        if let Some((address, holder)) = &self.anchor {
            let changes = [
                Change::Release {
                    pool: POOL_NAME.into(),
                    address: *address,
                    holder: holder.clone(),
                },
                Change::Allocate {
                    pool: POOL_NAME.into(),
                    address: *address,
                    holder: holder.clone(),
                },
            ];
            self.state
                .apply(&changes)
                .expect("the anchor is held by its holder");
        }
    }

    /// Brings the cursor back when the last allocation, at `address`, left a window smaller
    /// than the pool. A no-op in every other case (one comparison).
    #[inline]
    fn keep_in_window(&mut self, address: IpAddr) {
        if address_value(address) > self.window.1 && self.is_windowed() {
            self.recenter();
        }
    }

    /// One step of the pool-level engine: [`next_free`], then apply a pre-built
    /// `Change::Allocate` and `Change::Release` of that address (only the address is
    /// rewritten; no holder is cloned). Returns the address, or `None` when the pool is full.
    #[inline]
    pub fn allocate_release(&mut self) -> Option<IpAddr> {
        let Ok(address) = next_free(&self.state, &self.pool);
        let address = address?;
        for change in self.allocate_change.iter_mut().chain(&mut self.release_change) {
            match change {
                Change::Allocate { address: slot, .. }
                | Change::Release { address: slot, .. }
                | Change::Transfer { address: slot, .. } => *slot = address,
            }
        }
        self.state
            .apply(&self.allocate_change)
            .expect("next_free is free");
        self.state.apply(&self.release_change).expect("just allocated");
        self.keep_in_window(address);
        Some(address)
    }

    /// One request as an adapter makes it: [`allocate`] for a pod whose annotation
    /// `ipam.spidernet.io/ippool` names the pool, apply the plan, [`release`] the pod's
    /// addresses and apply that. Returns the address allocated.
    #[inline]
    pub fn request_allocate_release(&mut self) -> Result<IpAddr, AllocateError> {
        let plan = allocate(&self.catalog, &self.state, &self.request)?;
        self.state.apply(&plan.changes).expect("a fresh plan applies");
        let address = plan.changes[0].address();
        let Ok(changes) = release(&self.state, &self.owner, None);
        self.state.apply(&changes).expect("a fresh release applies");
        self.keep_in_window(address);
        Ok(address)
    }

    /// The request [`FilledPool::request_allocate_release`] makes; the harness gives it fresh
    /// identities to allocate for many pods.
    pub fn request(&self) -> &Request {
        &self.request
    }
}

/// Pools in the candidate-resolution catalog.
pub const ZONED_POOLS: usize = 10_000;
/// Nodes in the candidate-resolution cluster.
pub const ZONED_NODES: usize = 1_000;
/// Zones (values of `topology.kubernetes.io/zone`) the nodes are spread over.
pub const ZONES: usize = 50;
/// The zone label key.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The name of pool `index` of the zoned catalog: `pool-00000` to `pool-09999`.
pub fn zoned_pool_name(index: usize) -> String {
    format!("pool-{index:05}")
}

/// The name of node `index`: `node-0000` to `node-0999`.
pub fn node_name(index: usize) -> String {
    format!("node-{index:04}")
}

/// The zone of node `index`: `zone-00` to `zone-49`, round-robin.
pub fn node_zone(index: usize) -> String {
    format!("zone-{:02}", index % ZONES)
}

/// A catalog of [`ZONED_POOLS`] IPv4 /24 pools over [`ZONED_NODES`] nodes, ten pools per
/// node: pool `10n + k` (for node `n`) is pinned by `nodeName` to node `n` when `k < 6`, to
/// nodes `n`, `n+1` and `n+2` when `k` is 6 or 7, and by `nodeAffinity` to the zone of node
/// `n` when `k` is 8 or 9. Pool `i` has subnet `10.(i/256).(i%256).0/24`.
pub fn zoned_catalog() -> PoolCatalog {
    let pools = (0..ZONED_POOLS).map(|index| {
        let node = index / 10;
        let subnet = format!("10.{}.{}.0/24", index / 256, index % 256);
        let prefix = format!("10.{}.{}", index / 256, index % 256);
        let mut spec = IPPoolSpec {
            subnet,
            ips: vec![format!("{prefix}.2-{prefix}.254")],
            gateway: Some(format!("{prefix}.1")),
            ..IPPoolSpec::default()
        };
        match index % 10 {
            0..6 => spec.node_name = vec![node_name(node)],
            6 | 7 => {
                spec.node_name = (0..3)
                    .map(|step| node_name((node + step) % ZONED_NODES))
                    .collect();
            }
            _ => {
                spec.node_affinity = Some(LabelSelector {
                    match_labels: Labels::from([(ZONE_LABEL.to_string(), node_zone(node))]),
                    match_expressions: Vec::new(),
                });
            }
        }
        pool_object(&zoned_pool_name(index), spec)
    });
    PoolCatalog::new(pools, [])
}

/// The candidate-resolution request: a pod on `node-0500` (zone `zone-00`) whose annotation
/// lists four candidates. The first three reject the node: `pool-00170` (nodeName
/// `node-0017`), `pool-00420` (nodeName `node-0042`) and `pool-00178` (nodeAffinity
/// `zone-17`). The last accepts it: `pool-05000` (nodeName `node-0500`), or with `glob`, the
/// pattern `pool-0499?`, which expands to ten pools of which `pool-04996` is the first that
/// serves `node-0500` (nodeName `node-0499`, `node-0500`, `node-0501`).
///
/// Returns the request and the pool it must get.
pub fn zoned_request(glob: bool) -> (Request, &'static str) {
    let node = 500;
    let mut request = Request::new(format!("{:064x}", 0xc0ffee_u128), "eth0");
    request.pod.namespace = "default".into();
    request.pod.name = "app-7d4b9c-xk2p9".into();
    request.pod.uid = Some("6f1c2e44-6a1b-4c0e-9d7e-2f5a8b3c1d00".into());
    request.node.name = node_name(node);
    request.node.labels = Labels::from([
        ("kubernetes.io/hostname".to_string(), node_name(node)),
        (ZONE_LABEL.to_string(), node_zone(node)),
    ]);
    let (last, expected) = if glob {
        ("pool-0499?", "pool-04996")
    } else {
        ("pool-05000", "pool-05000")
    };
    request.pod.annotations.insert(
        annotations::POD_IPPOOL.into(),
        format!(r#"{{"ipv4": ["pool-00170", "pool-00420", "pool-00178", "{last}"]}}"#),
    );
    (request, expected)
}

/// Whether `state` holds `address` in the benchmark pool (a convenience for checks).
pub fn is_held(state: &InMemoryState, address: IpAddr) -> bool {
    let Ok(holder) = state.holder(POOL_NAME, address);
    holder.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spiderpool_core::Verdict;

    #[test]
    fn shapes_have_the_expected_subnets_and_sizes() {
        let v4 = PoolShape::new(IpVersion::V4, 16).unwrap();
        assert_eq!(v4.subnet(), "10.0.0.0/16");
        let v6 = PoolShape::new(IpVersion::V6, 64).unwrap();
        assert_eq!(v6.subnet(), "fd00::/64");
        let catalog = PoolCatalog::new([v4.object("a"), v6.object("b")], []);
        assert_eq!(catalog.pool("a").unwrap().allocatable().len(), 65_533);
        assert_eq!(catalog.pool("b").unwrap().allocatable().len(), (1 << 64) - 2);
        assert_eq!(
            PoolShape::new(IpVersion::V4, 31).unwrap_err().to_string(),
            "an IPv4 pool needs a prefix length from 8 to 30, got /31"
        );
    }

    #[test]
    fn a_fill_holds_the_rounded_share_and_the_cursor_searches_inside_it() {
        let shape = PoolShape::new(IpVersion::V4, 24).unwrap();
        let mut seen = Vec::new();
        let mut pool = FilledPool::build_with(shape, 50, DEFAULT_WINDOW, 3, |a| seen.push(a));
        assert_eq!(pool.held, 127); // 253 * 0.5, rounded
        assert_eq!(pool.state.allocated_count(POOL_NAME), Ok(127));
        assert_eq!(seen.len(), 126);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(pool.state.cursor(POOL_NAME), Ok(pool.anchor()));
        assert_eq!(pool.anchor(), Some("10.0.0.2".parse().unwrap()));
        for _ in 0..1000 {
            let address = pool.allocate_release().unwrap();
            assert!(!is_held(&pool.state, address));
        }
        assert_eq!(pool.state.allocated_count(POOL_NAME), Ok(127));
        pool.request_allocate_release().unwrap();
        assert_eq!(pool.state.allocated_count(POOL_NAME), Ok(127));
    }

    #[test]
    fn a_windowed_fill_keeps_the_cursor_in_the_window() {
        let shape = PoolShape::new(IpVersion::V6, 64).unwrap();
        let mut pool = FilledPool::build_with(shape, 99, 1000, 5, |_| {});
        assert!(pool.is_windowed());
        assert_eq!(pool.held, 990);
        for _ in 0..100 {
            let address = pool.allocate_release().unwrap();
            let request = pool.request_allocate_release().unwrap();
            assert!(address_value(address) <= pool.window.1 + 1000);
            assert!(address_value(request) <= pool.window.1 + 1000);
        }
        // After leaving the window the cursor is back at the anchor.
        let Ok(cursor) = pool.state.cursor(POOL_NAME);
        let cursor = cursor.unwrap();
        assert!(pool.window_contains(cursor), "{cursor}");
    }

    #[test]
    fn the_zoned_request_gets_the_last_candidate() {
        let catalog = zoned_catalog();
        assert_eq!(catalog.pools().count(), ZONED_POOLS);
        assert_eq!(catalog.invalid().count(), 0);
        for glob in [false, true] {
            let (request, expected) = zoned_request(glob);
            let plan = allocate(&catalog, &InMemoryState::new(), &request).unwrap();
            assert_eq!(plan.changes[0].pool(), expected);
            let rejected = plan.trials[0]
                .candidates
                .iter()
                .filter(|c| matches!(c.verdict, Verdict::Rejected(_)))
                .count();
            assert_eq!(rejected, if glob { 9 } else { 3 });
        }
    }
}
