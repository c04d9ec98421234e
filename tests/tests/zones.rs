//! Zones end to end: three loopback nodes in zones `zone-a`, `zone-b`, `zone-c` at R=2 place
//! every key's two copies in two zones, the client computes the same ring from the topology it
//! is served, `ringctl` shows the zones, and a node without a zone (placement version 2) is
//! admitted beside zoned ones (version 3) and warned about.

use std::time::Duration;

use ringcache::Client;
use ringcache_proto::placement::{Ring, SLOTS};
use ringcache_tests::ctl::{Outcome, ctl};
use ringcache_tests::{TestCluster, copies_match_the_ring, load_keys, patient};
use serde_json::Value;

/// Generous bound for convergence and for ringctl to see a settled cluster.
const CONVERGE: Duration = Duration::from_secs(20);

/// Runs `args` until `done` holds (bounded by [`CONVERGE`]); a loaded machine may briefly
/// suspect a member, which takes it out of the ring.
async fn ctl_until(cluster: &str, args: &[&str], done: impl Fn(&Outcome) -> bool) -> Outcome {
    let give_up = tokio::time::Instant::now() + CONVERGE;
    loop {
        let outcome = ctl(cluster, args).await;
        if done(&outcome) || tokio::time::Instant::now() >= give_up {
            assert_eq!(outcome.code, 0, "{args:?}: {}", outcome.stderr);
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn zone_of(i: usize) -> String {
    format!("zone-{}", char::from(b'a' + (i - 1) as u8))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_zones_at_r2_keep_every_keys_copies_in_two_zones() {
    let mut cluster = TestCluster::start_converged(3, CONVERGE, |i, config| {
        patient(i, config);
        config.replication_factor = std::num::NonZeroU32::new(2).unwrap();
        config.zone = Some(zone_of(i));
    })
    .await;
    let addr = cluster.nodes[0].grpc_target();

    // Every node's view: the members carry their zones and every slot spans two zones.
    for node in &cluster.nodes {
        let view = node.node.view();
        for (i, id) in ["n1", "n2", "n3"].iter().enumerate() {
            let member = view.topology.member(id).expect("a member");
            assert_eq!(member.zone.as_deref(), Some(zone_of(i + 1).as_str()));
            assert_eq!(view.ring.zone(id), Some(zone_of(i + 1).as_str()));
        }
        for slot in 0..SLOTS {
            let set = view.ring.slot_replicas(slot);
            assert_eq!((set.len(), set.zone_span()), (2, 2), "slot {slot}");
        }
        assert_eq!(view.ring.crowded_ranges(), 0);
    }

    // The client is served the zones and computes the nodes' ring from them.
    let client = Client::connect([addr.as_str()]).await.expect("connect");
    let served = client.topology();
    let view = cluster.nodes[0].node.view();
    assert_eq!(served, view.topology);
    let ring = Ring::new(&served);
    for slot in 0..SLOTS {
        assert_eq!(
            ring.slot_replicas(slot).iter().collect::<Vec<_>>(),
            view.ring.slot_replicas(slot).iter().collect::<Vec<_>>(),
            "slot {slot}"
        );
    }
    for i in 0..50 {
        client.set(format!("k{i}"), "v").await.expect("a write");
    }

    // ringctl ring: a ZONE column and the zones line.
    let text = ctl_until(&addr, &["ring", "--samples", "2000"], |o| {
        o.text().contains("ring of 3 nodes, R=2")
    })
    .await
    .text();
    let header = text
        .lines()
        .find(|l| l.starts_with("NODE"))
        .expect("a table");
    assert!(header.contains("ZONE"), "{text}");
    for i in 1..=3 {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("n{i} ")))
            .unwrap_or_else(|| panic!("no row for n{i}: {text}"));
        assert!(row.contains(&zone_of(i)), "{row}");
    }
    assert!(
        text.contains(
            "zones: zone-a (n1); zone-b (n2); zone-c (n3); each key's 2 copies span 2 zones"
        ),
        "{text}"
    );
    assert!(!text.contains("WARNING"), "{text}");
    let json: Value = serde_json::from_slice(
        &ctl(&addr, &["-o", "json", "ring", "--samples", "2000"])
            .await
            .stdout,
    )
    .expect("JSON");
    assert_eq!(json["zones"]["zones_per_key"], 2, "{json}");
    assert_eq!(json["zones"]["crowded_ranges"], 0, "{json}");
    assert_eq!(json["nodes"][0]["zone"], "zone-a", "{json}");

    // ringctl locate: each replica with its zone, two zones.
    let located = ctl(&addr, &["locate", "k1"]).await;
    assert_eq!(located.code, 0, "{}", located.stderr);
    let replicas_line = located
        .text()
        .lines()
        .find(|l| l.starts_with("replicas"))
        .expect("a replicas line")
        .to_owned();
    assert!(
        replicas_line.contains("(R=2, 2 zones)"),
        "{}",
        located.text()
    );
    let set = ring.replicas(b"k1");
    for (id, zone) in set.iter().zip(set.zones()) {
        assert!(
            replicas_line.contains(&format!("{id} [{}]", zone.unwrap())),
            "{replicas_line}"
        );
    }
    let json: Value =
        serde_json::from_slice(&ctl(&addr, &["-o", "json", "locate", "k1"]).await.stdout)
            .expect("JSON");
    let zones: Vec<&str> = json["replica_zones"]
        .as_array()
        .expect("replica zones")
        .iter()
        .map(|z| z.as_str().unwrap())
        .collect();
    assert_eq!(zones.len(), 2);
    assert_ne!(zones[0], zones[1], "{json}");

    // ringctl status: a ZONE column, and nothing to warn about.
    let status = ctl_until(&addr, &["-o", "json", "status"], |o| {
        o.text().contains("\"verdict\": \"healthy\"")
    })
    .await;
    let json: Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(json["zones"]["warnings"], Value::Array(vec![]), "{json}");
    assert_eq!(json["members"][1]["zone"], "zone-b", "{json}");

    // A fourth node without a zone advertises placement version 2 and is admitted by the zoned
    // ones (3); status warns that it is in the unnamed zone.
    cluster
        .add(4, |i, config| {
            patient(i, config);
            config.replication_factor = std::num::NonZeroU32::new(2).unwrap();
        })
        .await;
    cluster
        .wait_converged(CONVERGE)
        .await
        .expect("a zone-less node joins zoned ones");
    let status = ctl_until(&addr, &["status"], |o| o.text().contains("have no zone"))
        .await
        .text();
    assert!(
        status.contains(
            "WARNING: 1 of 4 ring members have no zone (n4): they share one unnamed zone"
        ),
        "{status}"
    );
    let header = status.lines().next().unwrap_or_default();
    assert!(header.contains("ZONE"), "{status}");
    let view = cluster.nodes[0].node.view();
    assert_eq!(view.ring.zone_count(), 4);
    assert_eq!(view.ring.crowded_ranges(), 0);
}

/// A node joining zone-a of a zoned cluster pulls the slots it holds in the zoned ring, and the
/// old holders drop what moved: every key ends up on exactly its zoned replicas, in two zones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_a_zone_gets_the_keys_of_the_zoned_ring() {
    const KEYS: usize = 5_000;
    let configure = |i: usize, config: &mut ringcache_server::Config| {
        patient(i, config);
        config.replication_factor = std::num::NonZeroU32::new(2).unwrap();
        config.rebalance_bytes_per_sec = 0;
        config.zone = Some(zone_of((i - 1) % 3 + 1));
    };
    let mut cluster = TestCluster::start_converged(3, CONVERGE, configure).await;
    let client = Client::connect(cluster.grpc_targets())
        .await
        .expect("connect");
    load_keys(&client, KEYS).await;
    cluster.add(4, configure).await;
    cluster.wait_converged(CONVERGE).await.expect("n4 joins");
    let view = cluster.nodes[0].node.view();
    assert_eq!(view.ring.zone("n4"), Some("zone-a"));
    ringcache_tests::wait_until(CONVERGE, || async { copies_match_the_ring(&cluster, KEYS) })
        .await
        .expect("every key ends up exactly on its zoned replicas");
    assert!(cluster.node("n4").node.store().stats().keys > 0);
    for i in 0..KEYS {
        let set = view.ring.replicas(format!("key{i}").as_bytes());
        assert_eq!(set.zone_span(), 2, "key{i}");
    }
}
