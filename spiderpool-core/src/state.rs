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

/// Who holds an address: the owner (the idempotency key), the interface, and the pod and
/// container of the attachment.
///
/// A pool keeps one holder per address, so a holder is one packed allocation (canonical
/// UUIDs and lower-case hex IDs in binary, under 90 bytes for a Kubernetes pod); storing,
/// copying and comparing it are byte operations, and the accessors decode fields.
///
/// ```
/// use spiderpool_core::{Holder, OwnerKey, PodRef};
/// let pod = PodRef { namespace: "default".into(), name: "test-app-j9ftl".into() };
/// let owner = OwnerKey::Pod("1d3e5a7c-6f0b-4d2a-9c8e-0b1a2c3d4e5f".into());
/// let holder = Holder::new(&owner, "eth0", Some(&pod), "c0ffee");
/// assert_eq!(holder.owner(), owner);
/// assert_eq!(holder.pod(), Some(pod));
/// assert_eq!(holder.to_string(), "pod default/test-app-j9ftl (eth0)");
/// assert!(holder.is_owned_by(&owner));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Holder(Box<[u8]>);

// The packed form: a kind byte (0 pod, 1 container), then the fields owner ID, interface,
// pod namespace and name (or one TAG_ABSENT), container ID, each tagged with its form.
const TAG_ABSENT: u8 = 0;
const TAG_TEXT: u8 = 1;
const TAG_UUID: u8 = 2;
const TAG_HEX: u8 = 3;
/// A text length byte saying that two length bytes follow.
const LONG_TEXT: u8 = 255;

/// How many bytes a text field's length takes, and the length, from its first length byte on.
fn text_length(bytes: &[u8]) -> (usize, usize) {
    match bytes[0] {
        LONG_TEXT => (3, usize::from(u16::from_le_bytes([bytes[1], bytes[2]]))),
        short => (1, usize::from(short)),
    }
}

impl Holder {
    /// The holder of an attachment.
    pub fn new(owner: &OwnerKey, interface: &str, pod: Option<&PodRef>, container_id: &str) -> Holder {
        let mut bytes = Vec::with_capacity(128);
        put_owner(&mut bytes, owner);
        put_text(&mut bytes, interface);
        match pod {
            Some(pod) => {
                put_text(&mut bytes, &pod.namespace);
                put_text(&mut bytes, &pod.name);
            }
            None => bytes.push(TAG_ABSENT),
        }
        put_text(&mut bytes, container_id);
        Holder(bytes.into_boxed_slice())
    }

    fn fields(&self) -> Fields<'_> {
        Fields(&self.0[1..])
    }

    /// The owner: the idempotency key.
    pub fn owner(&self) -> OwnerKey {
        let id = self.fields().next().flatten().unwrap_or_default();
        if self.0[0] == 0 {
            OwnerKey::Pod(id)
        } else {
            OwnerKey::Container(id)
        }
    }

    /// Whether `owner` is this holder's owner, comparing packed bytes.
    pub fn is_owned_by(&self, owner: &OwnerKey) -> bool {
        self.owner_prefix() == Holder::packed_owner(owner)
    }

    /// The interface the address is for.
    pub fn interface(&self) -> String {
        self.fields().nth(1).flatten().unwrap_or_default()
    }

    /// The pod, when known.
    pub fn pod(&self) -> Option<PodRef> {
        let mut fields = self.fields().skip(2);
        let namespace = fields.next().flatten()?;
        let name = fields.next().flatten().unwrap_or_default();
        Some(PodRef { namespace, name })
    }

    /// The container (sandbox) ID of the attachment.
    pub fn container_id(&self) -> String {
        self.fields().last().flatten().unwrap_or_default()
    }

    /// The packed bytes of an owner: the prefix of every holder it owns.
    pub(crate) fn packed_owner(owner: &OwnerKey) -> Vec<u8> {
        let mut packed = Vec::with_capacity(40);
        put_owner(&mut packed, owner);
        packed
    }

    /// The packed bytes of this holder's owner: the kind byte and the first field.
    pub(crate) fn owner_prefix(&self) -> &[u8] {
        let field = &self.0[1..];
        let length = match field[0] {
            TAG_TEXT => {
                let (prefix, length) = text_length(&field[1..]);
                1 + prefix + length
            }
            TAG_UUID => 17,
            TAG_HEX => 2 + usize::from(field[1]),
            _ => 1,
        };
        &self.0[..1 + length]
    }
}

fn put_owner(out: &mut Vec<u8>, owner: &OwnerKey) {
    let (kind, id) = match owner {
        OwnerKey::Pod(uid) => (0, uid),
        OwnerKey::Container(id) => (1, id),
    };
    out.push(kind);
    put_text(out, id);
}

/// One text field: a canonical UUID as 16 bytes, lower-case hex of up to 64 digits as bytes
/// (with a length byte), anything else as it is (with its length).
fn put_text(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut scratch = [0u8; 32];
    if bytes.len() == 36 && [8, 13, 18, 23].iter().all(|&i| bytes[i] == b'-') {
        let mut digits = [0u8; 32];
        let groups = [
            &bytes[0..8],
            &bytes[9..13],
            &bytes[14..18],
            &bytes[19..23],
            &bytes[24..],
        ];
        let mut at = 0;
        for group in groups {
            digits[at..at + group.len()].copy_from_slice(group);
            at += group.len();
        }
        if decode_hex(&digits, &mut scratch[..16]) {
            out.push(TAG_UUID);
            out.extend_from_slice(&scratch[..16]);
            return;
        }
    }
    let half = bytes.len() / 2;
    if !bytes.is_empty()
        && bytes.len().is_multiple_of(2)
        && half <= scratch.len()
        && decode_hex(bytes, &mut scratch[..half])
    {
        out.extend_from_slice(&[TAG_HEX, half as u8]);
        out.extend_from_slice(&scratch[..half]);
        return;
    }
    // One length byte below 255, else 255 and two bytes: Kubernetes names, interface names and
    // container IDs are far below 64 KiB.
    let length = u16::try_from(bytes.len()).expect("holder fields are shorter than 64 KiB");
    out.push(TAG_TEXT);
    match u8::try_from(length) {
        Ok(short) if short < LONG_TEXT => out.push(short),
        _ => {
            out.push(LONG_TEXT);
            out.extend_from_slice(&length.to_le_bytes());
        }
    }
    out.extend_from_slice(bytes);
}

/// The value of each lower-case hex digit; 0xff for every other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut digit = 0;
    while digit < 16 {
        table[b"0123456789abcdef"[digit] as usize] = digit as u8;
        digit += 1;
    }
    table
};

/// Decodes pairs of lower-case hex digits into `out`; false at the first other character.
fn decode_hex(digits: &[u8], out: &mut [u8]) -> bool {
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (HEX_VALUE[usize::from(pair[0])], HEX_VALUE[usize::from(pair[1])]);
        if (high | low) == 0xff {
            return false;
        }
        *byte = high << 4 | low;
    }
    true
}

/// The text fields of a packed holder, in order; `None` for an absent pod.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take(&mut self, count: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(count);
        self.0 = rest;
        head
    }
}

impl Iterator for Fields<'_> {
    type Item = Option<String>;

    fn next(&mut self) -> Option<Option<String>> {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let tag = *self.0.first()?;
        self.take(1);
        Some(match tag {
            TAG_ABSENT => None,
            TAG_TEXT => {
                let (prefix, length) = text_length(self.0);
                self.take(prefix);
                Some(String::from_utf8_lossy(self.take(length)).into_owned())
            }
            TAG_UUID => {
                let digits = hex(self.take(16));
                Some(format!(
                    "{}-{}-{}-{}-{}",
                    &digits[..8],
                    &digits[8..12],
                    &digits[12..16],
                    &digits[16..20],
                    &digits[20..]
                ))
            }
            _ => {
                let length = usize::from(self.take(1)[0]);
                Some(hex(self.take(length)))
            }
        })
    }
}

impl fmt::Debug for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Holder")
            .field("owner", &self.owner())
            .field("interface", &self.interface())
            .field("pod", &self.pod())
            .field("container_id", &self.container_id())
            .finish()
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pod() {
            Some(pod) => write!(f, "pod {pod} ({})", self.interface()),
            None => write!(f, "{} ({})", self.owner(), self.interface()),
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
    /// Move the record of `address`, which must still be held by `from`, to `to` (a new
    /// sandbox of the same pod). The pool's cursor stays.
    Transfer {
        /// The pool.
        pool: String,
        /// The address.
        address: IpAddr,
        /// The holder now recorded.
        from: Holder,
        /// The holder to record.
        to: Holder,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Allocate {
                pool,
                address,
                holder,
            } => write!(f, "allocating {address} in pool {pool} to {holder}"),
            Change::Release {
                pool,
                address,
                holder,
            } => write!(f, "releasing {address} in pool {pool} from {holder}"),
            Change::Transfer {
                pool,
                address,
                from,
                to,
            } => write!(f, "moving {address} in pool {pool} from {from} to {to}"),
        }
    }
}

impl Change {
    /// The pool the change is about.
    pub fn pool(&self) -> &str {
        match self {
            Change::Allocate { pool, .. } | Change::Release { pool, .. } | Change::Transfer { pool, .. } => {
                pool
            }
        }
    }

    /// Who must hold the address before the change: nobody for an allocation.
    pub fn holder_before(&self) -> Option<&Holder> {
        match self {
            Change::Allocate { .. } => None,
            Change::Release { holder, .. } => Some(holder),
            Change::Transfer { from, .. } => Some(from),
        }
    }

    /// Who holds the address after the change: nobody after a release.
    pub fn holder_after(&self) -> Option<&Holder> {
        match self {
            Change::Allocate { holder, .. } => Some(holder),
            Change::Release { .. } => None,
            Change::Transfer { to, .. } => Some(to),
        }
    }

    /// The address the change is about.
    pub fn address(&self) -> IpAddr {
        match self {
            Change::Allocate { address, .. }
            | Change::Release { address, .. }
            | Change::Transfer { address, .. } => *address,
        }
    }
}

/// Read access to the allocation state of every pool, as the engine needs it.
///
/// The methods are the queries an index answers directly, so a database-backed adapter
/// implements them with indexed queries instead of loading every allocation; the engine
/// never asks for a whole pool on the allocation path. [`crate::InMemoryState`] is the
/// in-memory implementation.
///
/// A query that cannot be answered fails with [`Self::Error`] rather than answering
/// "nothing": the engine's functions pass the error on, typed, and never read a failure as a
/// free address.
pub trait AllocationState {
    /// Why a query could not be answered (a database failure); `Infallible` in memory.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Who holds `address` in `pool`, if anyone.
    fn holder(&self, pool: &str, address: IpAddr) -> Result<Option<Holder>, Self::Error>;

    /// The lowest address at or after `from`, in `from`'s family, that nobody holds in `pool`;
    /// `None` when every address from `from` to the top of the family is held.
    fn first_unheld_from(&self, pool: &str, from: IpAddr) -> Result<Option<IpAddr>, Self::Error>;

    /// How many addresses are held in `pool`.
    fn allocated_count(&self, pool: &str) -> Result<u64, Self::Error>;

    /// How many addresses of `range` are held in `pool`.
    fn held_count_in(&self, pool: &str, range: IpRange) -> Result<u128, Self::Error>;

    /// The address most recently allocated in `pool`; the next search starts after it.
    fn cursor(&self, pool: &str) -> Result<Option<IpAddr>, Self::Error>;

    /// Every address `owner` holds, in any pool, in pool then address order.
    fn held_by(&self, owner: &OwnerKey) -> Result<Vec<HeldAddress>, Self::Error>;

    /// Every address held through the container (sandbox) `container_id`, in any pool: what a
    /// DEL that lost its pod identity still has to find. Not on the allocation path; an index
    /// answers it in a database, [`crate::InMemoryState`] scans.
    fn held_by_container(&self, container_id: &str) -> Result<Vec<HeldAddress>, Self::Error>;

    /// Every allocation of `pool`, in address order. Used for listings and status, not for
    /// allocation.
    fn allocations(&self, pool: &str) -> Result<Vec<(IpAddr, Holder)>, Self::Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of a holder, decoded.
    fn fields(holder: &Holder) -> (OwnerKey, String, Option<PodRef>, String) {
        (
            holder.owner(),
            holder.interface(),
            holder.pod(),
            holder.container_id(),
        )
    }

    #[test]
    fn holders_keep_every_field_exactly() {
        let pod = PodRef {
            namespace: "default".into(),
            name: "test-app-j9ftl".into(),
        };
        let container = "4bd8f0f1c0a3e2b5d6c7a8b9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9";
        let cases: Vec<(OwnerKey, String, Option<PodRef>, String)> = vec![
            (
                OwnerKey::Pod("6f1c2e44-6a1b-4c0e-9d7e-2f5a8b3c1d00".into()),
                "eth0".into(),
                Some(pod.clone()),
                container.into(),
            ),
            (
                OwnerKey::Container("Not-Hex_ID".into()),
                "net1".into(),
                None,
                "ABCDEF".into(),
            ),
            (
                OwnerKey::Container("abc".into()),
                String::new(),
                None,
                String::new(),
            ),
            (
                OwnerKey::Pod("6F1C2E44-6A1B-4C0E-9D7E-2F5A8B3C1D00".into()),
                "eth0".into(),
                Some(pod.clone()),
                "ab".into(),
            ),
            (
                OwnerKey::Pod("6f1c2e44-6a1b-4c0e-9d7e-2f5a8b3c1d0g".into()),
                "eth0".into(),
                Some(pod.clone()),
                "0".into(),
            ),
            (
                OwnerKey::Container("0123456789abcdef".repeat(4)),
                "ab".repeat(33),
                None,
                "ab".repeat(32),
            ),
            (
                OwnerKey::Container("a".repeat(300)),
                "eth".repeat(50),
                Some(pod.clone()),
                "x".repeat(200),
            ),
            (
                OwnerKey::Container("y".repeat(254)),
                "z".repeat(255),
                None,
                "w".repeat(256),
            ),
        ];
        let holders: Vec<Holder> = cases
            .iter()
            .map(|(owner, interface, pod, container)| Holder::new(owner, interface, pod.as_ref(), container))
            .collect();
        for (index, (holder, case)) in holders.iter().zip(&cases).enumerate() {
            assert_eq!(&fields(holder), case);
            assert!(holder.is_owned_by(&case.0));
            for (other_index, other) in holders.iter().enumerate() {
                assert_eq!(holder == other, index == other_index, "{holder:?} vs {other:?}");
            }
        }
        let typical = Holder::new(&cases[0].0, "eth0", Some(&pod), container);
        assert!(typical.0.len() <= 90, "{} bytes", typical.0.len());
    }

    #[test]
    fn an_owner_is_not_mistaken_for_a_longer_one() {
        let short = OwnerKey::Container("ab".into());
        let long = OwnerKey::Container("abcd".into());
        let holder = Holder::new(&long, "eth0", None, "c");
        assert!(!holder.is_owned_by(&short));
        assert!(!holder.is_owned_by(&OwnerKey::Pod("abcd".into())));
    }
}
