//! Checks of what crosses a trust boundary into the IPAM, for arbitrary input: a CNI call as a
//! runtime makes it (the environment with `CNI_ARGS`, the network configuration on stdin),
//! the node agent's wire request, and the allocation records read back from the API server
//! (pool statuses and `SpiderEndpoint`s). What the fuzz targets `cni_call`, `agent_call` and
//! `api_records` run, and the corpus replay with them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value;
use spiderpool_cni::cni::{Command, prev_result_addresses, version_json};
use spiderpool_cni::failure::Failure as CallFailure;
use spiderpool_cni::plugin::CniCall;
use spiderpool_cni::wire::AgentCall;
use spiderpool_core::gc::{self, ClusterView, GcPolicy, PodPhase, PodRecord};
use spiderpool_core::round::{Call, Outcome, Pools};
use spiderpool_core::{
    AllocationRecord, Change, HeldAddress, PodContext, PodRef, held_status, statefulset_keeps,
};
use spiderpool_k8s::facts::versioned_endpoint;
use spiderpool_k8s::{SpiderEndpoint, SpiderIPPool};

use crate::parsers::{Failure, ensure};
use crate::sim::Cluster;

/// The CNI codes a call refused while it is read may carry: incompatible version, invalid
/// environment, undecodable input, invalid configuration.
const PROTOCOL_CODES: [u32; 4] = [1, 4, 6, 7];

/// A refused call renders as the runtime reads it: a code of the protocol's, a message, and
/// the error JSON in the version asked for.
fn check_refusal(check: &'static str, input: &str, failure: &CallFailure) -> Result<(), Failure> {
    let rendered = failure.render();
    ensure(check, input, PROTOCOL_CODES.contains(&rendered.code), || {
        format!(
            "a call refused while read has code {}: {failure:?}",
            rendered.code
        )
    })?;
    ensure(check, input, !rendered.msg.is_empty(), || {
        format!("a refusal without a message: {failure:?}")
    })?;
    let json = rendered.to_json("1.0.0");
    ensure(
        check,
        input,
        json["code"] == rendered.code && json["msg"] == rendered.msg.as_str(),
        || format!("the error JSON does not carry the code and message: {json}"),
    )
}

/// A CNI call read from `text`: `NAME=VALUE` lines (the environment, `CNI_COMMAND` among
/// them, ADD when absent) up to the first empty line, then stdin.
///
/// What must hold: reading it never panics and needs no IO; a refusal has a protocol code
/// and a message; an accepted call's facts are the environment's (container ID, interface,
/// the pod of `CNI_ARGS`), pass the agent's own checks, cross the agent's wire unchanged, and
/// make the request they describe.
pub fn check_cni_call_text(text: &str) -> Result<(), Failure> {
    const CHECK: &str = "cni_call";
    let (head, stdin) = text.split_once("\n\n").unwrap_or((text, ""));
    let env: BTreeMap<&str, &str> = head.lines().filter_map(|line| line.split_once('=')).collect();
    let var = |name: &str| env.get(name).map(|value| (*value).to_owned());
    let command = match env
        .get("CNI_COMMAND")
        .copied()
        .unwrap_or("ADD")
        .parse::<Command>()
    {
        Ok(command) => command,
        Err(refused) => return check_refusal(CHECK, text, &CallFailure::from(refused)),
    };
    if command == Command::Version {
        let requested = serde_json::from_str::<Value>(stdin).ok().and_then(|config| {
            config
                .get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let answer = version_json(requested.as_deref());
        return ensure(CHECK, text, answer["supportedVersions"].is_array(), || {
            format!("VERSION answers without supportedVersions: {answer}")
        });
    }
    let call = match CniCall::read(command, &var, stdin.as_bytes()) {
        Ok(call) => call,
        Err(refused) => return check_refusal(CHECK, text, &refused),
    };
    let facts = &call.facts;
    let given = |name: &str| env.get(name).copied().filter(|value| !value.is_empty());
    if matches!(command, Command::Add | Command::Del | Command::Check) {
        ensure(
            CHECK,
            text,
            Some(facts.container_id.as_str()) == given("CNI_CONTAINERID"),
            || format!("facts name container {:?}", facts.container_id),
        )?;
        ensure(
            CHECK,
            text,
            Some(facts.interface.as_str()) == given("CNI_IFNAME"),
            || format!("facts name interface {:?}", facts.interface),
        )?;
        let line = serde_json::to_string(&AgentCall::Add { facts: facts.clone() }).expect("calls serialize");
        match AgentCall::parse(&line) {
            Ok(AgentCall::Add { facts: carried }) => ensure(CHECK, text, carried == *facts, || {
                format!("the agent reads other facts: {carried:?} for {facts:?}")
            })?,
            other => {
                return Err(Failure::new(
                    CHECK,
                    text,
                    format!("the agent refuses what the plugin accepted: {other:?}"),
                ));
            }
        }
    }
    if let Some(pod) = &facts.pod {
        let args = call_args(given("CNI_ARGS").unwrap_or_default());
        ensure(
            CHECK,
            text,
            args.get("K8S_POD_NAME").copied().unwrap_or_default() == pod.name,
            || format!("facts name pod {pod:?} for CNI_ARGS {:?}", given("CNI_ARGS")),
        )?;
    }
    let request = facts.request(PodContext::default());
    ensure(
        CHECK,
        text,
        request.container_id == facts.container_id && request.interface == facts.interface,
        || format!("the request of {facts:?} is {request:?}"),
    )?;
    if let (Command::Check, Some(prev)) = (command, &call.config.prev_result) {
        let _ = prev_result_addresses(prev);
    }
    Ok(())
}

/// `CNI_ARGS` as pairs: the last pair of a key counts, and an empty value counts as absent.
fn call_args(text: &str) -> BTreeMap<&str, &str> {
    let pairs: BTreeMap<&str, &str> = text.split(';').filter_map(|pair| pair.split_once('=')).collect();
    pairs.into_iter().filter(|(_, value)| !value.is_empty()).collect()
}

/// One line of the node agent's protocol, `text`, as the agent reads it.
///
/// What must hold: a refusal has a protocol code; an accepted call crosses the wire again
/// unchanged, and is served by the round on the simulation's cluster without panic: an ADD
/// answered holds one record per address for the call's sandbox and interface, committed by
/// the pod's endpoint, and is answered the same for its interface when made again; a DEL
/// leaves the sandbox's interface holding nothing.
pub fn check_agent_call_text(text: &str) -> Result<(), Failure> {
    const CHECK: &str = "agent_call";
    let call = match AgentCall::parse(text) {
        Ok(call) => call,
        Err(refused) => return check_refusal(CHECK, text, &CallFailure::from(refused)),
    };
    let again = serde_json::to_string(&call).expect("calls serialize");
    ensure(
        CHECK,
        text,
        AgentCall::parse(&again).as_ref() == Ok(&call),
        || format!("{again} does not read back as {call:?}"),
    )?;
    let Some(facts) = call.facts() else {
        return Ok(());
    };
    let mut cluster = agent_cluster();
    // What the call's pod (its UID in the cluster) holds through the sandbox's interface.
    let pod_uid = |cluster: &Cluster| {
        let name = facts
            .pod
            .as_ref()
            .map(|pod| pod.name.as_str())
            .unwrap_or_default();
        cluster
            .facts(name, "", "")
            .pod
            .and_then(|pod| pod.uid)
            .unwrap_or_default()
    };
    let sandbox_holds = |cluster: &Cluster| -> BTreeSet<(String, IpAddr)> {
        let uid = pod_uid(cluster);
        cluster
            .records()
            .into_iter()
            .filter(|(_, _, owner, container, interface)| {
                *owner == uid && *container == facts.container_id && *interface == facts.interface
            })
            .map(|(pool, address, ..)| (pool, address))
            .collect()
    };
    match &call {
        AgentCall::Add { facts } => {
            let first = cluster.serve(vec![Call::Add(facts.clone())]).remove(0);
            let Ok(Outcome::Added(plan)) = first else {
                return Ok(());
            };
            let answered: BTreeSet<(String, IpAddr)> = plan
                .interfaces
                .iter()
                .flat_map(|interface| interface.addresses.iter().map(|a| (a.pool.clone(), a.address)))
                .collect();
            ensure(CHECK, text, sandbox_holds(&cluster) == answered, || {
                format!("answered {answered:?}, recorded {:?}", sandbox_holds(&cluster))
            })?;
            let pod = facts
                .pod
                .as_ref()
                .map(|pod| pod.name.as_str())
                .unwrap_or_default();
            let committed = cluster
                .endpoint(pod)
                .map(|endpoint| endpoint.committed())
                .unwrap_or_default();
            ensure(CHECK, text, answered.is_subset(&committed), || {
                format!("answered {answered:?}, the endpoint of {pod} commits {committed:?}")
            })?;
            let replay = cluster.serve(vec![Call::Add(facts.clone())]).remove(0);
            ensure(
                CHECK,
                text,
                // What the plugin answers, the requested interface, is the same.
                matches!(&replay, Ok(Outcome::Added(again))
                    if again.interface(&facts.interface) == plan.interface(&facts.interface)),
                || format!("the ADD made again is answered {replay:?}, first {plan:?}"),
            )
        }
        AgentCall::Del { facts } => {
            // The attachment is the sandbox's interface of the pod UID the runtime gave, else of
            // the pod's UID now (a DEL naming another incarnation releases nothing of this one).
            let uid =
                (facts.pod.as_ref().and_then(|pod| pod.uid.clone())).unwrap_or_else(|| pod_uid(&cluster));
            // Served by the agent of the node the sandbox's pod runs on, which names its node.
            let mut served = facts.clone();
            if served.node.is_none() {
                served.node = cluster.node_of(&uid);
            }
            let _ = cluster.serve(vec![Call::Del(served)]).remove(0);
            let left: Vec<_> = cluster
                .records()
                .into_iter()
                .filter(|(_, _, owner, container, interface)| {
                    *owner == uid && *container == facts.container_id && *interface == facts.interface
                })
                .collect();
            ensure(CHECK, text, left.is_empty(), || {
                format!("after the DEL the attachment holds {left:?}")
            })
        }
        AgentCall::Held { .. } | AgentCall::Status => Ok(()),
    }
}

/// The simulation's cluster with what an agent call can meet: pod `web` (node `n1`, pools
/// `a4` then `b4`) holding an address through sandbox `s1` on `eth0`, pod `dual` (node `n2`,
/// `a4` and `a6`), StatefulSet pod `db-0` (node `n3`, `b4`), and pod `lost` of a node that
/// does not exist.
fn agent_cluster() -> Cluster {
    let mut cluster = Cluster::new();
    cluster.add_pod("web", "n1", r#"{"ipv4": ["a4", "b4"]}"#, None);
    cluster.add_pod("dual", "n2", r#"{"ipv4": ["a4"], "ipv6": ["a6"]}"#, None);
    cluster.add_pod("db-0", "n3", r#"{"ipv4": ["b4"]}"#, Some(("StatefulSet", "db")));
    cluster.scale("db", 1);
    cluster.add_pod("lost", "n9", r#"{"ipv4": ["m4"]}"#, None);
    let web = cluster.facts("web", "s1", "eth0");
    let _ = cluster.serve(vec![Call::Add(web)]);
    cluster
}

/// A list of API objects as `kubectl get -o json` or a watch hands them over (a JSON array of
/// objects, or an object with `items`), read by the adapter's types: `SpiderIPPool`s and
/// `SpiderEndpoint`s, other kinds ignored.
///
/// What must hold: reading never panics; pool statuses are read whole or refused naming the
/// pool; what is read loses no record (every entry of `allocatedIPs` is held, with its pod,
/// UID, interface and container); the status the adapter writes back for unchanged state reads
/// back to the same records and is a fixed point; an endpoint commits only what its pod holds,
/// round-trips, and keeps after `retain_held` only held addresses; and the collector never
/// releases a record a running pod's endpoint commits.
pub fn check_api_records_text(text: &str) -> Result<(), Failure> {
    const CHECK: &str = "api_records";
    let Ok(list) = serde_json::from_str::<Value>(text) else {
        return Ok(());
    };
    let items = match &list {
        Value::Array(items) => items.clone(),
        Value::Object(object) => object
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        _ => return Ok(()),
    };
    let kind = |item: &Value| {
        item.get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    // By name, the last of a name winning: the API server holds one object per name.
    let pools: BTreeMap<String, spiderpool_core::SpiderIPPool> = items
        .iter()
        .filter(|item| kind(item) == "SpiderIPPool")
        .filter_map(|item| serde_json::from_value::<SpiderIPPool>(item.clone()).ok())
        .map(|pool| (pool.metadata.name.clone().unwrap_or_default(), pool.to_core()))
        .collect();
    let pools: Vec<spiderpool_core::SpiderIPPool> = pools.into_values().collect();
    let endpoints: BTreeMap<PodRef, spiderpool_core::EndpointSpec> = items
        .iter()
        .filter(|item| kind(item) == "SpiderEndpoint")
        .filter_map(|item| serde_json::from_value::<SpiderEndpoint>(item.clone()).ok())
        .map(|endpoint| {
            let pod = PodRef {
                namespace: endpoint.metadata.namespace.clone().unwrap_or_default(),
                name: endpoint.metadata.name.clone().unwrap_or_default(),
            };
            (pod, versioned_endpoint(endpoint).object)
        })
        .collect();
    for spec in endpoints.values() {
        let json = serde_json::to_value(spec).expect("an endpoint serializes");
        let back: spiderpool_core::EndpointSpec = serde_json::from_value(json.clone()).map_err(|err| {
            Failure::new(
                CHECK,
                text,
                format!("an endpoint written as {json} does not read back: {err}"),
            )
        })?;
        ensure(CHECK, text, back == *spec, || {
            format!("{spec:?} reads back as {back:?}")
        })?;
    }
    let read = match Pools::read(pools.clone(), Vec::new()) {
        Ok(read) => read,
        Err(refused) => {
            return ensure(
                CHECK,
                text,
                pools.iter().any(|pool| pool.metadata.name == refused.pool),
                || {
                    format!(
                        "a refusal names pool {:?}, which was not read: {refused}",
                        refused.pool
                    )
                },
            );
        }
    };
    let held = read.held();
    for pool in &pools {
        check_records_kept(text, pool, &read)?;
    }
    let mut view = ClusterView::default();
    // What running pods' endpoints commit: the collector must keep it.
    let mut protected: BTreeSet<(String, IpAddr)> = BTreeSet::new();
    for (pod, spec) in &endpoints {
        let records: Vec<HeldAddress> = held
            .iter()
            .filter(|record| {
                record.holder.pod().as_ref() == Some(pod) && spec.speaks_for(record.holder.owner().id())
            })
            .cloned()
            .collect();
        let pairs: BTreeSet<(String, IpAddr)> = records.iter().map(|r| (r.pool.clone(), r.address)).collect();
        let commits = spec.commits(&records);
        ensure(CHECK, text, commits.is_subset(&pairs), || {
            format!("the endpoint of {pod} commits {commits:?}, its pod holds {pairs:?}")
        })?;
        // The pod runs with the endpoint's UID: its own records stay, and its predecessors'
        // too when its StatefulSet (present, with every replica) brings it back by name.
        let own: BTreeSet<(String, IpAddr)> = records
            .iter()
            .filter(|r| r.holder.owner().id() == spec.uid)
            .map(|r| (r.pool.clone(), r.address))
            .collect();
        let brought_back = spec
            .statefulset()
            .is_some_and(|set| statefulset_keeps(pod, set, Some(u32::MAX)));
        protected.extend(
            commits
                .into_iter()
                .filter(|pair| brought_back || own.contains(pair)),
        );
        let mut kept = spec.clone();
        kept.retain_held(&pairs);
        ensure(CHECK, text, kept.committed().is_subset(&pairs), || {
            format!(
                "after retain_held the endpoint of {pod} lists {:?}",
                kept.committed()
            )
        })?;
        view.pods.insert(
            pod.clone(),
            PodRecord {
                uid: spec.uid.clone(),
                node: spec.node.clone(),
                phase: PodPhase::Running,
                ..PodRecord::default()
            },
        );
        view.nodes.insert(spec.node.clone());
        // The set of a StatefulSet endpoint brings its pod back: every incarnation's
        // records it commits stay.
        if let Some(set) = spec.statefulset() {
            let set = PodRef {
                namespace: pod.namespace.clone(),
                name: set.to_owned(),
            };
            view.statefulsets.insert(set, u32::MAX);
        }
        view.endpoints.insert(pod.clone(), spec.clone());
    }
    let suspects = held.iter().map(|r| ((r.pool.clone(), r.address), 0)).collect();
    let sweep = gc::sweep(&held, &view, &suspects, 1_000_000, GcPolicy::default());
    for collected in &sweep.collected {
        let key = match &collected.change {
            Change::Release { pool, address, .. } => (pool.clone(), *address),
            other => {
                return Err(Failure::new(
                    CHECK,
                    text,
                    format!("the collector decided {other:?}"),
                ));
            }
        };
        ensure(CHECK, text, !protected.contains(&key), || {
            format!(
                "the collector releases {key:?}, which a running pod's endpoint commits ({})",
                collected.reason
            )
        })?;
    }
    Ok(())
}

/// Every record of `pool`'s `allocatedIPs` is held as written, and the status written back
/// for the state read reads back to the same state and is a fixed point.
fn check_records_kept(text: &str, pool: &spiderpool_core::SpiderIPPool, read: &Pools) -> Result<(), Failure> {
    const CHECK: &str = "api_records";
    let name = pool.metadata.name.as_str();
    let status = pool.status.clone().unwrap_or_default();
    let written: BTreeMap<String, AllocationRecord> = status
        .allocated_ips
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let rewritten = held_status(name, &read.state, status.total_ip_count).expect("the in-memory state reads");
    let records: BTreeMap<String, AllocationRecord> = rewritten
        .allocated_ips
        .as_deref()
        .map(|text| serde_json::from_str(text).expect("a written status reads"))
        .unwrap_or_default();
    let canonical: BTreeMap<String, &AllocationRecord> = written
        .iter()
        .filter_map(|(key, record)| Some((key.parse::<IpAddr>().ok()?.to_string(), record)))
        .collect();
    ensure(CHECK, text, canonical.len() == written.len(), || {
        format!(
            "pool {name}: {} records written, {} addresses",
            written.len(),
            canonical.len()
        )
    })?;
    for (address, record) in &canonical {
        let kept = records.get(address);
        ensure(CHECK, text, kept == Some(*record), || {
            format!("pool {name}: the record of {address} {record:?} is written back as {kept:?}")
        })?;
    }
    ensure(CHECK, text, records.len() == canonical.len(), || {
        format!(
            "pool {name}: {} records read, {} written back",
            canonical.len(),
            records.len()
        )
    })?;
    if let Some(cursor) = status.last_allocated_ip.as_deref() {
        let cursor: IpAddr = cursor.parse().map_err(|_| {
            Failure::new(
                CHECK,
                text,
                format!("pool {name}: cursor {cursor:?} was accepted"),
            )
        })?;
        ensure(
            CHECK,
            text,
            rewritten.last_allocated_ip == Some(cursor.to_string()),
            || {
                format!(
                    "pool {name}: cursor {cursor} is written back as {:?}",
                    rewritten.last_allocated_ip
                )
            },
        )?;
    }
    let mut again = pool.clone();
    again.status = Some(rewritten.clone());
    let reread = Pools::read(vec![again], Vec::new()).map_err(|err| {
        Failure::new(
            CHECK,
            text,
            format!("pool {name}: the status written back is refused: {err}"),
        )
    })?;
    let fixed =
        held_status(name, &reread.state, rewritten.total_ip_count).expect("the in-memory state reads");
    ensure(CHECK, text, fixed == rewritten, || {
        format!("pool {name}: writing back is not a fixed point: {rewritten:?} then {fixed:?}")
    })
}
