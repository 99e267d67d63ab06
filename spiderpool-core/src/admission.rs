//! Admission verdicts: whether the API server should store a pool or reserved-IP object as
//! written, with the same rules the engine applies when it reads them, so that what the
//! cluster accepts is what allocation can use. A validating webhook asks these.

use std::net::IpAddr;

use crate::block::Block;
use crate::catalog::{CatalogEntry, PoolCatalog};
use crate::model::{SpiderIPPool, SpiderReservedIP};
use crate::pool::{InvalidObject, Problem, ReservedIps, Violation, validate_update};
use crate::status::parse_allocated_ips;

/// Whether `new` may be stored among `existing` (every other pool of the cluster; an entry of
/// the same name is the object's current version and is skipped). `old` is that current
/// version on an update: `subnet`, `ipVersion` and `blockSize` are immutable and addresses in
/// use (recorded in its status or in `blocks`, the pool's blocks) must stay.
///
/// ```
/// use spiderpool_core::*;
/// use spiderpool_core::admission::admit_pool;
/// let pool = |name: &str, ips: &str| -> SpiderIPPool {
///     serde_yaml_ng::from_str(&format!("{{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool,
///         metadata: {{name: {name}}}, spec: {{subnet: 10.6.0.0/16, ips: [{ips}]}}}}")).unwrap()
/// };
/// let existing = [pool("a", "10.6.0.1-10.6.0.10")];
/// assert!(admit_pool(&existing, None, &pool("b", "10.6.0.11-10.6.0.20"), &[]).is_ok());
/// let refused = admit_pool(&existing, None, &pool("b", "10.6.0.10-10.6.0.20"), &[]).unwrap_err();
/// assert!(refused.to_string().contains("10.6.0.10 also belong to pool a"));
/// ```
pub fn admit_pool(
    existing: &[SpiderIPPool],
    old: Option<&SpiderIPPool>,
    new: &SpiderIPPool,
    blocks: &[Block],
) -> Result<(), InvalidObject> {
    if let Some(old) = old {
        validate_update(old, new, &in_use(old, blocks))?;
    }
    let others = existing
        .iter()
        .filter(|pool| pool.metadata.name != new.metadata.name)
        .cloned();
    // The new object comes last, so that it, not a pool already stored, is the one refused.
    let catalog = PoolCatalog::new(others.chain(std::iter::once(new.clone())), []);
    match catalog.get(&new.metadata.name) {
        Some(CatalogEntry::Invalid { error, .. }) => Err(error.clone()),
        _ => Ok(()),
    }
}

/// Whether `pool` may be deleted: not while it holds addresses (in its status, or in
/// `blocks`, its blocks), which pods still use.
pub fn admit_pool_deletion(pool: &SpiderIPPool, blocks: &[Block]) -> Result<(), InvalidObject> {
    let held = in_use(pool, blocks);
    if held.is_empty() {
        return Ok(());
    }
    let holders: Vec<String> = held
        .iter()
        .take(3)
        .map(|(address, who)| format!("{address} ({who})"))
        .collect();
    Err(InvalidObject {
        kind: "SpiderIPPool",
        name: pool.metadata.name.clone(),
        violations: vec![Violation {
            field: "status.allocatedIPs".into(),
            problem: Problem::InUse {
                count: held.len(),
                examples: holders.join(", "),
            },
        }],
    })
}

/// Whether a reserved-IP object is valid.
pub fn admit_reserved_ip(object: &SpiderReservedIP) -> Result<(), InvalidObject> {
    ReservedIps::default().add(object)
}

/// The addresses a pool's status and its blocks record as held, with their holders. Blocks
/// of an earlier pool of the same name (another pool UID) hold nothing of this one.
fn in_use(pool: &SpiderIPPool, blocks: &[Block]) -> Vec<(IpAddr, String)> {
    let mut held: Vec<(IpAddr, String)> = pool
        .status
        .as_ref()
        .and_then(|status| status.allocated_ips.as_deref())
        .and_then(|text| parse_allocated_ips(text).ok())
        .map(|records| {
            records
                .into_iter()
                .map(|(address, record)| (address, format!("pod {}", record.pod)))
                .collect()
        })
        .unwrap_or_default();
    let uid = pool.metadata.uid.as_deref();
    for block in blocks
        .iter()
        .filter(|block| block.pool == pool.metadata.name && uid.is_none_or(|uid| uid == block.pool_uid))
    {
        for allocation in &block.allocations {
            if let crate::state::Change::Allocate { address, holder, .. } = allocation {
                let who = match holder.pod() {
                    Some(pod) => format!("pod {pod}"),
                    None => format!("container {}", holder.container_id()),
                };
                held.push((*address, who));
            }
        }
    }
    held.sort();
    held
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IPPoolStatus;

    fn pool(yaml: &str) -> SpiderIPPool {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn zone6() -> SpiderIPPool {
        pool(
            "{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool, metadata: {name: test-ippool-6},
              spec: {subnet: 10.6.0.0/16, ips: [10.6.168.60-10.6.168.69], gateway: 10.6.0.1}}",
        )
    }

    fn holding(mut pool: SpiderIPPool) -> SpiderIPPool {
        pool.status = Some(IPPoolStatus {
            allocated_ips: Some(r#"{"10.6.168.65":{"pod":"default/test-app-j9ftl","podUid":"u1"}}"#.into()),
            allocated_ip_count: Some(1),
            ..IPPoolStatus::default()
        });
        pool
    }

    #[test]
    fn invalid_pools_are_refused_with_every_violation() {
        let bad = pool(
            "{apiVersion: spiderpool.spidernet.io/v2beta1, kind: SpiderIPPool, metadata: {name: bad},
              spec: {subnet: 10.6.0.0/16, ips: [10.7.0.1], gateway: 10.8.0.1}}",
        );
        let error = admit_pool(&[], None, &bad, &[]).unwrap_err();
        assert_eq!(error.violations.len(), 2, "{error}");
        let fields: Vec<&str> = error.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["spec.ips[0]", "spec.gateway"], "{error}");
    }

    #[test]
    fn updates_keep_subnet_and_addresses_in_use() {
        let old = holding(zone6());
        let mut moved = zone6();
        moved.spec.subnet = "10.9.0.0/16".into();
        let error = admit_pool(std::slice::from_ref(&old), Some(&old), &moved, &[]).unwrap_err();
        assert!(error.to_string().contains("spec.subnet"), "{error}");
        let mut shrunk = zone6();
        shrunk.spec.ips = vec!["10.6.168.60-10.6.168.64".into()];
        let error = admit_pool(std::slice::from_ref(&old), Some(&old), &shrunk, &[]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("10.6.168.65 is in use by pod default/test-app-j9ftl"),
            "{error}"
        );
        // Its own current version does not count as an overlap.
        assert!(admit_pool(std::slice::from_ref(&old), Some(&old), &zone6(), &[]).is_ok());
    }

    #[test]
    fn a_pool_in_use_cannot_be_deleted() {
        assert!(admit_pool_deletion(&zone6(), &[]).is_ok());
        let error = admit_pool_deletion(&holding(zone6()), &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "SpiderIPPool test-ippool-6 is invalid: status.allocatedIPs: 1 addresses are still allocated \
             (10.6.168.65 (pod default/test-app-j9ftl)); delete those pods, or wait for their addresses to \
             be released, before deleting the pool"
        );
    }

    #[test]
    fn addresses_in_a_pools_blocks_are_in_use_unless_the_block_is_an_earlier_pools() {
        use crate::block::{Block, BlockSpec};
        use crate::status::AllocationRecord;
        let record = AllocationRecord {
            pod: "default/web".into(),
            pod_uid: "u1".into(),
            interface: "eth0".into(),
            container_id: "c1".into(),
        };
        let spec = |pool_uid: &str| BlockSpec {
            pool: "test-ippool-6".into(),
            pool_uid: pool_uid.into(),
            cidr: "10.6.168.64/26".into(),
            node: "n1".into(),
            allocated_ips: Some(
                serde_json::to_string(
                    &[("10.6.168.65", &record)]
                        .into_iter()
                        .collect::<std::collections::BTreeMap<_, _>>(),
                )
                .unwrap(),
            ),
            allocated_ip_count: 1,
            last_allocated_ip: None,
        };
        let block = |uid: &str| Block::read("test-ippool-6-10-6-168-64-26", "1".into(), spec(uid)).unwrap();
        let mut pool = zone6();
        pool.metadata.uid = Some("p1".into());
        let error = admit_pool_deletion(&pool, &[block("p1")]).unwrap_err();
        assert!(
            error.to_string().contains("10.6.168.65 (pod default/web)"),
            "{error}"
        );
        assert!(admit_pool_deletion(&pool, &[block("p0")]).is_ok());
        let mut shrunk = pool.clone();
        shrunk.spec.ips = vec!["10.6.168.60-10.6.168.64".into()];
        let error =
            admit_pool(std::slice::from_ref(&pool), Some(&pool), &shrunk, &[block("p1")]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("10.6.168.65 is in use by pod default/web"),
            "{error}"
        );
    }
}
