//! The annotations that name candidate pools, on pods and namespaces, and the routes a pod
//! adds to its interfaces.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::range::IpVersion;
use crate::subnet::Subnet;

/// Pod annotation naming the pools of the pod's interface: `{"ipv4": [..], "ipv6": [..]}`.
pub const POD_IPPOOL: &str = "ipam.spidernet.io/ippool";
/// Pod annotation naming pools per interface: `[{"interface": "eth0", "ipv4": [..], ..}, ..]`.
pub const POD_IPPOOLS: &str = "ipam.spidernet.io/ippools";
/// Pod annotation adding routes to the pod's interfaces:
/// `[{"interface": "eth0", "dst": "10.0.0.0/16", "gw": "10.6.0.1"}, ..]`.
pub const POD_ROUTES: &str = "ipam.spidernet.io/routes";
/// Namespace annotation: JSON list of default IPv4 pools for the namespace's pods.
pub const NAMESPACE_DEFAULT_IPV4: &str = "ipam.spidernet.io/default-ipv4-ippool";
/// Namespace annotation: JSON list of default IPv6 pools for the namespace's pods.
pub const NAMESPACE_DEFAULT_IPV6: &str = "ipam.spidernet.io/default-ipv6-ippool";

/// The value of [`POD_IPPOOL`]: candidate pools per family, tried in the written order.
/// Names may be globs (`*`, `?`, `[...]`).
///
/// ```
/// use spiderpool_core::PodIppool;
/// let value = PodIppool::parse(r#"{"ipv4": ["test-ippool-6", "test-ippool-7"]}"#).unwrap();
/// assert_eq!(value.ipv4, ["test-ippool-6", "test-ippool-7"]);
/// assert!(value.ipv6.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodIppool {
    /// The interface the pools are for; when absent, the interface being set up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// IPv4 candidate pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4: Vec<String>,
    /// IPv6 candidate pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6: Vec<String>,
}

/// One entry of [`POD_IPPOOLS`]: the candidate pools of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceIppools {
    /// The interface name; all entries name one, or none does.
    #[serde(default)]
    pub interface: String,
    /// IPv4 candidate pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4: Vec<String>,
    /// IPv6 candidate pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6: Vec<String>,
    /// Whether the interface gets no default route.
    #[serde(default)]
    pub cleangateway: bool,
}

/// An annotation whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: invalid value {value:?}: {reason}; expected for example {example}")]
pub struct AnnotationError {
    /// The annotation key.
    pub annotation: &'static str,
    /// The value as written.
    pub value: String,
    /// What is wrong.
    pub reason: String,
    /// A valid value of that annotation.
    pub example: &'static str,
}

const IPPOOL_EXAMPLE: &str = r#"{"ipv4": ["pool-a", "pool-b"], "ipv6": ["pool-c"]}"#;
const IPPOOLS_EXAMPLE: &str =
    r#"[{"interface": "eth0", "ipv4": ["pool-a"]}, {"interface": "net1", "ipv4": ["pool-b"]}]"#;
const LIST_EXAMPLE: &str = r#"["pool-a", "pool-b"]"#;
const ROUTES_EXAMPLE: &str = r#"[{"interface": "eth0", "dst": "10.0.0.0/16", "gw": "10.6.0.1"}]"#;

fn invalid(annotation: &'static str, value: &str, example: &'static str, reason: String) -> AnnotationError {
    AnnotationError {
        annotation,
        value: value.into(),
        reason,
        example,
    }
}

/// Every name must be non-empty.
fn check_names(names: &[String], field: &str) -> Result<(), String> {
    match names.iter().position(String::is_empty) {
        Some(index) => Err(format!("{field}[{index}] is an empty pool name")),
        None => Ok(()),
    }
}

impl PodIppool {
    /// Parses the annotation value.
    pub fn parse(value: &str) -> Result<PodIppool, AnnotationError> {
        let fail = |reason| invalid(POD_IPPOOL, value, IPPOOL_EXAMPLE, reason);
        let parsed: PodIppool = serde_json::from_str(value).map_err(|err| fail(err.to_string()))?;
        check_names(&parsed.ipv4, "ipv4").map_err(fail)?;
        check_names(&parsed.ipv6, "ipv6").map_err(fail)?;
        if parsed.interface.as_deref() == Some("") {
            return Err(fail(
                "interface is empty; name the interface or leave the field out".into(),
            ));
        }
        Ok(parsed)
    }
}

/// Parses the value of [`POD_IPPOOLS`].
///
/// Either every entry names its interface or none does; unnamed entries stand for `eth0`,
/// `net1`, `net2`, ... in order, the names Multus gives a pod's interfaces.
///
/// ```
/// use spiderpool_core::parse_pod_ippools;
/// let entries = parse_pod_ippools(r#"[{"ipv4": ["a"]}, {"ipv4": ["b"], "cleangateway": true}]"#).unwrap();
/// assert_eq!(entries[0].interface, "eth0");
/// assert_eq!(entries[1].interface, "net1");
/// assert!(parse_pod_ippools(r#"[{"interface": "eth0"}, {"ipv4": ["b"]}]"#).is_err());
/// ```
pub fn parse_pod_ippools(value: &str) -> Result<Vec<InterfaceIppools>, AnnotationError> {
    let fail = |reason| invalid(POD_IPPOOLS, value, IPPOOLS_EXAMPLE, reason);
    let mut entries: Vec<InterfaceIppools> =
        serde_json::from_str(value).map_err(|err| fail(err.to_string()))?;
    if entries.is_empty() {
        return Err(fail("the list is empty; give at least one interface".into()));
    }
    let named = entries.iter().filter(|e| !e.interface.is_empty()).count();
    if named != 0 && named != entries.len() {
        return Err(fail("name the interface in every entry or in none".into()));
    }
    for (index, entry) in entries.iter_mut().enumerate() {
        if entry.interface.is_empty() {
            entry.interface = if index == 0 {
                "eth0".into()
            } else {
                format!("net{index}")
            };
        }
        check_names(&entry.ipv4, &format!("[{index}].ipv4")).map_err(fail)?;
        check_names(&entry.ipv6, &format!("[{index}].ipv6")).map_err(fail)?;
    }
    for (index, entry) in entries.iter().enumerate() {
        if entries[..index].iter().any(|e| e.interface == entry.interface) {
            return Err(fail(format!("interface {} is listed twice", entry.interface)));
        }
    }
    Ok(entries)
}

/// Parses a namespace default-pool annotation: a JSON list of pool names.
///
/// ```
/// use spiderpool_core::{parse_pool_list, annotations::NAMESPACE_DEFAULT_IPV4};
/// assert_eq!(parse_pool_list(NAMESPACE_DEFAULT_IPV4, r#"["zone-6"]"#).unwrap(), ["zone-6"]);
/// assert!(parse_pool_list(NAMESPACE_DEFAULT_IPV4, "zone-6").is_err());
/// ```
pub fn parse_pool_list(annotation: &'static str, value: &str) -> Result<Vec<String>, AnnotationError> {
    let fail = |reason| invalid(annotation, value, LIST_EXAMPLE, reason);
    let names: Vec<String> = serde_json::from_str(value).map_err(|err| fail(err.to_string()))?;
    check_names(&names, "").map_err(fail)?;
    Ok(names)
}

/// One route of [`POD_ROUTES`]: a destination reached through a next hop on one of the pod's
/// interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRoute {
    /// The interface the next hop is on.
    pub interface: String,
    /// The destination.
    pub dst: Subnet,
    /// The next hop: within a subnet of the interface's addresses (checked when the
    /// interface's addresses are known).
    pub gw: IpAddr,
}

/// Parses the value of [`POD_ROUTES`].
///
/// ```
/// use spiderpool_core::annotations::parse_pod_routes;
/// let routes = parse_pod_routes(r#"[{"interface": "eth0", "dst": "10.0.0.0/16", "gw": "10.6.0.1"}]"#).unwrap();
/// assert_eq!(routes[0].dst.to_string(), "10.0.0.0/16");
/// let refused = parse_pod_routes(r#"[{"interface": "eth0", "dst": "10.0.0.0/16", "gw": "fd00::1"}]"#);
/// assert!(refused.unwrap_err().to_string().contains("route 0: gw fd00::1 is IPv6 and dst 10.0.0.0/16 IPv4"));
/// ```
pub fn parse_pod_routes(value: &str) -> Result<Vec<PodRoute>, AnnotationError> {
    let fail = |reason| invalid(POD_ROUTES, value, ROUTES_EXAMPLE, reason);
    let routes: Vec<PodRoute> = serde_json::from_str(value).map_err(|err| fail(err.to_string()))?;
    for (index, route) in routes.iter().enumerate() {
        if route.interface.is_empty() {
            return Err(fail(format!(
                "route {index}: interface is empty; name the pod's interface"
            )));
        }
        let (gw, dst) = (IpVersion::of(route.gw), route.dst.version());
        if gw != dst {
            return Err(fail(format!(
                "route {index}: gw {} is {gw} and dst {} {dst}; give a next hop of the destination's family",
                route.gw, route.dst
            )));
        }
    }
    Ok(routes)
}

/// The refusal of a route of the [`POD_ROUTES`] annotation `value` whose next hop lies outside
/// `subnets`, those of its interface's addresses.
pub(crate) fn route_off_link(value: &str, route: &PodRoute, subnets: &[Subnet]) -> AnnotationError {
    let subnets: Vec<String> = subnets.iter().map(Subnet::to_string).collect();
    invalid(
        POD_ROUTES,
        value,
        ROUTES_EXAMPLE,
        format!(
            "gw {} of the route to {} is outside the subnets of {} ({}); give a next hop on the interface's subnet",
            route.gw,
            route.dst,
            route.interface,
            subnets.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_annotation_with_its_line_breaks_parses() {
        let value = "{\n  \"ipv4\": [\"test-ippool-6\", \"test-ippool-7\"]\n}";
        let parsed = PodIppool::parse(value).unwrap();
        assert_eq!(parsed.ipv4, ["test-ippool-6", "test-ippool-7"]);
    }

    #[test]
    fn bad_ippool_values_name_the_annotation_and_the_cause() {
        let err = PodIppool::parse(r#"{"ipv4": "test-ippool-6"}"#).unwrap_err();
        assert_eq!(err.annotation, POD_IPPOOL);
        assert!(err.reason.contains("invalid type: string"), "{err}");
        assert!(
            err.to_string()
                .ends_with(r#"expected for example {"ipv4": ["pool-a", "pool-b"], "ipv6": ["pool-c"]}"#)
        );
        let err = PodIppool::parse(r#"{"ipv4s": ["a"]}"#).unwrap_err();
        assert!(err.reason.contains("unknown field `ipv4s`"), "{err}");
        let err = PodIppool::parse(r#"{"ipv4": ["a", ""]}"#).unwrap_err();
        assert_eq!(err.reason, "ipv4[1] is an empty pool name");
    }

    #[test]
    fn ippools_entries_are_checked_as_a_whole() {
        let reason = |value: &str| parse_pod_ippools(value).unwrap_err().reason;
        assert_eq!(reason("[]"), "the list is empty; give at least one interface");
        assert_eq!(
            reason(r#"[{"interface": "eth0", "ipv4": ["a"]}, {"interface": "eth0", "ipv4": ["b"]}]"#),
            "interface eth0 is listed twice"
        );
        let entries = parse_pod_ippools(
            r#"[{"interface": "eth0", "ipv4": ["a"]}, {"interface": "net1", "ipv6": ["b"], "cleangateway": true}]"#,
        )
        .unwrap();
        assert_eq!(entries[1].interface, "net1");
        assert!(entries[1].cleangateway && !entries[0].cleangateway);
    }
}
