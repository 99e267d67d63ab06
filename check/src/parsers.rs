//! Checks of every parser, for any input text: no panic, and the properties each parser
//! promises (round trips, errors naming the input, agreement with a naive reading).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::OnceLock;

use spiderpool_core::annotations::{NAMESPACE_DEFAULT_IPV4, NAMESPACE_DEFAULT_IPV6, POD_IPPOOL, POD_IPPOOLS};
use spiderpool_core::{
    AllocateError, AllocationState, Attachment, CatalogEntry, InMemoryState, IpRange, IpSet, IpVersion,
    LabelSelector, Labels, Placement, PodIppool, Pool, PoolCatalog, RangeError, Request, Resource,
    SelectionError, SelectorOperator, SpiderIPPool, Subnet, SubnetError, address_value, allocate, explain,
    next_free, parse_allocated_ips, parse_documents, parse_pod_ippools, parse_pool_list, parse_resource,
    pool_rows, pool_status, render_pool_table, usage,
};

/// A property that does not hold for an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which check.
    pub check: &'static str,
    /// The input, as text.
    pub input: String,
    /// What went wrong.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on input {:?}: {}", self.check, self.input, self.detail)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// `check` failed on `input`, for the reason `detail`.
    pub fn new(check: &'static str, input: &str, detail: String) -> Failure {
        Failure {
            check,
            input: input.to_owned(),
            detail,
        }
    }
}

/// Fails `check` on `input` unless `holds`.
pub(crate) fn ensure(
    check: &'static str,
    input: &str,
    holds: bool,
    detail: impl FnOnce() -> String,
) -> Result<(), Failure> {
    if holds {
        Ok(())
    } else {
        Err(Failure::new(check, input, detail()))
    }
}

/// How a range text should read, by the letter of its grammar: one address or `start-end`,
/// same family, `start <= end`, no `/`.
fn naive_range(text: &str) -> Option<(IpAddr, IpAddr)> {
    if text.is_empty() || text.contains('/') {
        return None;
    }
    let (start, end) = text.split_once('-').unwrap_or((text, text));
    let (start, end): (IpAddr, IpAddr) = (start.parse().ok()?, end.parse().ok()?);
    (start.is_ipv4() == end.is_ipv4() && address_value(start) <= address_value(end)).then_some((start, end))
}

/// Range text: parses exactly when the grammar allows, prints canonically, and the printed
/// text parses back to the same range; refusals quote the text.
pub fn check_range_text(text: &str) -> Result<(), Failure> {
    const CHECK: &str = "range text";
    let parsed = text.parse::<IpRange>();
    let naive = naive_range(text);
    ensure(CHECK, text, parsed.is_ok() == naive.is_some(), || {
        format!("core says {parsed:?}, the grammar says {naive:?}")
    })?;
    let range = match parsed {
        Ok(range) => range,
        Err(error) => {
            let message = error.to_string();
            return match error {
                RangeError::Empty => {
                    ensure(CHECK, text, text.is_empty(), || "Empty for non-empty text".into())
                }
                _ => ensure(CHECK, text, message.contains(&format!("{text:?}")), || {
                    format!("the error does not quote the text: {message}")
                }),
            };
        }
    };
    let (start, end) = naive.expect("checked above");
    ensure(CHECK, text, range.start() == start && range.end() == end, || {
        format!("bounds {}..{} differ from the text", range.start(), range.end())
    })?;
    let shown = range.to_string();
    let back = shown.parse::<IpRange>();
    ensure(CHECK, text, back == Ok(range), || {
        format!("{shown:?} parses to {back:?}")
    })?;
    ensure(
        CHECK,
        text,
        shown.parse::<IpRange>().map(|r| r.to_string()) == Ok(shown.clone()),
        || format!("printing {shown:?} again differs"),
    )?;
    ensure(CHECK, text, IpRange::new(start, end) == Ok(range), || {
        "IpRange::new differs".into()
    })?;
    ensure(CHECK, text, range.contains(start) && range.contains(end), || {
        "the range does not contain its ends".into()
    })?;
    let len = (address_value(end) - address_value(start)).saturating_add(1);
    ensure(CHECK, text, range.len() == len, || {
        format!("len {} instead of {len}", range.len())
    })?;
    let set = IpSet::from_ranges(range.version(), [range]);
    ensure(CHECK, text, set.as_ref().map(IpSet::len) == Ok(len), || {
        format!("set {set:?}")
    })?;
    let json = serde_json::to_string(&range).map_err(|e| Failure {
        check: CHECK,
        input: text.into(),
        detail: e.to_string(),
    })?;
    let from_json = serde_json::from_str::<IpRange>(&json).ok();
    ensure(CHECK, text, from_json == Some(range), || {
        format!("JSON {json} reads back as {from_json:?}")
    })
}

/// Subnet text: strict parsing accepts exactly the canonical texts that loose parsing reads,
/// and the canonical text round-trips.
pub fn check_subnet_text(text: &str) -> Result<(), Failure> {
    const CHECK: &str = "subnet text";
    let strict = text.parse::<Subnet>();
    let loose = Subnet::parse_loose(text);
    match (&strict, &loose) {
        (Ok(s), Ok(l)) => ensure(CHECK, text, s == l && s.to_string() == text, || {
            format!("strict {s}, loose {l}")
        })?,
        (Err(SubnetError::NotCanonical { canonical, .. }), Ok(l)) => {
            ensure(CHECK, text, canonical == l && l.to_string() != text, || {
                format!("refused as non-canonical, suggesting {canonical}, loose {l}")
            })?
        }
        (Err(a), Err(b)) => ensure(CHECK, text, a == b, || format!("strict {a:?}, loose {b:?}"))?,
        _ => {
            return Err(Failure {
                check: CHECK,
                input: text.into(),
                detail: format!("strict {strict:?}, loose {loose:?}"),
            });
        }
    }
    let Ok(subnet) = loose else { return Ok(()) };
    let shown = subnet.to_string();
    ensure(CHECK, text, shown.parse::<Subnet>() == Ok(subnet), || {
        format!("canonical text {shown:?} does not parse back")
    })?;
    let bits = subnet.version().bits();
    ensure(CHECK, text, u32::from(subnet.prefix_len()) <= bits, || {
        "prefix too long".into()
    })?;
    let host_bits = bits - u32::from(subnet.prefix_len());
    let size = if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    let network = address_value(subnet.network());
    ensure(
        CHECK,
        text,
        host_bits >= 128 || network.is_multiple_of(size),
        || format!("network {} has host bits set", subnet.network()),
    )?;
    let range = subnet.range();
    ensure(
        CHECK,
        text,
        range.start() == subnet.network() && range.len() == size,
        || format!("range {range} for {subnet}"),
    )?;
    ensure(
        CHECK,
        text,
        subnet.contains(range.start()) && subnet.contains(range.end()) && subnet.contains_range(&range),
        || "the subnet does not contain its own range".into(),
    )?;
    ensure(
        CHECK,
        text,
        subnet.to_set().len() == size && subnet.overlaps(&subnet),
        || "set or overlap wrong".into(),
    )
}

/// A request that `pool` should accept: its node, namespace, pod and attachment made to fit.
fn fitting_request(pool: &Pool, index: usize) -> Request {
    let mut request = Request::new(format!("fuzz-{index}"), "eth0");
    request.pod.uid = Some(format!("uid-{index}"));
    request.pod.name = format!("pod-{index}");
    let key = match pool.version() {
        IpVersion::V4 => "ipv4",
        IpVersion::V6 => "ipv6",
    };
    request.pod.annotations.insert(
        POD_IPPOOL.into(),
        serde_json::json!({ key: [pool.name()] }).to_string(),
    );
    match pool.node() {
        Placement::Named(names) => request.node.name = names[0].clone(),
        Placement::Selected(selector) => request.node.labels = selector.match_labels.clone(),
        Placement::Anywhere => request.node.name = "node".into(),
    }
    match pool.namespace() {
        Placement::Named(names) => request.pod.namespace = names[0].clone(),
        Placement::Selected(selector) => request.namespace.labels = selector.match_labels.clone(),
        Placement::Anywhere => request.pod.namespace = "default".into(),
    }
    if let Some(selector) = pool.pod_affinity() {
        request.pod.labels = selector.match_labels.clone();
    }
    if let Some(entry) = pool.multus_names().first() {
        let (namespace, name) = entry.split_once('/').unwrap_or(("kube-system", entry));
        request.network.attachment = Some(Attachment {
            namespace: namespace.into(),
            name: name.into(),
        });
    }
    request
}

/// Pool documents (YAML or JSON): whatever parses is validated, listed and reported without
/// panicking; valid pools keep their addresses inside their subnet, apart from each other,
/// and hand out only allocatable addresses, with counts that add up.
pub fn check_documents_text(text: &str) -> Result<(), Failure> {
    const CHECK: &str = "documents";
    let Ok(documents) = parse_documents(text) else {
        return Ok(());
    };
    for document in &documents {
        let Resource::IpPool(object) = &document.resource else {
            continue;
        };
        // The wire type round-trips through JSON.
        let value = serde_json::to_value(&**object).map_err(|e| Failure {
            check: CHECK,
            input: text.into(),
            detail: format!("serializing {}: {e}", object.metadata.name),
        })?;
        let back = parse_resource(value.clone());
        ensure(CHECK, text, back == Ok(Resource::IpPool(object.clone())), || {
            format!("{value} reads back as {back:?}")
        })?;
        if let Ok(pool) = Pool::from_object(object) {
            check_pool_shape(text, &pool)?;
        }
    }
    let catalog = PoolCatalog::from_documents(&documents);
    let refusals: Vec<String> = catalog.invalid().map(ToString::to_string).collect();
    ensure(CHECK, text, refusals.iter().all(|r| !r.is_empty()), || {
        "an empty refusal".into()
    })?;
    let pools: Vec<&Pool> = catalog.pools().collect();
    for pool in &pools {
        check_pool_shape(text, pool)?;
        let reserved = catalog.reserved().of(pool.version());
        ensure(CHECK, text, !pool.allocatable().intersects(reserved), || {
            format!("pool {} may hand out reserved addresses", pool.name())
        })?;
    }
    for (i, a) in pools.iter().enumerate().take(32) {
        for b in pools.iter().skip(i + 1).take(32) {
            ensure(CHECK, text, !a.addresses().intersects(b.addresses()), || {
                format!("pools {} and {} share addresses", a.name(), b.name())
            })?;
        }
    }
    let mut state = InMemoryState::new();
    let Ok(rows) = pool_rows(&catalog, &state);
    ensure(CHECK, text, rows.len() == catalog.entries().count(), || {
        "a pool lacks a row".into()
    })?;
    let _ = render_pool_table(&rows, true);
    for (index, pool) in pools.iter().enumerate().take(8) {
        let request = fitting_request(pool, index);
        let result = allocate(&catalog, &state, &request);
        let explained = explain(&catalog, &state, &request);
        let interfaces = |r: &Result<spiderpool_core::Plan, AllocateError>| {
            r.as_ref().map(|p| (p.interfaces.clone(), p.changes.clone())).ok()
        };
        ensure(
            CHECK,
            text,
            interfaces(&result) == interfaces(&explained.outcome),
            || {
                format!(
                    "allocate and explain disagree on {}: {result:?} / {:?}",
                    pool.name(),
                    explained.outcome
                )
            },
        )?;
        let Ok(plan) = result else { continue };
        for assigned in plan.interfaces.iter().flat_map(|i| &i.addresses) {
            let owner = catalog
                .pool(&assigned.pool)
                .map(|p| p.allocatable().contains(assigned.address));
            ensure(CHECK, text, owner == Some(true), || {
                format!(
                    "{} handed out from {} is not allocatable there",
                    assigned.address, assigned.pool
                )
            })?;
        }
        let applied = state.apply(&plan.changes);
        ensure(CHECK, text, applied.is_ok(), || {
            format!("writing the plan failed: {applied:?}")
        })?;
        let again = allocate(&catalog, &state, &request);
        ensure(
            CHECK,
            text,
            again
                .as_ref()
                .is_ok_and(|p| p.is_replay() && p.interface("eth0") == plan.interface("eth0")),
            || format!("asking again gave {again:?}"),
        )?;
    }
    for pool in &pools {
        let Ok(used) = usage(pool, &state);
        ensure(
            CHECK,
            text,
            u128::from(used.allocated) + used.free == used.allocatable,
            || format!("pool {}: {used:?}", pool.name()),
        )?;
        let Ok(next) = next_free(&state, pool);
        ensure(
            CHECK,
            text,
            next.is_none_or(|a| pool.allocatable().contains(a) && state.holder(pool.name(), a) == Ok(None)),
            || format!("pool {}: next free {next:?} is not free", pool.name()),
        )?;
        let Ok(status) = pool_status(pool, &state);
        let records = status.allocated_ips.as_deref().map(parse_allocated_ips);
        let count = records.as_ref().map_or(Ok(0), |r| r.as_ref().map(|m| m.len()));
        ensure(CHECK, text, count == Ok(used.allocated as usize), || {
            format!("pool {}: status {status:?}", pool.name())
        })?;
    }
    let Ok(rows) = pool_rows(&catalog, &state);
    let _ = render_pool_table(&rows, false);
    for (name, entry) in catalog.entries() {
        if let CatalogEntry::Invalid { error, .. } = entry {
            ensure(CHECK, text, error.name == name || name.is_empty(), || {
                format!("refusal of {name} names {}", error.name)
            })?;
        }
    }
    Ok(())
}

/// A valid pool: `allocatable ⊆ addresses ⊆ subnet`, gateway in the subnet and not handed out.
fn check_pool_shape(text: &str, pool: &Pool) -> Result<(), Failure> {
    const CHECK: &str = "documents";
    let subnet = pool.subnet().to_set();
    let addresses = pool.addresses();
    ensure(
        CHECK,
        text,
        addresses.difference(&subnet).is_empty() && pool.allocatable().difference(addresses).is_empty(),
        || {
            format!(
                "pool {}: addresses {addresses} escape subnet {}",
                pool.name(),
                pool.subnet()
            )
        },
    )?;
    ensure(CHECK, text, pool.total_count() == addresses.len(), || {
        "total count".into()
    })?;
    ensure(
        CHECK,
        text,
        pool.gateway()
            .is_none_or(|g| pool.subnet().contains(g) && !pool.allocatable().contains(g)),
        || format!("pool {}: gateway {:?} misplaced", pool.name(), pool.gateway()),
    )
}

/// The catalog of the network-zones seed scenario.
fn seed_catalog() -> &'static PoolCatalog {
    static CATALOG: OnceLock<PoolCatalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let documents =
            parse_documents(spiderpool_core::scenario::NETWORK_ZONES_YAML).expect("the seed YAML parses");
        PoolCatalog::from_documents(&documents)
    })
}

/// Annotation values: each parser refuses with its own annotation's name or returns names
/// that are never empty and that re-serialize to the same value; a request carrying the value
/// is refused for the annotation exactly when the parser refuses it.
pub fn check_annotation_text(text: &str) -> Result<(), Failure> {
    const CHECK: &str = "annotations";
    let ippool = PodIppool::parse(text);
    match &ippool {
        Ok(value) => {
            ensure(
                CHECK,
                text,
                value.ipv4.iter().chain(&value.ipv6).all(|n| !n.is_empty())
                    && value.interface.as_deref() != Some(""),
                || format!("ippool accepted an empty name: {value:?}"),
            )?;
            let json = serde_json::to_string(value).expect("serializes");
            let back = PodIppool::parse(&json);
            ensure(CHECK, text, back.as_ref() == Ok(value), || {
                format!("{json} reads back as {back:?}")
            })?;
        }
        Err(error) => ensure(
            CHECK,
            text,
            error.annotation == POD_IPPOOL && error.value == text,
            || format!("ippool error names {} / {:?}", error.annotation, error.value),
        )?,
    }
    let ippools = parse_pod_ippools(text);
    match &ippools {
        Ok(entries) => {
            let interfaces: BTreeSet<&str> = entries.iter().map(|e| e.interface.as_str()).collect();
            ensure(
                CHECK,
                text,
                !entries.is_empty()
                    && interfaces.len() == entries.len()
                    && !interfaces.contains("")
                    && entries
                        .iter()
                        .flat_map(|e| e.ipv4.iter().chain(&e.ipv6))
                        .all(|n| !n.is_empty()),
                || format!("ippools accepted {entries:?}"),
            )?;
            let json = serde_json::to_string(entries).expect("serializes");
            let back = parse_pod_ippools(&json);
            ensure(CHECK, text, back.as_ref() == Ok(entries), || {
                format!("{json} reads back as {back:?}")
            })?;
        }
        Err(error) => ensure(CHECK, text, error.annotation == POD_IPPOOLS, || {
            format!("ippools error names {}", error.annotation)
        })?,
    }
    let list = parse_pool_list(NAMESPACE_DEFAULT_IPV6, text);
    match &list {
        Ok(names) => {
            ensure(CHECK, text, names.iter().all(|n| !n.is_empty()), || {
                format!("list {names:?}")
            })?;
            let json = serde_json::to_string(names).expect("serializes");
            ensure(
                CHECK,
                text,
                parse_pool_list(NAMESPACE_DEFAULT_IPV6, &json).as_ref() == Ok(names),
                || format!("{json} does not read back"),
            )?;
        }
        Err(error) => ensure(CHECK, text, error.annotation == NAMESPACE_DEFAULT_IPV6, || {
            format!("list error names {}", error.annotation)
        })?,
    }
    let catalog = seed_catalog();
    let cases: [(&str, bool, bool); 3] = [
        (POD_IPPOOL, true, ippool.is_err()),
        (POD_IPPOOLS, true, ippools.is_err()),
        (
            NAMESPACE_DEFAULT_IPV4,
            false,
            parse_pool_list(NAMESPACE_DEFAULT_IPV4, text).is_err(),
        ),
    ];
    for (key, on_pod, refused) in cases {
        let mut request = Request::new("fuzz", "eth0");
        request.node.name = "controller-node-1".into();
        if on_pod {
            request.pod.annotations.insert(key.into(), text.into());
        } else {
            request.namespace.annotations.insert(key.into(), text.into());
        }
        let mut state = InMemoryState::new();
        let result = allocate(catalog, &state, &request);
        let annotation_error = matches!(
            &result,
            Err(AllocateError::Selection(SelectionError::Annotation(e))) if e.annotation == key
        );
        ensure(CHECK, text, annotation_error == refused, || {
            format!("{key}: parser refused: {refused}, allocation: {result:?}")
        })?;
        if let Ok(plan) = result {
            for assigned in plan.interfaces.iter().flat_map(|i| &i.addresses) {
                let allowed = catalog
                    .pool(&assigned.pool)
                    .map(|p| p.allocatable().contains(assigned.address));
                ensure(CHECK, text, allowed == Some(true), || {
                    format!("{key}: handed out {assigned}")
                })?;
            }
            let applied = state.apply(&plan.changes);
            ensure(CHECK, text, applied.is_ok(), || {
                format!("{key}: writing failed: {applied:?}")
            })?;
        }
    }
    Ok(())
}

/// Whether `selector` selects `labels`, by the letter of Kubernetes' definition.
pub fn naive_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    for (key, value) in &selector.match_labels {
        if labels.get(key) != Some(value) {
            return false;
        }
    }
    for requirement in &selector.match_expressions {
        let present = labels.get(&requirement.key);
        let listed = present.is_some_and(|v| requirement.values.iter().any(|w| w == v));
        let holds = match requirement.operator {
            SelectorOperator::In => listed,
            SelectorOperator::NotIn => !listed,
            SelectorOperator::Exists => present.is_some(),
            SelectorOperator::DoesNotExist => present.is_none(),
        };
        if !holds {
            return false;
        }
    }
    true
}

/// Label selector JSON: round-trips, matches as Kubernetes defines over label sets built from
/// the keys and values it names, and a pool with it as `nodeAffinity` is refused exactly when
/// validation finds problems.
pub fn check_selector_text(text: &str) -> Result<(), Failure> {
    const CHECK: &str = "selector";
    let Ok(selector) = serde_json::from_str::<LabelSelector>(text) else {
        return Ok(());
    };
    let errors = selector.validate();
    ensure(
        CHECK,
        text,
        errors.iter().all(|e| !e.to_string().is_empty()),
        || "empty error".into(),
    )?;
    let json = serde_json::to_string(&selector).expect("serializes");
    let back = serde_json::from_str::<LabelSelector>(&json);
    ensure(CHECK, text, back.as_ref().ok() == Some(&selector), || {
        format!("{json} reads back as {back:?}")
    })?;

    let mut keys: Vec<&str> = Vec::new();
    let mut values: Vec<&str> = vec!["zz-other"];
    for (key, value) in &selector.match_labels {
        keys.push(key);
        values.push(value);
    }
    for requirement in &selector.match_expressions {
        keys.push(&requirement.key);
        values.extend(requirement.values.iter().map(String::as_str));
    }
    keys.dedup();
    let keys: Vec<&str> = keys
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(4)
        .collect();
    let values: Vec<&str> = values
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(3)
        .collect();
    // Each key absent or set to one of the values: (values + 1) ^ keys label sets.
    let choices = values.len() + 1;
    let combinations = choices.pow(keys.len() as u32);
    for mut code in 0..combinations {
        let mut labels = Labels::new();
        for key in &keys {
            if let Some(value) = values.get(code % choices) {
                labels.insert((*key).to_string(), (*value).to_string());
            }
            code /= choices;
        }
        let (got, want) = (selector.matches(&labels), naive_matches(&selector, &labels));
        ensure(CHECK, text, got == want, || {
            format!("labels {labels:?}: matches {got}, expected {want}")
        })?;
        ensure(CHECK, text, !selector.is_empty() || got, || {
            "an empty selector refused labels".into()
        })?;
    }

    let object: Result<SpiderIPPool, _> = serde_json::from_value(serde_json::json!({
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": "fuzz"},
        "spec": {"subnet": "10.6.0.0/16", "nodeAffinity": selector},
    }));
    let object = object.map_err(|e| Failure {
        check: CHECK,
        input: text.into(),
        detail: format!("a pool with the selector does not read: {e}"),
    })?;
    let pool = Pool::from_object(&object);
    ensure(CHECK, text, pool.is_ok() == errors.is_empty(), || {
        format!("validation found {errors:?}, the pool is {pool:?}")
    })
}
