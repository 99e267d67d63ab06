//! Who holds which address: the allocation state the engine reads, and the changes it asks
//! adapters to write.

use std::fmt;
use std::net::IpAddr;

use crate::range::IpRange;

/// What identifies an allocation across retries: the pod's UID when the runtime gives one,
/// otherwise the container ID. Together with the interface name it is the idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnerKey {
    /// A Kubernetes pod, by UID.
    Pod(String),
    /// A container without pod identity, by container ID.
    Container(String),
}

impl OwnerKey {
    /// The UID or container ID.
    pub fn id(&self) -> &str {
        match self {
            OwnerKey::Pod(uid) | OwnerKey::Container(uid) => uid,
        }
    }
}

impl fmt::Display for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OwnerKey::Pod(uid) => write!(f, "pod uid {uid}"),
            OwnerKey::Container(id) => write!(f, "container {id}"),
        }
    }
}

/// A pod by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Who holds an address: the owner, on which interface, and for which pod and container.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holder {
    /// The idempotency key.
    pub owner: OwnerKey,
    /// The interface the address is for.
    pub interface: String,
    /// The pod, when known.
    pub pod: Option<PodRef>,
    /// The container (sandbox) ID of the attachment.
    pub container_id: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.pod, &self.owner) {
            (Some(pod), _) => write!(f, "pod {pod} ({})", self.interface),
            (None, owner) => write!(f, "{owner} ({})", self.interface),
        }
    }
}

/// An address held in a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldAddress {
    /// The pool.
    pub pool: String,
    /// The address.
    pub address: IpAddr,
    /// Its holder.
    pub holder: Holder,
}

/// A change of the allocation state that an adapter must write, in order, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Record `holder` at `address`, which must be free, and move the pool's cursor there.
    Allocate {
        /// The pool.
        pool: String,
        /// The address.
        address: IpAddr,
        /// The new holder.
        holder: Holder,
    },
    /// Remove the record of `address`, which must still be held by `holder`.
    Release {
        /// The pool.
        pool: String,
        /// The address.
        address: IpAddr,
        /// The holder being removed.
        holder: Holder,
    },
}

impl Change {
    /// The pool the change is about.
    pub fn pool(&self) -> &str {
        match self {
            Change::Allocate { pool, .. } | Change::Release { pool, .. } => pool,
        }
    }

    /// The address the change is about.
    pub fn address(&self) -> IpAddr {
        match self {
            Change::Allocate { address, .. } | Change::Release { address, .. } => *address,
        }
    }
}

/// Read access to the allocation state of every pool, as the engine needs it.
///
/// The methods are the queries an index answers directly, so a database-backed adapter
/// implements them with indexed queries instead of loading every allocation; the engine
/// never asks for a whole pool on the allocation path. [`crate::InMemoryState`] is the
/// in-memory implementation.
pub trait AllocationState {
    /// Who holds `address` in `pool`, if anyone.
    fn holder(&self, pool: &str, address: IpAddr) -> Option<Holder>;

    /// The lowest address at or after `from`, in `from`'s family, that nobody holds in `pool`;
    /// `None` when every address from `from` to the top of the family is held.
    fn first_unheld_from(&self, pool: &str, from: IpAddr) -> Option<IpAddr>;

    /// How many addresses are held in `pool`.
    fn allocated_count(&self, pool: &str) -> u64;

    /// How many addresses of `range` are held in `pool`.
    fn held_count_in(&self, pool: &str, range: IpRange) -> u128;

    /// The address most recently allocated in `pool`; the next search starts after it.
    fn cursor(&self, pool: &str) -> Option<IpAddr>;

    /// Every address `owner` holds, in any pool, in pool then address order.
    fn held_by(&self, owner: &OwnerKey) -> Vec<HeldAddress>;

    /// Every allocation of `pool`, in address order. Used for listings and status, not for
    /// allocation.
    fn allocations(&self, pool: &str) -> Vec<(IpAddr, Holder)>;
}
