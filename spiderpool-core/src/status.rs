//! Usage figures and Spiderpool's `status` of a pool, derived from the allocation state, and
//! the tables users read them in.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::allocate::next_free;
use crate::catalog::{CatalogEntry, PoolCatalog};
use crate::memory::InMemoryState;
use crate::model::IPPoolStatus;
use crate::pool::Pool;
use crate::range::{IpRange, IpSet};
use crate::state::{AllocationState, Change, Holder, OwnerKey, PodRef};

/// How much of a pool is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Spiderpool's `totalIPCount`: `ips` minus `excludeIPs`.
    pub total: u128,
    /// Addresses held.
    pub allocated: u64,
    /// Addresses that may be handed out: `total` minus reserved addresses.
    pub allocatable: u128,
    /// Allocatable addresses nobody holds.
    pub free: u128,
    /// The address the next allocation from this pool would get.
    pub next_free: Option<IpAddr>,
}

/// The usage of a pool. Addresses held outside what the pool may hand out now (reserved
/// after allocation, or dropped from `ips`) count as allocated but not against `free`.
///
/// ```
/// use spiderpool_core::*;
/// let docs = parse_documents("{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool,
///   metadata: {name: p}, spec: {subnet: 10.6.0.0/16, ips: [10.6.168.60-10.6.168.69]}}").unwrap();
/// let catalog = PoolCatalog::from_documents(&docs);
/// let Ok(usage) = usage(catalog.pool("p").unwrap(), &InMemoryState::new());
/// assert_eq!((usage.total, usage.allocated, usage.free), (10, 0, 10));
/// assert_eq!(usage.next_free, Some("10.6.168.60".parse().unwrap()));
/// ```
pub fn usage<S: AllocationState + ?Sized>(pool: &Pool, state: &S) -> Result<PoolUsage, S::Error> {
    let version = pool.version();
    let family = IpSet::from_ranges(version, [IpRange::from_bounds(version, 0, version.max_value())])
        .expect("a family range is of its family");
    let held_outside: u128 = family
        .difference(pool.allocatable())
        .ranges()
        .map(|range| state.held_count_in(pool.name(), range))
        .sum::<Result<u128, S::Error>>()?;
    let allocated = state.allocated_count(pool.name())?;
    let held_inside = u128::from(allocated).saturating_sub(held_outside);
    Ok(PoolUsage {
        total: pool.total_count(),
        allocated,
        allocatable: pool.allocatable().len(),
        free: pool.allocatable().len().saturating_sub(held_inside),
        next_free: next_free(state, pool)?,
    })
}

/// One entry of Spiderpool's `status.allocatedIPs` JSON: who holds an address.
///
/// `pod` and `podUid` are Spiderpool's keys; `interface` (as older Spiderpool versions wrote)
/// and `containerID` are added, and readers that do not know them ignore them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AllocationRecord {
    /// `namespace/name` of the pod; empty for containers without pod identity.
    #[serde(default)]
    pub pod: String,
    /// The pod's UID; empty when unknown.
    #[serde(default)]
    pub pod_uid: String,
    /// The interface.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    /// The container (sandbox) ID.
    #[serde(default, rename = "containerID", skip_serializing_if = "String::is_empty")]
    pub container_id: String,
}

/// Spiderpool's `status` of a pool: `allocatedIPs` as JSON text (absent when nothing is
/// allocated, as Spiderpool writes it), `allocatedIPCount`, and `totalIPCount` capped at
/// `i64::MAX`.
pub fn pool_status<S: AllocationState + ?Sized>(pool: &Pool, state: &S) -> Result<IPPoolStatus, S::Error> {
    let total = i64::try_from(pool.total_count()).unwrap_or(i64::MAX);
    held_status(pool.name(), state, Some(total))
}

/// The status `state` records for the pool named `pool`, with `totalIPCount` as given: what
/// [`pool_status`] writes, also for a pool the engine refuses that still holds addresses (its
/// total is then the one last written).
pub fn held_status<S: AllocationState + ?Sized>(
    pool: &str,
    state: &S,
    total_ip_count: Option<i64>,
) -> Result<IPPoolStatus, S::Error> {
    let records: BTreeMap<String, AllocationRecord> = state
        .allocations(pool)?
        .into_iter()
        .map(|(address, holder)| (address.to_string(), allocation_record(&holder)))
        .collect();
    Ok(IPPoolStatus {
        allocated_ip_count: Some(i64::try_from(records.len()).unwrap_or(i64::MAX)),
        allocated_ips: allocated_ips_text(&records),
        total_ip_count,
        last_allocated_ip: state.cursor(pool)?.map(|address| address.to_string()),
    })
}

/// The allocation state that pools' statuses record (`allocatedIPs` and `lastAllocatedIP`, as
/// [`pool_status`] writes them): what an adapter keeping state in pool objects hands the
/// engine. A record names its owner by `podUid`, or by `containerID` when it has no pod.
///
/// ```
/// use spiderpool_core::*;
/// let status = IPPoolStatus {
///     allocated_ips: Some(r#"{"10.6.168.60":{"pod":"default/web-0","podUid":"u1","interface":"eth0"}}"#.into()),
///     last_allocated_ip: Some("10.6.168.60".into()),
///     ..IPPoolStatus::default()
/// };
/// let state = state_from_statuses([("test-ippool-6", &status)]).unwrap();
/// let Ok(held) = state.held_by(&OwnerKey::Pod("u1".into()));
/// assert_eq!(held[0].address.to_string(), "10.6.168.60");
/// assert_eq!(state.cursor("test-ippool-6"), Ok(Some("10.6.168.60".parse().unwrap())));
/// ```
pub fn state_from_statuses<'a>(
    statuses: impl IntoIterator<Item = (&'a str, &'a IPPoolStatus)>,
) -> Result<InMemoryState, StatusStateError> {
    let mut state = InMemoryState::new();
    for (pool, status) in statuses {
        let bad = |problem: String| StatusStateError {
            pool: pool.to_owned(),
            problem,
        };
        let records = match status.allocated_ips.as_deref() {
            Some(text) => {
                parse_allocated_ips(text).map_err(|err| bad(format!("status.allocatedIPs: {err}")))?
            }
            None => BTreeMap::new(),
        };
        let changes = records
            .into_iter()
            .map(|(address, record)| {
                record_allocation(pool, address, &record)
                    .map_err(|problem| bad(format!("status.allocatedIPs: {problem}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        state
            .apply(&changes)
            .map_err(|err| bad(format!("status.allocatedIPs: {err}")))?;
        match status.last_allocated_ip.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(address)) => state
                .set_cursor(pool, address)
                .map_err(|err| bad(format!("status.lastAllocatedIP: {err}")))?,
            Some(Err(_)) => {
                return Err(bad(format!(
                    "status.lastAllocatedIP: {:?} is not an IP address; remove it",
                    status.last_allocated_ip.as_deref().unwrap_or_default()
                )));
            }
            None => {}
        }
    }
    Ok(state)
}

/// The allocation a record of `pool` at `address` stands for; what is wrong with it otherwise,
/// naming the address and the fix. A record names its owner by `podUid`, or by `containerID`
/// when it has no pod.
pub(crate) fn record_allocation(
    pool: &str,
    address: IpAddr,
    record: &AllocationRecord,
) -> Result<Change, String> {
    let owner = match (record.pod_uid.as_str(), record.container_id.as_str()) {
        ("", "") => {
            return Err(format!(
                "{address} names neither podUid nor containerID; release it or write its owner"
            ));
        }
        ("", container) => OwnerKey::Container(container.to_owned()),
        (uid, _) => OwnerKey::Pod(uid.to_owned()),
    };
    // A pod is written `namespace/name`; anything else could not be written back.
    let pod = match record.pod.split_once('/') {
        Some((namespace, name)) => Some(PodRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }),
        None if record.pod.is_empty() => None,
        None => {
            return Err(format!(
                "{address} names pod {:?}, not namespace/name; write the pod as namespace/name",
                record.pod
            ));
        }
    };
    let holder = Holder::new(&owner, &record.interface, pod.as_ref(), &record.container_id);
    Ok(Change::Allocate {
        pool: pool.to_owned(),
        address,
        holder,
    })
}

/// The record `holder` is written as.
pub(crate) fn allocation_record(holder: &Holder) -> AllocationRecord {
    AllocationRecord {
        pod: holder.pod().map(|pod| pod.to_string()).unwrap_or_default(),
        pod_uid: match holder.owner() {
            OwnerKey::Pod(uid) => uid,
            OwnerKey::Container(_) => String::new(),
        },
        interface: holder.interface(),
        container_id: holder.container_id(),
    }
}

/// A pool's status cannot be read as allocation state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pool {pool}: {problem}")]
pub struct StatusStateError {
    /// The pool.
    pub pool: String,
    /// What is wrong, naming the field.
    pub problem: String,
}

/// The `allocatedIPs` JSON text of `records` (a pool's status, a block's spec): absent when
/// there are none, as Spiderpool writes it.
pub(crate) fn allocated_ips_text(records: &BTreeMap<String, AllocationRecord>) -> Option<String> {
    (!records.is_empty()).then(|| serde_json::to_string(records).expect("records serialize to JSON"))
}

/// Reads `allocatedIPs` JSON text, as Spiderpool or [`pool_status`] wrote it in a pool's
/// status, or a block's spec.
///
/// ```
/// use spiderpool_core::parse_allocated_ips;
/// let records = parse_allocated_ips(r#"{"10.6.168.65":{"pod":"default/test-app-j9ftl","podUid":"u1"}}"#).unwrap();
/// assert_eq!(records[&"10.6.168.65".parse().unwrap()].pod, "default/test-app-j9ftl");
/// ```
pub fn parse_allocated_ips(text: &str) -> Result<BTreeMap<IpAddr, AllocationRecord>, AllocatedIpsError> {
    let raw: BTreeMap<String, AllocationRecord> =
        serde_json::from_str(text).map_err(|err| AllocatedIpsError::Json(err.to_string()))?;
    let mut records = BTreeMap::new();
    let mut spellings: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (key, record) in raw {
        let Ok(address) = key.parse::<IpAddr>() else {
            return Err(AllocatedIpsError::BadAddress(key));
        };
        // Two spellings of one address would keep one record and drop the other.
        if let Some(first) = spellings.insert(address, key.clone()) {
            return Err(AllocatedIpsError::Duplicate {
                address,
                spellings: [first, key],
            });
        }
        records.insert(address, record);
    }
    Ok(records)
}

/// `allocatedIPs` JSON text could not be read; the reader names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocatedIpsError {
    /// Not the expected JSON shape.
    #[error("not a JSON object of address to {{\"pod\", \"podUid\"}}: {0}")]
    Json(String),
    /// A key is not an address.
    #[error("key {0:?} is not an IP address")]
    BadAddress(String),
    /// Two keys spell the same address.
    #[error(
        "{address} is listed twice, as {:?} and {:?}; keep the record of the pod that holds it",
        spellings[0], spellings[1]
    )]
    Duplicate {
        /// The address.
        address: IpAddr,
        /// Its two spellings.
        spellings: [String; 2],
    },
}

/// One line of `kubectl get spiderippool`, plus what `-o wide` adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    /// NAME.
    pub name: String,
    /// VERSION: 4 or 6, empty for an invalid pool whose family is unknown.
    pub version: String,
    /// SUBNET, as written.
    pub subnet: String,
    /// ALLOCATED-IP-COUNT.
    pub allocated: u64,
    /// TOTAL-IP-COUNT.
    pub total: u128,
    /// DEFAULT.
    pub default: bool,
    /// DISABLE.
    pub disable: bool,
    /// FREE (wide).
    pub free: u128,
    /// NEXT-FREE (wide).
    pub next_free: Option<IpAddr>,
    /// Why the pool is refused, if it is.
    pub invalid: Option<String>,
}

/// The rows of every pool of the catalog, by name; refused pools show what could be read.
pub fn pool_rows<S: AllocationState + ?Sized>(
    catalog: &PoolCatalog,
    state: &S,
) -> Result<Vec<PoolRow>, S::Error> {
    catalog
        .entries()
        .map(|(name, entry)| {
            Ok(match entry {
                CatalogEntry::Valid(pool) => {
                    let usage = usage(pool, state)?;
                    PoolRow {
                        name: name.to_owned(),
                        version: pool.version().number().to_string(),
                        subnet: pool.subnet().to_string(),
                        allocated: usage.allocated,
                        total: usage.total,
                        default: pool.is_default(),
                        disable: pool.is_disabled(),
                        free: usage.free,
                        next_free: usage.next_free,
                        invalid: None,
                    }
                }
                CatalogEntry::Invalid {
                    version,
                    default,
                    error,
                } => PoolRow {
                    name: name.to_owned(),
                    version: version.map(|v| v.number().to_string()).unwrap_or_default(),
                    subnet: String::new(),
                    allocated: state.allocated_count(name)?,
                    total: 0,
                    default: *default,
                    disable: false,
                    free: 0,
                    next_free: None,
                    invalid: Some(error.to_string()),
                },
            })
        })
        .collect()
}

/// Renders rows as `kubectl get` does: upper-case headers, columns left-aligned and
/// separated by three spaces, no trailing spaces.
///
/// ```
/// use spiderpool_core::render_table;
/// let text = render_table(&["NAME", "IP"], &[vec!["a".into(), "10.6.168.60".into()]]);
/// assert_eq!(text, "NAME   IP\na      10.6.168.60\n");
/// ```
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (index, cell) in cells.enumerate() {
            if index > 0 {
                text.push_str("   ");
            }
            text.push_str(&format!("{cell:<width$}", width = widths[index]));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// The `kubectl get spiderippool` table; `wide` adds FREE and NEXT-FREE.
pub fn render_pool_table(rows: &[PoolRow], wide: bool) -> String {
    let mut headers = vec![
        "NAME",
        "VERSION",
        "SUBNET",
        "ALLOCATED-IP-COUNT",
        "TOTAL-IP-COUNT",
        "DEFAULT",
        "DISABLE",
    ];
    if wide {
        headers.extend(["FREE", "NEXT-FREE"]);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = vec![
                row.name.clone(),
                row.version.clone(),
                row.subnet.clone(),
                row.allocated.to_string(),
                row.total.to_string(),
                row.default.to_string(),
                row.disable.to_string(),
            ];
            if wide {
                cells.push(row.free.to_string());
                cells.push(row.next_free.map_or_else(|| "<none>".into(), |a| a.to_string()));
            }
            cells
        })
        .collect();
    render_table(&headers, &cells)
}
