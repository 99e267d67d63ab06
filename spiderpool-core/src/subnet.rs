//! Subnets in CIDR notation.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::range::{IpRange, IpSet, IpVersion, address_value};

/// Why a CIDR text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// No `/prefix` part.
    #[error("invalid subnet {text:?}: write it as address/prefix, for example 10.6.0.0/16")]
    MissingPrefix {
        /// The offending text.
        text: String,
    },
    /// The address part does not parse.
    #[error("invalid subnet {text:?}: {part:?} is not an IP address")]
    BadAddress {
        /// The whole text.
        text: String,
        /// The address part.
        part: String,
    },
    /// The prefix length is not a number within the family's bits.
    #[error("invalid subnet {text:?}: prefix length {part:?} must be a number from 0 to {max}")]
    BadPrefix {
        /// The whole text.
        text: String,
        /// The prefix part.
        part: String,
        /// 32 or 128.
        max: u32,
    },
    /// Host bits are set: the text is not the canonical network address.
    #[error("subnet {text} is not in canonical form: write {canonical}")]
    NotCanonical {
        /// The offending text.
        text: String,
        /// The same network written canonically.
        canonical: Subnet,
    },
}

/// A network in CIDR notation, held canonically: the host bits of the address are zero.
///
/// Parsing is strict, as `spec.subnet` requires: `10.6.1.0/16` is refused with the canonical
/// spelling in the message. [`Subnet::parse_loose`] accepts host bits, for route destinations.
///
/// ```
/// use spiderpool_core::Subnet;
/// let subnet: Subnet = "10.6.0.0/16".parse().unwrap();
/// assert!(subnet.contains("10.6.168.60".parse().unwrap()));
/// assert_eq!(subnet.prefix_len(), 16);
///
/// let err = "10.6.1.0/16".parse::<Subnet>().unwrap_err();
/// assert_eq!(err.to_string(), "subnet 10.6.1.0/16 is not in canonical form: write 10.6.0.0/16");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    version: IpVersion,
    network: u128,
    prefix_len: u8,
}

impl Subnet {
    /// Parses `address/prefix`, clearing host bits instead of refusing them.
    ///
    /// ```
    /// use spiderpool_core::Subnet;
    /// assert_eq!(Subnet::parse_loose("10.6.1.7/16").unwrap().to_string(), "10.6.0.0/16");
    /// ```
    pub fn parse_loose(text: &str) -> Result<Subnet, SubnetError> {
        Subnet::parse_parts(text).map(|(subnet, ..)| subnet)
    }

    /// The subnet `text` names, with the address and the prefix length as written.
    fn parse_parts(text: &str) -> Result<(Subnet, IpAddr, &str), SubnetError> {
        let (address_text, prefix_text) = text
            .split_once('/')
            .ok_or_else(|| SubnetError::MissingPrefix { text: text.into() })?;
        let address: IpAddr = address_text.parse().map_err(|_| SubnetError::BadAddress {
            text: text.into(),
            part: address_text.into(),
        })?;
        let version = IpVersion::of(address);
        let bad_prefix = || SubnetError::BadPrefix {
            text: text.into(),
            part: prefix_text.into(),
            max: version.bits(),
        };
        // Only plain decimal digits: u8's parser would also take "+16".
        if prefix_text.is_empty() || !prefix_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_prefix());
        }
        let prefix_len: u8 = prefix_text.parse().map_err(|_| bad_prefix())?;
        if u32::from(prefix_len) > version.bits() {
            return Err(bad_prefix());
        }
        let mask = Subnet::mask(version, prefix_len);
        let subnet = Subnet {
            version,
            network: address_value(address) & mask,
            prefix_len,
        };
        Ok((subnet, address, prefix_text))
    }

    /// The network bits of a prefix, within the family.
    fn mask(version: IpVersion, prefix_len: u8) -> u128 {
        let host_bits = version.bits() - u32::from(prefix_len);
        let all = version.max_value();
        if host_bits >= 128 {
            0
        } else {
            all & !((1u128 << host_bits) - 1)
        }
    }

    /// The family.
    pub fn version(&self) -> IpVersion {
        self.version
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.version.address(self.network)
    }

    fn last_value(&self) -> u128 {
        self.network | (self.version.max_value() & !Subnet::mask(self.version, self.prefix_len))
    }

    /// Every address of the subnet as a range, network and broadcast included.
    pub fn range(&self) -> IpRange {
        IpRange::from_bounds(self.version, self.network, self.last_value())
    }

    /// The subnet as a set of addresses.
    pub fn to_set(&self) -> IpSet {
        IpSet::from_ranges(self.version, [self.range()]).expect("a subnet range has its own family")
    }

    /// Whether `address` is inside the subnet.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.range().contains(address)
    }

    /// Whether every address of `range` is inside the subnet.
    pub fn contains_range(&self, range: &IpRange) -> bool {
        range.version() == self.version && {
            let (start, end) = range.bounds();
            self.network <= start && end <= self.last_value()
        }
    }

    /// Whether the two subnets share any address (one then contains the other).
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.version == other.version
            && self.network <= other.last_value()
            && other.network <= self.last_value()
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(text: &str) -> Result<Subnet, SubnetError> {
        let (subnet, address, prefix) = Subnet::parse_parts(text)?;
        // The standard library reads one spelling of an IPv4 address only; an IPv6 address
        // has many, of which the canonical one is what `Display` writes.
        let canonical = address_value(address) == subnet.network
            && (prefix == "0" || !prefix.starts_with('0'))
            && (address.is_ipv4() || subnet.is_spelled(text));
        if !canonical {
            return Err(SubnetError::NotCanonical {
                text: text.into(),
                canonical: subnet,
            });
        }
        Ok(subnet)
    }
}

impl Subnet {
    /// Whether `text` is the canonical spelling of the subnet, compared as the canonical text
    /// is written out, without allocating it.
    fn is_spelled(&self, text: &str) -> bool {
        struct Spelling<'a>(&'a [u8]);
        impl fmt::Write for Spelling<'_> {
            fn write_str(&mut self, part: &str) -> fmt::Result {
                let rest = self.0.strip_prefix(part.as_bytes()).ok_or(fmt::Error)?;
                self.0 = rest;
                Ok(())
            }
        }
        let mut spelling = Spelling(text.as_bytes());
        fmt::write(&mut spelling, format_args!("{self}")).is_ok() && spelling.0.is_empty()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix_len)
    }
}

/// A subnet is written as its canonical CIDR text.
impl serde::Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A subnet is read from canonical CIDR text only.
impl<'de> serde::Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Subnet, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_subnets_parse_and_print_unchanged() {
        for text in [
            "10.6.0.0/16",
            "0.0.0.0/0",
            "10.6.168.60/32",
            "fd00::/64",
            "::/0",
            "fd00::1/128",
        ] {
            assert_eq!(text.parse::<Subnet>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn non_canonical_subnets_are_refused_with_the_fix() {
        let err = "fd00::1/64".parse::<Subnet>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "subnet fd00::1/64 is not in canonical form: write fd00::/64"
        );
        // Leading zeros and upper case are not canonical either.
        for text in [
            "FD00::/64",
            "fd00:0::/64",
            "fd00::/064",
            "10.6.0.0/016",
            "10.6.0.0/00",
        ] {
            assert!(
                matches!(text.parse::<Subnet>(), Err(SubnetError::NotCanonical { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_subnets_name_the_bad_part() {
        assert!(matches!(
            "10.6.0.0".parse::<Subnet>(),
            Err(SubnetError::MissingPrefix { .. })
        ));
        assert_eq!(
            "10.6.0.0/33".parse::<Subnet>().unwrap_err().to_string(),
            "invalid subnet \"10.6.0.0/33\": prefix length \"33\" must be a number from 0 to 32"
        );
        assert!(matches!(
            "10.6.0.0/+1".parse::<Subnet>(),
            Err(SubnetError::BadPrefix { .. })
        ));
        assert!(matches!(
            "10.6.0/16".parse::<Subnet>(),
            Err(SubnetError::BadAddress { .. })
        ));
    }

    #[test]
    fn containment_and_overlap_follow_the_prefix() {
        let wide: Subnet = "10.6.0.0/16".parse().unwrap();
        let narrow: Subnet = "10.6.1.0/24".parse().unwrap();
        let other: Subnet = "10.7.0.0/16".parse().unwrap();
        assert!(wide.overlaps(&narrow) && narrow.overlaps(&wide));
        assert!(!wide.overlaps(&other));
        assert_eq!(wide.range().to_string(), "10.6.0.0-10.6.255.255");
        let everything: Subnet = "::/0".parse().unwrap();
        assert_eq!(everything.range().len(), u128::MAX);
        assert!(everything.contains("fd00::1".parse().unwrap()));
        assert!(!everything.contains("10.0.0.1".parse().unwrap()));
    }
}
