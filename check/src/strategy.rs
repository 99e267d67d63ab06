//! proptest strategies for the operation types, weighted towards requests that succeed, fill
//! pools and get retried.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::ops::{
    AnnotationKey, Ask, Families, Ippool, Lists, MALFORMED_VALUES, Malformed, Nic, NicPools, Op, PoolRef, Who,
};
use crate::scenario::{NODES, POD_SLOTS, REF_NAMES, Shape};

/// Pool sizes from 1 to 6.
pub fn shape() -> impl Strategy<Value = Shape> {
    any::<[u8; 7]>().prop_map(|sizes| Shape { sizes })
}

/// Any pod slot and sandbox.
pub fn who() -> impl Strategy<Value = Who> {
    (0..POD_SLOTS, any::<bool>()).prop_map(|(slot, sandbox)| Who { slot, sandbox })
}

/// `eth0` or `net1`, mostly `eth0`.
pub fn nic() -> impl Strategy<Value = Nic> {
    prop_oneof![3 => Just(Nic::Eth0), 1 => Just(Nic::Net1)]
}

/// Names of the family first, then any name of [`REF_NAMES`].
fn pool_ref(own_family: &'static [u8]) -> impl Strategy<Value = PoolRef> {
    prop_oneof![
        3 => proptest::sample::select(own_family).prop_map(PoolRef),
        1 => (0..REF_NAMES.len() as u8).prop_map(PoolRef),
    ]
}

/// Candidate lists of up to three names each; IPv6 lists are often empty.
pub fn lists() -> impl Strategy<Value = Lists> {
    (
        vec(pool_ref(&[0, 1, 2, 3, 8, 9]), 0..=3),
        prop_oneof![1 => Just(Vec::new()), 1 => vec(pool_ref(&[4, 5, 6, 9, 10, 12]), 1..=3)],
    )
        .prop_map(|(ipv4, ipv6)| Lists { ipv4, ipv6 })
}

/// An `ipam.spidernet.io/ippools` entry.
pub fn nic_pools() -> impl Strategy<Value = NicPools> {
    (option::weighted(0.7, nic()), lists(), prop::bool::weighted(0.2)).prop_map(
        |(interface, lists, clean_gateway)| NicPools {
            interface,
            lists,
            clean_gateway,
        },
    )
}

/// Which families to ask for, mostly as listed.
pub fn families() -> impl Strategy<Value = Families> {
    prop_oneof![
        5 => Just(Families::AsListed),
        1 => Just(Families::Ipv4),
        1 => Just(Families::Ipv6),
        2 => Just(Families::DualStack),
    ]
}

/// A spoiled annotation.
pub fn malformed() -> impl Strategy<Value = Malformed> {
    (
        prop_oneof![
            Just(AnnotationKey::Ippool),
            Just(AnnotationKey::Ippools),
            Just(AnnotationKey::NamespaceIpv4),
            Just(AnnotationKey::NamespaceIpv6),
        ],
        0..MALFORMED_VALUES.len() as u8,
    )
        .prop_map(|(key, value)| Malformed { key, value })
}

/// A request with sources of candidates drawn independently, so that every precedence case
/// comes up.
pub fn ask() -> impl Strategy<Value = Ask> {
    (
        who(),
        0..NODES.len() as u8,
        nic(),
        families(),
        option::weighted(0.25, vec(nic_pools(), 1..=3)),
        option::weighted(0.6, (option::weighted(0.1, nic()), lists())),
        option::weighted(0.15, lists()),
        prop_oneof![3 => Just(Lists::default()), 1 => lists()],
        option::weighted(0.04, malformed()),
        option::weighted(0.6, prop::bool::weighted(0.8)),
    )
        .prop_map(
            |(who, node, interface, families, ippools, ippool, namespace, network, malformed, attachment)| {
                Ask {
                    who,
                    node,
                    interface,
                    families,
                    ippools,
                    ippool: ippool.map(|(interface, lists)| Ippool { interface, lists }),
                    namespace,
                    network,
                    malformed,
                    attachment,
                }
            },
        )
}

/// One operation: mostly requests, some releases and repeats.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => ask().prop_map(Op::Allocate),
        2 => (who(), option::weighted(0.3, nic())).prop_map(|(who, interface)| Op::Release { who, interface }),
        1 => (0u8..4).prop_map(|back| Op::Repeat { back }),
    ]
}

/// A sequence of up to `max` operations.
pub fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    vec(op(), 1..=max)
}
