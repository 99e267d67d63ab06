//! IP families, address ranges and address sets.
//!
//! Every address is handled as a `u128` inside its family, so IPv4 and IPv6 share one
//! implementation. The types here keep their invariants by construction: an [`IpRange`] is
//! never inverted and never mixes families, and an [`IpSet`] is always a sorted list of
//! disjoint, non-adjacent ranges of one family. Their size is the number of ranges, never the
//! number of addresses, so a `/8` IPv4 or a `/64` IPv6 range costs the same as a `/30`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IP family: 4 or 6, and nothing else.
///
/// Serializes as the number `4` or `6`, the form of `spec.ipVersion`.
///
/// ```
/// use spiderpool_core::IpVersion;
/// let v: IpVersion = serde_json::from_str("6").unwrap();
/// assert_eq!(v, IpVersion::V6);
/// assert!(serde_json::from_str::<IpVersion>("5").is_err());
/// assert_eq!(IpVersion::of("10.6.0.1".parse().unwrap()), IpVersion::V4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpVersion {
    /// Both families, IPv4 first.
    pub const ALL: [IpVersion; 2] = [IpVersion::V4, IpVersion::V6];

    /// The family of an address.
    pub fn of(address: IpAddr) -> IpVersion {
        match address {
            IpAddr::V4(_) => IpVersion::V4,
            IpAddr::V6(_) => IpVersion::V6,
        }
    }

    /// The number written in `spec.ipVersion`: 4 or 6.
    pub fn number(self) -> u8 {
        match self {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        }
    }

    /// Parses the number written in `spec.ipVersion`.
    pub fn from_number(number: i64) -> Option<IpVersion> {
        match number {
            4 => Some(IpVersion::V4),
            6 => Some(IpVersion::V6),
            _ => None,
        }
    }

    /// Address length in bits: 32 or 128.
    pub fn bits(self) -> u32 {
        match self {
            IpVersion::V4 => 32,
            IpVersion::V6 => 128,
        }
    }

    /// The highest address of the family, as an integer.
    pub fn max_value(self) -> u128 {
        match self {
            IpVersion::V4 => u128::from(u32::MAX),
            IpVersion::V6 => u128::MAX,
        }
    }

    /// The address of this family with integer value `value`, or `None` when `value` exceeds
    /// [`Self::max_value`]: the inverse of [`address_value`].
    ///
    /// ```
    /// use spiderpool_core::{IpVersion, address_value};
    /// let address = "10.6.168.60".parse().unwrap();
    /// assert_eq!(IpVersion::V4.address_at(address_value(address)), Some(address));
    /// assert_eq!(IpVersion::V4.address_at(1 << 32), None);
    /// assert_eq!(IpVersion::V6.address_at(1), Some("::1".parse().unwrap()));
    /// ```
    pub fn address_at(self, value: u128) -> Option<IpAddr> {
        (value <= self.max_value()).then(|| self.address(value))
    }

    /// The address with integer value `value`, which the caller keeps within the family.
    /// Unchecked in release builds: the allocation loop calls it on every step, and the
    /// checked conversion cost that step 12 to 17 ns (6 to 8 %, `docs/benchmarks.md`).
    pub(crate) fn address(self, value: u128) -> IpAddr {
        debug_assert!(value <= self.max_value());
        match self {
            // Truncation cannot happen: value <= u32::MAX for IPv4.
            IpVersion::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
            IpVersion::V6 => IpAddr::V6(Ipv6Addr::from(value)),
        }
    }
}

impl fmt::Display for IpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpVersion::V4 => f.write_str("IPv4"),
            IpVersion::V6 => f.write_str("IPv6"),
        }
    }
}

impl Serialize for IpVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.number())
    }
}

impl<'de> Deserialize<'de> for IpVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = i64::deserialize(deserializer)?;
        IpVersion::from_number(number)
            .ok_or_else(|| serde::de::Error::custom(format!("ip version must be 4 or 6, found {number}")))
    }
}

/// The integer value of an address within its family, the order ranges, sets and stores keep:
/// every conversion of the workspace from an address to a number is this one.
///
/// ```
/// use spiderpool_core::address_value;
/// assert_eq!(address_value("10.0.0.1".parse().unwrap()), 0x0a00_0001);
/// assert_eq!(address_value("::1".parse().unwrap()), 1);
/// ```
pub fn address_value(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Why a range text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The text is empty.
    #[error("empty ip range: write one address or start-end")]
    Empty,
    /// The text is a CIDR, which ranges do not accept.
    #[error("invalid ip range {text:?}: CIDR notation is not allowed here, write start-end")]
    Cidr {
        /// The offending text.
        text: String,
    },
    /// One side is not an IP address.
    #[error("invalid ip range {text:?}: {part:?} is not an IP address")]
    BadAddress {
        /// The whole range text.
        text: String,
        /// The side that failed to parse.
        part: String,
    },
    /// Start and end are of different families.
    #[error("invalid ip range {text:?}: start and end must both be IPv4 or both be IPv6")]
    MixedFamily {
        /// The offending text.
        text: String,
    },
    /// Start is greater than end.
    #[error("invalid ip range {text:?}: start {start} is after end {end}")]
    Inverted {
        /// The offending text.
        text: String,
        /// The first address written.
        start: IpAddr,
        /// The last address written.
        end: IpAddr,
    },
}

/// An inclusive range of addresses of one family, `start <= end`.
///
/// Written as one address (`10.6.168.60`) or `start-end` (`10.6.168.60-10.6.168.69`), the form
/// of `spec.ips` and `spec.excludeIPs`. The text form round-trips: formatting a parsed range
/// gives canonical text (IPv6 in RFC 5952 form) that parses back to the same range.
///
/// ```
/// use spiderpool_core::IpRange;
/// let range: IpRange = "10.6.168.60-10.6.168.69".parse().unwrap();
/// assert_eq!(range.len(), 10);
/// assert!(range.contains("10.6.168.65".parse().unwrap()));
/// assert_eq!(range.to_string(), "10.6.168.60-10.6.168.69");
///
/// let err = "10.6.168.69-10.6.168.60".parse::<IpRange>().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid ip range \"10.6.168.69-10.6.168.60\": start 10.6.168.69 is after end 10.6.168.60"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRange {
    version: IpVersion,
    start: u128,
    end: u128,
}

impl IpRange {
    /// The range from `start` to `end`, both included.
    pub fn new(start: IpAddr, end: IpAddr) -> Result<IpRange, RangeError> {
        let text = || format!("{start}-{end}");
        let version = IpVersion::of(start);
        if version != IpVersion::of(end) {
            return Err(RangeError::MixedFamily { text: text() });
        }
        let (first, last) = (address_value(start), address_value(end));
        if first > last {
            return Err(RangeError::Inverted {
                text: text(),
                start,
                end,
            });
        }
        Ok(IpRange {
            version,
            start: first,
            end: last,
        })
    }

    /// The range holding exactly one address.
    pub fn single(address: IpAddr) -> IpRange {
        let value = address_value(address);
        IpRange {
            version: IpVersion::of(address),
            start: value,
            end: value,
        }
    }

    /// Builds a range from integer bounds already known to be ordered and in the family.
    pub(crate) fn from_bounds(version: IpVersion, start: u128, end: u128) -> IpRange {
        debug_assert!(start <= end && end <= version.max_value());
        IpRange { version, start, end }
    }

    /// The family of both ends.
    pub fn version(&self) -> IpVersion {
        self.version
    }

    /// The first address.
    pub fn start(&self) -> IpAddr {
        self.version.address(self.start)
    }

    /// The last address.
    pub fn end(&self) -> IpAddr {
        self.version.address(self.end)
    }

    pub(crate) fn bounds(&self) -> (u128, u128) {
        (self.start, self.end)
    }

    /// The number of addresses. The whole IPv6 space (2^128 addresses) saturates at `u128::MAX`.
    #[allow(clippy::len_without_is_empty)] // a range always holds at least one address
    pub fn len(&self) -> u128 {
        (self.end - self.start).saturating_add(1)
    }

    /// Whether `address` lies in the range.
    pub fn contains(&self, address: IpAddr) -> bool {
        IpVersion::of(address) == self.version && (self.start..=self.end).contains(&address_value(address))
    }
}

impl FromStr for IpRange {
    type Err = RangeError;

    fn from_str(text: &str) -> Result<IpRange, RangeError> {
        if text.is_empty() {
            return Err(RangeError::Empty);
        }
        if text.contains('/') {
            return Err(RangeError::Cidr { text: text.into() });
        }
        let parse = |part: &str| {
            part.parse::<IpAddr>().map_err(|_| RangeError::BadAddress {
                text: text.into(),
                part: part.into(),
            })
        };
        let (start, end) = match text.split_once('-') {
            Some((start, end)) => (parse(start)?, parse(end)?),
            None => {
                let address = parse(text)?;
                (address, address)
            }
        };
        IpRange::new(start, end).map_err(|err| match err {
            // Report the text as the user wrote it.
            RangeError::MixedFamily { .. } => RangeError::MixedFamily { text: text.into() },
            RangeError::Inverted { start, end, .. } => RangeError::Inverted {
                text: text.into(),
                start,
                end,
            },
            other => other,
        })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start())
        } else {
            write!(f, "{}-{}", self.start(), self.end())
        }
    }
}

impl Serialize for IpRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of addresses of one family, kept as sorted, disjoint, non-adjacent ranges.
///
/// Operations cost O(ranges) or O(log ranges), never O(addresses).
///
/// ```
/// use spiderpool_core::{IpRange, IpSet, IpVersion};
/// let ips = IpSet::from_ranges(IpVersion::V4, ["10.6.168.60-10.6.168.69".parse::<IpRange>().unwrap()]).unwrap();
/// let excluded = IpSet::from_ranges(IpVersion::V4, ["10.6.168.62".parse::<IpRange>().unwrap()]).unwrap();
/// let usable = ips.difference(&excluded);
/// assert_eq!(usable.len(), 9);
/// assert_eq!(usable.to_string(), "10.6.168.60-10.6.168.61,10.6.168.63-10.6.168.69");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpSet {
    version: IpVersion,
    /// Sorted, disjoint and non-adjacent: `ranges[i].1 + 1 < ranges[i + 1].0`.
    ranges: Vec<(u128, u128)>,
}

/// A range of the wrong family was given to an [`IpSet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{range} is {found}, but the set holds {expected} addresses")]
pub struct FamilyMismatch {
    /// The offending range.
    pub range: IpRange,
    /// The family of the set.
    pub expected: IpVersion,
    /// The family of the range.
    pub found: IpVersion,
}

impl IpSet {
    /// The empty set of a family.
    pub fn empty(version: IpVersion) -> IpSet {
        IpSet {
            version,
            ranges: Vec::new(),
        }
    }

    /// The union of `ranges`, which may overlap and come in any order.
    pub fn from_ranges(
        version: IpVersion,
        ranges: impl IntoIterator<Item = IpRange>,
    ) -> Result<IpSet, FamilyMismatch> {
        let mut bounds = Vec::new();
        for range in ranges {
            if range.version != version {
                return Err(FamilyMismatch {
                    range,
                    expected: version,
                    found: range.version,
                });
            }
            bounds.push(range.bounds());
        }
        Ok(IpSet::from_bounds(version, bounds))
    }

    /// Normalises arbitrary bounds (each `start <= end`) into a set.
    fn from_bounds(version: IpVersion, mut bounds: Vec<(u128, u128)>) -> IpSet {
        bounds.sort_unstable();
        let mut ranges: Vec<(u128, u128)> = Vec::with_capacity(bounds.len());
        for (start, end) in bounds {
            match ranges.last_mut() {
                // Overlapping or adjacent: extend the last range.
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => ranges.push((start, end)),
            }
        }
        IpSet { version, ranges }
    }

    /// The family of the set.
    pub fn version(&self) -> IpVersion {
        self.version
    }

    /// Whether the set holds no address.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The number of addresses, saturating at `u128::MAX` for the whole IPv6 space.
    pub fn len(&self) -> u128 {
        self.ranges.iter().fold(0u128, |sum, (start, end)| {
            sum.saturating_add((end - start).saturating_add(1))
        })
    }

    /// The maximal ranges of the set, in ascending order.
    pub fn ranges(&self) -> impl ExactSizeIterator<Item = IpRange> + '_ {
        self.ranges
            .iter()
            .map(|&(start, end)| IpRange::from_bounds(self.version, start, end))
    }

    /// Whether `address` is in the set.
    pub fn contains(&self, address: IpAddr) -> bool {
        IpVersion::of(address) == self.version && self.contains_value(address_value(address))
    }

    pub(crate) fn contains_value(&self, value: u128) -> bool {
        let index = self.ranges.partition_point(|&(_, end)| end < value);
        self.ranges.get(index).is_some_and(|&(start, _)| start <= value)
    }

    /// Whether every address of `range` is in the set.
    pub fn contains_range(&self, range: &IpRange) -> bool {
        if range.version != self.version {
            return false;
        }
        let index = self.ranges.partition_point(|&(_, end)| end < range.start);
        self.ranges
            .get(index)
            .is_some_and(|&(start, end)| start <= range.start && range.end <= end)
    }

    /// The lowest address of the set.
    pub fn first(&self) -> Option<IpAddr> {
        self.ranges.first().map(|&(start, _)| self.version.address(start))
    }

    /// The lowest member that is at least `value`.
    pub(crate) fn first_at_or_after(&self, value: u128) -> Option<u128> {
        let index = self.ranges.partition_point(|&(_, end)| end < value);
        self.ranges.get(index).map(|&(start, _)| start.max(value))
    }

    /// The addresses in `self` or `other`.
    pub fn union(&self, other: &IpSet) -> IpSet {
        debug_assert_eq!(self.version, other.version);
        let bounds = self.ranges.iter().chain(&other.ranges).copied().collect();
        IpSet::from_bounds(self.version, bounds)
    }

    /// The addresses in `self` but not in `other`.
    pub fn difference(&self, other: &IpSet) -> IpSet {
        if self.version != other.version || other.is_empty() {
            return self.clone();
        }
        let mut ranges = Vec::with_capacity(self.ranges.len());
        let mut cut = other.ranges.iter().peekable();
        for &(mut start, end) in &self.ranges {
            // Skip cuts wholly before this range; they cannot touch later ranges either.
            while cut.peek().is_some_and(|&&(_, cut_end)| cut_end < start) {
                cut.next();
            }
            let mut emptied = false;
            while let Some(&&(cut_start, cut_end)) = cut.peek() {
                if cut_start > end {
                    break;
                }
                if cut_start > start {
                    ranges.push((start, cut_start - 1));
                }
                if cut_end >= end {
                    emptied = true;
                    break;
                }
                start = cut_end + 1;
                cut.next();
            }
            if !emptied {
                ranges.push((start, end));
            }
        }
        IpSet {
            version: self.version,
            ranges,
        }
    }

    /// The addresses in both `self` and `other`.
    pub fn intersection(&self, other: &IpSet) -> IpSet {
        if self.version != other.version {
            return IpSet::empty(self.version);
        }
        let (mut i, mut j) = (0, 0);
        let mut ranges = Vec::new();
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a_start, a_end) = self.ranges[i];
            let (b_start, b_end) = other.ranges[j];
            let (start, end) = (a_start.max(b_start), a_end.min(b_end));
            if start <= end {
                ranges.push((start, end));
            }
            if a_end < b_end {
                i += 1;
            } else {
                j += 1;
            }
        }
        IpSet {
            version: self.version,
            ranges,
        }
    }

    /// Whether the sets share at least one address.
    pub fn intersects(&self, other: &IpSet) -> bool {
        !self.intersection(other).is_empty()
    }
}

impl fmt::Display for IpSet {
    /// Comma-separated ranges, in ascending order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, range) in self.ranges().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> IpRange {
        text.parse().unwrap()
    }

    fn set(version: IpVersion, texts: &[&str]) -> IpSet {
        IpSet::from_ranges(version, texts.iter().map(|text| range(text))).unwrap()
    }

    #[test]
    fn a_single_address_is_a_range_of_one() {
        let single = range("10.6.0.1");
        assert_eq!(single.len(), 1);
        assert_eq!(single.to_string(), "10.6.0.1");
    }

    #[test]
    fn range_texts_that_are_refused_say_why() {
        assert_eq!("".parse::<IpRange>(), Err(RangeError::Empty));
        assert!(matches!(
            "10.6.0.0/16".parse::<IpRange>(),
            Err(RangeError::Cidr { .. })
        ));
        assert!(matches!(
            "10.6.0.1-fd00::1".parse::<IpRange>(),
            Err(RangeError::MixedFamily { .. })
        ));
        let err = "10.6.0.1-10.6.0.x".parse::<IpRange>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid ip range \"10.6.0.1-10.6.0.x\": \"10.6.0.x\" is not an IP address"
        );
        assert!(matches!(
            " 10.6.0.1".parse::<IpRange>(),
            Err(RangeError::BadAddress { .. })
        ));
        assert!(matches!(
            "10.6.0.1-".parse::<IpRange>(),
            Err(RangeError::BadAddress { .. })
        ));
    }

    #[test]
    fn ipv6_ranges_are_written_in_canonical_form() {
        let r = range("fd00:0:0:0:0:0:0:10-fd00::00ff");
        assert_eq!(r.to_string(), "fd00::10-fd00::ff");
        assert_eq!(r.len(), 0xf0);
    }

    #[test]
    fn the_whole_ipv6_space_saturates_its_count() {
        assert_eq!(
            range("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").len(),
            u128::MAX
        );
    }

    #[test]
    fn sets_merge_overlapping_and_adjacent_ranges() {
        let s = set(
            IpVersion::V4,
            &["10.0.0.5-10.0.0.9", "10.0.0.1-10.0.0.4", "10.0.0.8-10.0.0.12"],
        );
        assert_eq!(s.to_string(), "10.0.0.1-10.0.0.12");
        assert_eq!(s.len(), 12);
    }

    #[test]
    fn sets_refuse_ranges_of_the_other_family() {
        let err = IpSet::from_ranges(IpVersion::V4, [range("fd00::1")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "fd00::1 is IPv6, but the set holds IPv4 addresses"
        );
    }

    #[test]
    fn difference_cuts_holes_and_edges() {
        let s = set(IpVersion::V4, &["10.0.0.1-10.0.0.10", "10.0.0.20-10.0.0.30"]);
        let cut = set(
            IpVersion::V4,
            &["10.0.0.1", "10.0.0.5-10.0.0.6", "10.0.0.10-10.0.0.25"],
        );
        assert_eq!(
            s.difference(&cut).to_string(),
            "10.0.0.2-10.0.0.4,10.0.0.7-10.0.0.9,10.0.0.26-10.0.0.30"
        );
        assert!(s.difference(&s).is_empty());
    }

    #[test]
    fn intersection_keeps_the_shared_part() {
        let a = set(IpVersion::V6, &["fd00::1-fd00::10", "fd00::20-fd00::30"]);
        let b = set(IpVersion::V6, &["fd00::8-fd00::22"]);
        assert_eq!(
            a.intersection(&b).to_string(),
            "fd00::8-fd00::10,fd00::20-fd00::22"
        );
        assert!(a.intersects(&b));
        assert!(!a.intersects(&set(IpVersion::V6, &["fd00::11-fd00::1f"])));
    }

    #[test]
    fn first_at_or_after_skips_gaps() {
        let s = set(IpVersion::V4, &["0.0.0.10-0.0.0.20", "0.0.0.30-0.0.0.40"]);
        assert_eq!(s.first_at_or_after(0), Some(10));
        assert_eq!(s.first_at_or_after(15), Some(15));
        assert_eq!(s.first_at_or_after(21), Some(30));
        assert_eq!(s.first_at_or_after(41), None);
    }

    #[test]
    fn ip_version_reads_the_spec_number() {
        assert_eq!(serde_json::from_str::<IpVersion>("4").unwrap(), IpVersion::V4);
        let err = serde_json::from_str::<IpVersion>("5").unwrap_err();
        assert!(err.to_string().contains("ip version must be 4 or 6, found 5"));
        assert_eq!(serde_json::to_string(&IpVersion::V6).unwrap(), "6");
    }
}
