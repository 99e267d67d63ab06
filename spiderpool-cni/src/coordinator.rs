//! The `coordinator` meta-plugin's configuration: Spiderpool's keys, so that an existing
//! NetworkAttachmentDefinition chaining `coordinator` after its main plugin keeps working.
//!
//! The keys sit at the top level of the plugin's entry in the conflist, as Spiderpool's do.
//! Unknown keys are ignored, as CNI conventions ask; a known key with a value that cannot be
//! used is refused with code 7, naming the key and the fix ([`ProtocolError::config`]).
//! Defaults are Spiderpool's (`hostRuleTable` 500, `podDefaultCniNic` `eth0`, detection
//! every second, three tries, three seconds each).

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use spiderpool_core::Subnet;

use crate::cni::{ProtocolError, check_interface_name};

/// How the coordinator ties the pod's interfaces to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinatorMode {
    /// Underlay when the pod's first interface (`podDefaultCniNic`) is the one being added,
    /// overlay otherwise: what Spiderpool decides when it is not told.
    Auto,
    /// The pod's interfaces are all underlay: a veth pair to the node carries what must
    /// reach the node (its addresses, `serviceCIDR`, `hijackCIDR`).
    Underlay,
    /// An underlay interface beside an overlay first interface: routes are tuned so that
    /// replies leave the way requests came.
    Overlay,
    /// Nothing is done; the previous result is passed on.
    Disable,
}

/// How the pod's address is probed for another holder, and its gateway for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectOptions {
    /// Probes at most, the first included.
    pub retries: u32,
    /// The wait between two probes.
    pub interval: Duration,
    /// How long one probe waits for an answer.
    pub timeout: Duration,
}

impl Default for DetectOptions {
    fn default() -> DetectOptions {
        DetectOptions {
            retries: 3,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        }
    }
}

/// An `rp_filter` setting: left as the system has it, or 0 (off), 1 (strict), 2 (loose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpFilter {
    /// Negative in the configuration: not touched.
    Unchanged,
    /// The value to write.
    Set(u8),
}

/// The coordinator's configuration, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// `mode`.
    pub mode: CoordinatorMode,
    /// `podDefaultCniNic`: the pod's first interface (default `eth0`).
    pub pod_default_cni_nic: String,
    /// `podDefaultRouteNic`: the interface holding the pod's default route; by default the
    /// first one that has a gateway.
    pub pod_default_route_nic: Option<String>,
    /// `tunePodRoutes`: give each interface its own routing table, so that replies leave the
    /// interface the request came in on (default true).
    pub tune_pod_routes: bool,
    /// `serviceCIDR`: the cluster's Service ranges, reached through the node.
    pub service_cidr: Vec<Subnet>,
    /// `overlayPodCIDR`: the overlay's pod ranges, reached through the node.
    pub overlay_pod_cidr: Vec<Subnet>,
    /// `hijackCIDR`: further ranges the pod reaches through its node.
    pub hijack_cidr: Vec<Subnet>,
    /// `hostRuleTable`: the node's routing table for routes to pods (default 500).
    pub host_rule_table: u32,
    /// `hostRPFilter`: the node-side veth's `rp_filter` (default 0).
    pub host_rp_filter: RpFilter,
    /// `podRPFilter`: the pod's interfaces' `rp_filter` (default 0).
    pub pod_rp_filter: RpFilter,
    /// `txQueueLen`: the veth's transmit queue length; 0 keeps the kernel's.
    pub tx_queue_len: u32,
    /// `detectGateway`: probe the pool's gateway from the pod's interface before answering.
    pub detect_gateway: bool,
    /// `detectIPConflict`: probe the pod's address for another holder on its segment.
    pub detect_ip_conflict: bool,
    /// `detectOptions`.
    pub detect_options: DetectOptions,
    /// `podMACPrefix`: the two first bytes of the pod interface's MAC, the four others being
    /// the last four bytes of its address.
    pub pod_mac_prefix: Option<[u8; 2]>,
    /// `vethLinkAddress`: a link-local address for the pod's `veth0`.
    pub veth_link_address: Option<IpAddr>,
}

/// The keys as written, before they are checked.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Written {
    mode: Option<String>,
    pod_default_cni_nic: Option<String>,
    pod_default_route_nic: Option<String>,
    tune_pod_routes: Option<bool>,
    #[serde(rename = "serviceCIDR")]
    service_cidr: Option<Vec<String>>,
    #[serde(rename = "overlayPodCIDR")]
    overlay_pod_cidr: Option<Vec<String>>,
    #[serde(rename = "hijackCIDR")]
    hijack_cidr: Option<Vec<String>>,
    host_rule_table: Option<i64>,
    #[serde(rename = "hostRPFilter")]
    host_rp_filter: Option<i64>,
    #[serde(rename = "podRPFilter")]
    pod_rp_filter: Option<i64>,
    tx_queue_len: Option<i64>,
    detect_gateway: Option<bool>,
    #[serde(rename = "detectIPConflict")]
    detect_ip_conflict: Option<bool>,
    detect_options: Option<WrittenDetectOptions>,
    #[serde(rename = "podMACPrefix")]
    pod_mac_prefix: Option<String>,
    veth_link_address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WrittenDetectOptions {
    retries: Option<i64>,
    interval: Option<String>,
    timeout: Option<String>,
}

impl CoordinatorConfig {
    /// Reads the coordinator's keys from its entry of the network configuration.
    ///
    /// ```
    /// use spiderpool_cni::coordinator::{CoordinatorConfig, CoordinatorMode};
    /// let entry = serde_json::json!({
    ///     "type": "coordinator", "mode": "underlay", "serviceCIDR": ["10.233.0.0/18"],
    ///     "detectOptions": {"retries": 5, "interval": "100ms"}, "somethingElse": 1
    /// });
    /// let config = CoordinatorConfig::parse(&entry).unwrap();
    /// assert_eq!(config.mode, CoordinatorMode::Underlay);
    /// assert_eq!(config.host_rule_table, 500);
    /// assert_eq!(config.detect_options.retries, 5);
    ///
    /// let refused = CoordinatorConfig::parse(&serde_json::json!({"hostRuleTable": 254})).unwrap_err();
    /// assert!(refused.msg.starts_with("hostRuleTable: 254 is the kernel's main table"));
    /// ```
    pub fn parse(entry: &Value) -> Result<CoordinatorConfig, ProtocolError> {
        let written: Written = serde_path_to_error::deserialize(entry).map_err(|err| {
            ProtocolError::config(
                format!("{}: {}", err.path(), err.inner()),
                "fix the coordinator's entry of the network configuration",
            )
        })?;
        let defaults = DetectOptions::default();
        let detect = written.detect_options.unwrap_or_default();
        Ok(CoordinatorConfig {
            mode: mode(written.mode.as_deref())?,
            pod_default_cni_nic: interface_name("podDefaultCniNic", written.pod_default_cni_nic)?
                .unwrap_or_else(|| "eth0".into()),
            pod_default_route_nic: interface_name("podDefaultRouteNic", written.pod_default_route_nic)?,
            tune_pod_routes: written.tune_pod_routes.unwrap_or(true),
            service_cidr: subnets("serviceCIDR", written.service_cidr)?,
            overlay_pod_cidr: subnets("overlayPodCIDR", written.overlay_pod_cidr)?,
            hijack_cidr: subnets("hijackCIDR", written.hijack_cidr)?,
            host_rule_table: host_rule_table(written.host_rule_table)?,
            host_rp_filter: rp_filter("hostRPFilter", written.host_rp_filter)?,
            pod_rp_filter: rp_filter("podRPFilter", written.pod_rp_filter)?,
            tx_queue_len: match written.tx_queue_len {
                None => 0,
                Some(length) => u32::try_from(length).map_err(|_| {
                    ProtocolError::config(
                        format!("txQueueLen: {length} is not a queue length"),
                        "write a length from 0 (the kernel's default) to 4294967295",
                    )
                })?,
            },
            detect_gateway: written.detect_gateway.unwrap_or(false),
            detect_ip_conflict: written.detect_ip_conflict.unwrap_or(false),
            detect_options: DetectOptions {
                retries: match detect.retries {
                    None => defaults.retries,
                    Some(retries) => u32::try_from(retries).ok().filter(|&r| r >= 1).ok_or_else(|| {
                        ProtocolError::config(
                            format!("detectOptions.retries: {retries} probes cannot be made"),
                            "write how many probes to make, at least 1 (default 3)",
                        )
                    })?,
                },
                interval: duration("detectOptions.interval", detect.interval, defaults.interval)?,
                timeout: duration("detectOptions.timeout", detect.timeout, defaults.timeout)?,
            },
            pod_mac_prefix: mac_prefix(written.pod_mac_prefix.as_deref())?,
            veth_link_address: match written.veth_link_address.as_deref() {
                None | Some("") => None,
                Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
                    ProtocolError::config(
                        format!("vethLinkAddress: {text:?} is not an IP address"),
                        "write a link-local address such as 169.254.200.1, or leave it out",
                    )
                })?),
            },
        })
    }
}

fn mode(text: Option<&str>) -> Result<CoordinatorMode, ProtocolError> {
    Ok(match text {
        None | Some("") | Some("auto") => CoordinatorMode::Auto,
        Some("underlay") => CoordinatorMode::Underlay,
        Some("overlay") => CoordinatorMode::Overlay,
        Some("disable") => CoordinatorMode::Disable,
        Some(other) => {
            return Err(ProtocolError::config(
                format!("mode: {other:?} is not a coordinator mode"),
                "write auto, underlay, overlay or disable",
            ));
        }
    })
}

/// An interface name as [`check_interface_name`] allows it; absent or empty is none.
fn interface_name(key: &str, name: Option<String>) -> Result<Option<String>, ProtocolError> {
    let Some(name) = name.filter(|name| !name.is_empty()) else {
        return Ok(None);
    };
    // A key of the configuration, not the runtime's environment: code 7.
    check_interface_name(key, &name).map_err(|error| ProtocolError::config(error.msg, error.details))?;
    Ok(Some(name))
}

fn subnets(key: &str, written: Option<Vec<String>>) -> Result<Vec<Subnet>, ProtocolError> {
    written
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(index, text)| {
            text.trim().parse::<Subnet>().map_err(|err| {
                ProtocolError::config(
                    format!("{key}[{index}]: {err}"),
                    "write each range in CIDR form, such as 10.233.0.0/18 or fd00:10:233::/112",
                )
            })
        })
        .collect()
}

fn host_rule_table(table: Option<i64>) -> Result<u32, ProtocolError> {
    let Some(table) = table else { return Ok(500) };
    let reserved = match table {
        0 => Some("the unspecified table"),
        253 => Some("the kernel's default table"),
        254 => Some("the kernel's main table"),
        255 => Some("the kernel's local table"),
        _ => None,
    };
    match (reserved, u32::try_from(table)) {
        (None, Ok(table)) => Ok(table),
        (Some(what), _) => Err(ProtocolError::config(
            format!("hostRuleTable: {table} is {what}"),
            "write a table of its own for the routes to pods, such as 500 (the default)",
        )),
        (None, Err(_)) => Err(ProtocolError::config(
            format!("hostRuleTable: {table} is not a routing table"),
            "write a table from 1 to 4294967295 other than 253, 254 and 255, such as 500",
        )),
    }
}

fn rp_filter(key: &str, value: Option<i64>) -> Result<RpFilter, ProtocolError> {
    match value {
        None => Ok(RpFilter::Set(0)),
        Some(negative) if negative < 0 => Ok(RpFilter::Unchanged),
        Some(value @ 0..=2) => Ok(RpFilter::Set(value as u8)),
        Some(other) => Err(ProtocolError::config(
            format!("{key}: {other} is not an rp_filter setting"),
            "write 0 (off), 1 (strict), 2 (loose), or -1 to leave the system's setting",
        )),
    }
}

/// A duration as Go writes them, which Spiderpool's configurations use: one or more numbers,
/// each with a unit of `ns`, `us` (or `µs`), `ms`, `s`, `m` or `h` (`10ms`, `1.5s`, `1m30s`).
fn duration(key: &str, text: Option<String>, default: Duration) -> Result<Duration, ProtocolError> {
    let Some(text) = text.filter(|text| !text.is_empty()) else {
        return Ok(default);
    };
    let refused = || {
        ProtocolError::config(
            format!("{key}: {text:?} is not a duration"),
            "write a positive duration with its unit, such as 100ms, 1s or 1m30s",
        )
    };
    let mut total = 0f64;
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().map_err(|_| refused())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(refused()),
        };
        rest = &rest[unit_end..];
        total += number * seconds;
    }
    match Duration::try_from_secs_f64(total) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(refused()),
    }
}

/// Two bytes as `0a:1b` (or `0a-1b`); the first must not have the multicast bit, or every
/// pod's MAC would be a group address.
fn mac_prefix(text: Option<&str>) -> Result<Option<[u8; 2]>, ProtocolError> {
    let Some(text) = text.filter(|text| !text.is_empty()) else {
        return Ok(None);
    };
    let refused = |why: &str| {
        ProtocolError::config(
            format!("podMACPrefix: {text:?} {why}"),
            "write two bytes in hex with an even first byte, such as 0a:1b (a locally administered prefix)",
        )
    };
    let bytes: Vec<&str> = text.split([':', '-']).collect();
    let [first, second] = bytes.as_slice() else {
        return Err(refused("is not two bytes"));
    };
    let byte = |part: &str| {
        (part.len() == 2)
            .then(|| u8::from_str_radix(part, 16).ok())
            .flatten()
            .ok_or_else(|| refused("is not two bytes in hex"))
    };
    let prefix = [byte(first)?, byte(second)?];
    if prefix[0] & 1 == 1 {
        return Err(refused("has the multicast bit set in its first byte"));
    }
    Ok(Some(prefix))
}

/// The MAC of a pod's interface under `podMACPrefix`: the prefix, then the four bytes of its
/// IPv4 address, or the last four of its IPv6 address (as Spiderpool derives it), so that a
/// pod keeping its address keeps its MAC and the segment's switches their tables.
///
/// ```
/// use spiderpool_cni::coordinator::pod_mac;
/// let mac = pod_mac([0x0a, 0x1b], "10.6.168.60".parse().unwrap());
/// assert_eq!(mac, [0x0a, 0x1b, 10, 6, 168, 60]);
/// ```
pub fn pod_mac(prefix: [u8; 2], address: IpAddr) -> [u8; 6] {
    let tail = match address {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let octets = v6.octets();
            [octets[12], octets[13], octets[14], octets[15]]
        }
    };
    [prefix[0], prefix[1], tail[0], tail[1], tail[2], tail[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(entry: Value) -> String {
        let error = CoordinatorConfig::parse(&entry).unwrap_err();
        format!("{} / {}", error.msg, error.details)
    }

    #[test]
    fn a_pods_mac_follows_its_address_in_either_family() {
        let v6 = pod_mac([0x0a, 0x1b], "fd00:6::a8:3c".parse().unwrap());
        assert_eq!(v6, [0x0a, 0x1b, 0x00, 0xa8, 0x00, 0x3c]);
        let (one, other) = (
            pod_mac([0x0a, 0x1b], "10.6.168.60".parse().unwrap()),
            pod_mac([0x0a, 0x1b], "10.6.168.61".parse().unwrap()),
        );
        assert_ne!(one, other, "two addresses, two MACs");
        assert_eq!(one[0] & 1, 0, "a unicast MAC");
    }

    #[test]
    fn an_entry_without_keys_gets_spiderpools_defaults() {
        let config = CoordinatorConfig::parse(&json!({"type": "coordinator"})).unwrap();
        assert_eq!(config.mode, CoordinatorMode::Auto);
        assert_eq!(config.pod_default_cni_nic, "eth0");
        assert_eq!(config.pod_default_route_nic, None);
        assert!(config.tune_pod_routes);
        assert_eq!(config.host_rule_table, 500);
        assert_eq!(config.host_rp_filter, RpFilter::Set(0));
        assert_eq!(config.detect_options, DetectOptions::default());
        assert!(!config.detect_gateway && !config.detect_ip_conflict);
        assert_eq!(config.pod_mac_prefix, None);
    }

    #[test]
    fn spiderpools_keys_are_read() {
        let config = CoordinatorConfig::parse(&json!({
            "type": "coordinator", "mode": "overlay", "podDefaultCniNic": "eth0",
            "podDefaultRouteNic": "net1", "tunePodRoutes": false,
            "serviceCIDR": ["10.233.0.0/18", "fd00:10:233::/116"], "overlayPodCIDR": ["10.222.0.0/16"],
            "hijackCIDR": [" 169.254.25.10/32 "], "hostRuleTable": 600, "hostRPFilter": -1,
            "podRPFilter": 2, "txQueueLen": 1000, "detectGateway": true, "detectIPConflict": true,
            "detectOptions": {"retries": 2, "interval": "10ms", "timeout": "1m30s"},
            "podMACPrefix": "0a:1b", "vethLinkAddress": "169.254.200.1",
            "logOptions": {"logLevel": "debug"}
        }))
        .unwrap();
        assert_eq!(config.mode, CoordinatorMode::Overlay);
        assert_eq!(config.pod_default_route_nic.as_deref(), Some("net1"));
        assert!(!config.tune_pod_routes);
        assert_eq!(config.service_cidr.len(), 2);
        assert_eq!(config.hijack_cidr[0].to_string(), "169.254.25.10/32");
        assert_eq!(config.host_rule_table, 600);
        assert_eq!(config.host_rp_filter, RpFilter::Unchanged);
        assert_eq!(config.pod_rp_filter, RpFilter::Set(2));
        assert_eq!(config.tx_queue_len, 1000);
        assert!(config.detect_gateway && config.detect_ip_conflict);
        assert_eq!(
            config.detect_options,
            DetectOptions {
                retries: 2,
                interval: Duration::from_millis(10),
                timeout: Duration::from_secs(90),
            }
        );
        assert_eq!(config.pod_mac_prefix, Some([0x0a, 0x1b]));
        assert_eq!(config.veth_link_address, Some("169.254.200.1".parse().unwrap()));
    }

    #[test]
    fn a_value_that_cannot_be_used_is_refused_naming_its_key_and_the_fix() {
        let cases = [
            (
                json!({"mode": "bridge"}),
                "mode: \"bridge\" is not a coordinator mode / write auto",
            ),
            (
                json!({"serviceCIDR": ["10.233.0.0/18", "10.233.0.1/18"]}),
                "serviceCIDR[1]: ",
            ),
            (
                json!({"hostRuleTable": 255}),
                "hostRuleTable: 255 is the kernel's local table",
            ),
            (
                json!({"hostRuleTable": -3}),
                "hostRuleTable: -3 is not a routing table",
            ),
            (
                json!({"podRPFilter": 3}),
                "podRPFilter: 3 is not an rp_filter setting / write 0",
            ),
            (
                json!({"detectOptions": {"retries": 0}}),
                "detectOptions.retries: 0 probes",
            ),
            (
                json!({"detectOptions": {"interval": "1x"}}),
                "detectOptions.interval: \"1x\" is not a duration",
            ),
            (
                json!({"detectOptions": {"timeout": "0s"}}),
                "detectOptions.timeout: \"0s\" is not a duration",
            ),
            (
                json!({"podMACPrefix": "01:1b"}),
                "podMACPrefix: \"01:1b\" has the multicast bit set",
            ),
            (
                json!({"podMACPrefix": "0a1b"}),
                "podMACPrefix: \"0a1b\" is not two bytes",
            ),
            (
                json!({"podDefaultRouteNic": "a-very-long-interface"}),
                "podDefaultRouteNic: \"a-very-long",
            ),
            (
                json!({"vethLinkAddress": "link"}),
                "vethLinkAddress: \"link\" is not an IP address",
            ),
            (json!({"txQueueLen": -1}), "txQueueLen: -1 is not a queue length"),
            (
                json!({"tunePodRoutes": "yes"}),
                "tunePodRoutes: invalid type: string \"yes\", expected a boolean",
            ),
        ];
        for (entry, expected) in cases {
            let message = refused(entry.clone());
            assert!(message.starts_with(expected), "{entry}: {message}");
        }
        let error = CoordinatorConfig::parse(&json!({"mode": "bridge"})).unwrap_err();
        assert_eq!(error.breach, crate::cni::Breach::InvalidConfig, "code 7");
    }
}
