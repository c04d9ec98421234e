//! Topology and placement from wire bytes: `v1::Topology` decoded by prost from arbitrary bytes,
//! `Topology::try_from`, `Ring::new`, and replica lookups.
//!
//! A topology refused only for its digest is retried with the computed digest, so the ring and
//! the lookups see every topology the size checks let through (a fuzzer cannot guess FNV
//! digests). Checks, besides "no panic, no abort, no allocation over -malloc_limit_mb":
//! - an accepted topology is within its limits (`check_limits`) and round-trips through the
//!   wire type unchanged (same digest);
//! - the ring holds exactly the range-owning members; every replica set has
//!   `ring.replication()` distinct ring members, primary first, and is the same on a second
//!   lookup.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use ringcache_proto::placement::Ring;
use ringcache_proto::topology::{Topology, TopologyError};
use ringcache_proto::v1;

fuzz_target!(|data: &[u8]| {
    let Ok(mut wire) = v1::Topology::decode(data) else {
        return;
    };
    let topology = match Topology::try_from(&wire) {
        Ok(topology) => topology,
        Err(TopologyError::DigestMismatch { sent, computed }) => {
            assert_eq!(sent, wire.digest);
            wire.digest = computed;
            Topology::try_from(&wire).expect("only the digest was wrong")
        }
        Err(_) => return,
    };
    assert_eq!(topology.digest(), wire.digest);
    topology.check_limits().expect("an accepted topology is within the limits");
    let back = v1::Topology::from(&topology);
    let again = Topology::try_from(&back).expect("a topology's own wire form is accepted");
    assert_eq!(again, topology, "wire round trip changed the topology");

    let ring = Ring::new(&topology);
    let in_ring: Vec<&str> = topology.ring_members().map(|m| m.node_id.as_str()).collect();
    assert_eq!(ring.nodes().len(), in_ring.len());
    assert!(ring.nodes().iter().zip(&in_ring).all(|(a, b)| &**a == *b));
    assert_eq!(
        ring.replication(),
        (topology.replication_factor() as usize).min(in_ring.len())
    );

    // Keys: a few fixed ones, every member id, and slices of the input itself.
    let mut keys: Vec<&[u8]> = vec![b"", b"k", b"user:42", &data[..data.len().min(64)]];
    keys.extend(in_ring.iter().take(8).map(|id| id.as_bytes()));
    for key in keys {
        let replicas = ring.replicas(key);
        assert_eq!(replicas.len(), ring.replication(), "replica count");
        let ids: Vec<&str> = replicas.iter().collect();
        assert_eq!(replicas.primary(), ids.first().copied());
        assert_eq!(ring.primary(key), replicas.primary());
        for (i, id) in ids.iter().enumerate() {
            assert!(in_ring.contains(id), "replica {id:?} is not a ring member");
            assert!(!ids[..i].contains(id), "replica {id:?} listed twice");
            assert_eq!(replicas.position(id), Some(i));
            assert!(replicas.contains(id));
        }
        let second: Vec<&str> = ring.replicas(key).iter().collect();
        assert_eq!(ids, second, "lookup is not deterministic");
        if ring.nodes().len() <= ring.replication() {
            for id in &in_ring {
                assert!(ring.holds_every_key(id));
            }
        }
    }
});
