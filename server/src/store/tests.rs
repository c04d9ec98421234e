//! Unit tests of the store. Time is a plain number here: no test sleeps.

use super::*;

const T0: u64 = 1_700_000_000_000;

fn store() -> Store {
    Store::new(StoreConfig::default())
}

fn small(max_memory_bytes: usize, eviction: EvictionPolicy) -> Store {
    Store::new(StoreConfig {
        max_memory_bytes,
        eviction,
        max_value_bytes: 1024,
        shards: 8,
        ..StoreConfig::default()
    })
}

fn value(store: &Store, key: &[u8], now: u64) -> Option<Bytes> {
    store.get(key, now).unwrap().map(|item| item.value)
}

#[test]
fn set_get_delete_round_trip() {
    let s = store();
    assert_eq!(value(&s, b"k", T0), None);
    let out = s.set(b"k", b"v1", SetOptions::default(), T0).unwrap();
    assert!(out.version.is_some());
    assert_eq!(value(&s, b"k", T0).as_deref(), Some(&b"v1"[..]));
    assert!(s.delete(b"k", T0).unwrap());
    assert!(!s.delete(b"k", T0).unwrap());
    assert_eq!(value(&s, b"k", T0), None);
    let stats = s.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.keys, stats.used_bytes),
        (1, 2, 0, 0)
    );
}

#[test]
fn empty_values_and_binary_keys_are_stored() {
    let s = store();
    s.set(b"\x00\xff", b"", SetOptions::default(), T0).unwrap();
    assert_eq!(value(&s, b"\x00\xff", T0).as_deref(), Some(&b""[..]));
}

#[test]
fn every_write_gets_a_greater_version() {
    let s = store();
    let v1 = s
        .set(b"k", b"a", SetOptions::default(), T0)
        .unwrap()
        .version
        .unwrap();
    let v2 = s
        .set(b"k", b"b", SetOptions::default(), T0)
        .unwrap()
        .version
        .unwrap();
    // A wall clock that jumps back must not produce an older version.
    let v3 = s
        .set(b"k", b"c", SetOptions::default(), T0 - 60_000)
        .unwrap()
        .version
        .unwrap();
    let (_, v4) = s.incr(b"n", 1, None, T0).unwrap();
    let v5 = s.set_ttl(b"k", Some(1000), T0).unwrap().unwrap();
    assert!(
        v1 < v2 && v2 < v3 && v3 < v4 && v4 < v5,
        "{v1} {v2} {v3} {v4} {v5}"
    );
    assert_eq!(s.get(b"k", T0).unwrap().unwrap().version, v5);
    assert!(Hlc::millis(v1) == T0);
}

#[test]
fn ttl_expires_at_the_deadline_without_waiting() {
    let s = store();
    let ttl = SetOptions {
        ttl_ms: Some(1_000),
        ..SetOptions::default()
    };
    s.set(b"k", b"v", ttl, T0).unwrap();
    assert_eq!(s.ttl(b"k", T0 + 400).unwrap(), Ttl::ExpiresIn(600));
    assert!(value(&s, b"k", T0 + 999).is_some());
    assert_eq!(
        value(&s, b"k", T0 + 1_000),
        None,
        "invisible at the deadline"
    );
    assert_eq!(s.ttl(b"k", T0 + 1_000).unwrap(), Ttl::Missing);
    assert_eq!(s.stats().keys, 1, "not reclaimed yet");
    assert_eq!(s.reclaim_expired(T0 + 1_000, 100), 1);
    let stats = s.stats();
    assert_eq!((stats.keys, stats.expirations, stats.used_bytes), (0, 1, 0));
}

#[test]
fn active_expiry_takes_deadlines_in_order_within_its_budget() {
    let s = Store::new(StoreConfig {
        shards: 1,
        ..StoreConfig::default()
    });
    for i in 0..10u64 {
        let opts = SetOptions {
            ttl_ms: Some(100 + i),
            ..SetOptions::default()
        };
        s.set(format!("k{i}").as_bytes(), b"v", opts, T0).unwrap();
    }
    s.set(b"forever", b"v", SetOptions::default(), T0).unwrap();
    assert_eq!(s.reclaim_expired(T0 + 104, 3), 3);
    assert_eq!(
        s.reclaim_expired(T0 + 104, 3),
        2,
        "only k0..=k4 had expired"
    );
    assert_eq!(s.reclaim_expired(T0 + 104, 3), 0);
    assert!(value(&s, b"k5", T0 + 104).is_some());
    assert_eq!(s.reclaim_expired(T0 + 10_000, 100), 5);
    assert_eq!(s.stats().keys, 1);
}

#[test]
fn expire_persist_and_ttl() {
    let s = store();
    assert_eq!(s.set_ttl(b"k", Some(10), T0).unwrap(), None, "missing key");
    s.set(b"k", b"v", SetOptions::default(), T0).unwrap();
    assert_eq!(s.ttl(b"k", T0).unwrap(), Ttl::Persistent);
    assert_eq!(
        s.set_ttl(b"k", None, T0).unwrap(),
        None,
        "nothing to persist"
    );
    assert!(s.set_ttl(b"k", Some(500), T0).unwrap().is_some());
    assert_eq!(s.ttl(b"k", T0 + 100).unwrap(), Ttl::ExpiresIn(400));
    assert!(s.set_ttl(b"k", None, T0 + 100).unwrap().is_some());
    assert_eq!(s.ttl(b"k", T0 + 10_000).unwrap(), Ttl::Persistent);
    assert_eq!(
        s.reclaim_expired(T0 + 10_000, 10),
        0,
        "persisted key left the expiry index"
    );
    assert!(s.set_ttl(b"k", Some(5), T0).unwrap().is_some());
    assert_eq!(
        s.set_ttl(b"k", Some(5), T0 + 5).unwrap(),
        None,
        "expired key cannot be revived"
    );
}

#[test]
fn set_conditions_and_previous_value() {
    let s = store();
    let nx = SetOptions {
        condition: SetCondition::IfAbsent,
        return_previous: true,
        ..SetOptions::default()
    };
    let xx = SetOptions {
        condition: SetCondition::IfPresent,
        return_previous: true,
        ..SetOptions::default()
    };
    assert_eq!(
        s.set(b"k", b"a", xx, T0).unwrap(),
        SetOutcome {
            version: None,
            previous: None
        }
    );
    assert!(s.set(b"k", b"a", nx, T0).unwrap().version.is_some());
    let out = s.set(b"k", b"b", nx, T0).unwrap();
    assert_eq!(out.version, None);
    assert_eq!(out.previous.as_deref(), Some(&b"a"[..]));
    let out = s.set(b"k", b"c", xx, T0).unwrap();
    assert!(out.version.is_some());
    assert_eq!(out.previous.as_deref(), Some(&b"a"[..]));
    assert_eq!(value(&s, b"k", T0).as_deref(), Some(&b"c"[..]));
    // An expired key counts as absent.
    let ttl = SetOptions {
        ttl_ms: Some(10),
        ..SetOptions::default()
    };
    s.set(b"e", b"old", ttl, T0).unwrap();
    assert!(s.set(b"e", b"new", nx, T0 + 10).unwrap().version.is_some());
    assert_eq!(s.stats().expirations, 1);
}

#[test]
fn mget_mset_mdelete_keep_request_order() {
    let s = store();
    let versions = s
        .mset(
            &[(&b"a"[..], &b"1"[..]), (b"b", b"2"), (b"c", b"3")],
            None,
            T0,
        )
        .unwrap();
    assert_eq!(versions.len(), 3);
    assert!(versions.windows(2).all(|w| w[0] < w[1]));
    let got = s.mget(&[&b"c"[..], b"missing", b"a", b"a"], T0).unwrap();
    let values: Vec<_> = got
        .iter()
        .map(|i| i.as_ref().map(|i| i.value.clone()))
        .collect();
    assert_eq!(
        values,
        vec![
            Some(Bytes::from("3")),
            None,
            Some(Bytes::from("1")),
            Some(Bytes::from("1"))
        ]
    );
    assert_eq!(s.mdelete(&[&b"a"[..], b"b", b"zz"], T0).unwrap(), 2);
    assert_eq!(s.stats().keys, 1);
}

#[test]
fn multi_key_requests_are_checked_before_anything_changes() {
    let s = store();
    let err = s
        .mset(&[(&b"a"[..], &b"1"[..]), (b"", b"2")], None, T0)
        .unwrap_err();
    assert_eq!(err, StoreError::EmptyKey);
    assert_eq!(value(&s, b"a", T0), None, "nothing stored");
    s.set(b"a", b"1", SetOptions::default(), T0).unwrap();
    assert_eq!(
        s.mdelete(&[&b"a"[..], b""], T0).unwrap_err(),
        StoreError::EmptyKey
    );
    assert!(value(&s, b"a", T0).is_some(), "nothing deleted");
}

#[test]
fn incr_counts_and_refuses_overflow_and_non_integers() {
    let s = store();
    assert_eq!(s.incr(b"n", 5, None, T0).unwrap().0, 5);
    assert_eq!(s.incr(b"n", -7, None, T0).unwrap().0, -2);
    assert_eq!(value(&s, b"n", T0).as_deref(), Some(&b"-2"[..]));
    s.set(
        b"max",
        i64::MAX.to_string().as_bytes(),
        SetOptions::default(),
        T0,
    )
    .unwrap();
    let before = s.get(b"max", T0).unwrap().unwrap();
    assert_eq!(
        s.incr(b"max", 1, None, T0).unwrap_err(),
        StoreError::Overflow {
            current: i64::MAX,
            delta: 1
        }
    );
    assert_eq!(
        s.get(b"max", T0).unwrap().unwrap(),
        before,
        "unchanged after overflow"
    );
    s.set(
        b"min",
        i64::MIN.to_string().as_bytes(),
        SetOptions::default(),
        T0,
    )
    .unwrap();
    assert!(matches!(
        s.incr(b"min", -1, None, T0),
        Err(StoreError::Overflow { .. })
    ));
    for bad in [
        &b"abc"[..],
        b"1.5",
        b" 1",
        b"+1",
        b"",
        b"99999999999999999999",
    ] {
        s.set(b"bad", bad, SetOptions::default(), T0).unwrap();
        assert_eq!(
            s.incr(b"bad", 1, None, T0).unwrap_err(),
            StoreError::NotAnInteger,
            "{bad:?}"
        );
    }
}

#[test]
fn incr_ttl_applies_only_to_new_keys() {
    let s = store();
    s.incr(b"n", 1, Some(1_000), T0).unwrap();
    s.incr(b"n", 1, Some(50_000), T0 + 10).unwrap();
    assert_eq!(s.ttl(b"n", T0 + 10).unwrap(), Ttl::ExpiresIn(990));
    assert_eq!(
        s.incr(b"n", 1, None, T0 + 1_000).unwrap().0,
        1,
        "expired counter restarts"
    );
}

#[test]
fn compare_and_set_conflicts_report_the_current_version() {
    let s = store();
    assert_eq!(
        s.compare_and_set(b"k", 5, b"x", None, T0).unwrap_err(),
        StoreError::CasConflict {
            expected: 5,
            current: None
        }
    );
    let v1 = s.compare_and_set(b"k", 0, b"a", None, T0).unwrap();
    assert_eq!(
        s.compare_and_set(b"k", 0, b"b", None, T0).unwrap_err(),
        StoreError::CasConflict {
            expected: 0,
            current: Some(v1)
        }
    );
    let v2 = s.compare_and_set(b"k", v1, b"b", None, T0).unwrap();
    assert!(v2 > v1);
    assert_eq!(
        s.compare_and_set(b"k", v1, b"c", None, T0).unwrap_err(),
        StoreError::CasConflict {
            expected: v1,
            current: Some(v2)
        }
    );
    assert_eq!(value(&s, b"k", T0).as_deref(), Some(&b"b"[..]));
}

#[test]
fn every_limit_gives_its_own_error() {
    let s = Store::new(StoreConfig {
        max_key_bytes: 4,
        max_value_bytes: 8,
        max_ttl_ms: 1_000,
        ..StoreConfig::default()
    });
    let plain = SetOptions::default();
    assert_eq!(
        s.set(b"", b"v", plain, T0).unwrap_err(),
        StoreError::EmptyKey
    );
    assert_eq!(s.get(b"", T0).unwrap_err(), StoreError::EmptyKey);
    assert_eq!(
        s.set(b"12345", b"v", plain, T0).unwrap_err(),
        StoreError::KeyTooLarge { len: 5, max: 4 }
    );
    assert!(
        s.set(b"1234", b"12345678", plain, T0).is_ok(),
        "limits are inclusive"
    );
    assert_eq!(
        s.set(b"k", b"123456789", plain, T0).unwrap_err(),
        StoreError::ValueTooLarge { len: 9, max: 8 }
    );
    for ttl_ms in [0, 1_001] {
        let opts = SetOptions {
            ttl_ms: Some(ttl_ms),
            ..SetOptions::default()
        };
        assert_eq!(
            s.set(b"k", b"v", opts, T0).unwrap_err(),
            StoreError::InvalidTtl {
                ttl_ms,
                max_ttl_ms: 1_000
            }
        );
    }
    assert!(matches!(
        s.set_ttl(b"1234", Some(0), T0),
        Err(StoreError::InvalidTtl { .. })
    ));
    assert!(matches!(
        s.incr(b"k", 1, Some(0), T0),
        Err(StoreError::InvalidTtl { .. })
    ));
    assert!(matches!(
        s.ttl(b"12345", T0),
        Err(StoreError::KeyTooLarge { .. })
    ));
    assert_eq!(
        s.compare_and_set(b"k", 0, b"123456789", None, T0)
            .unwrap_err(),
        StoreError::ValueTooLarge { len: 9, max: 8 }
    );
    // A long incr result never slips past max_value_bytes.
    assert!(matches!(
        s.incr(b"k", i64::MIN, None, T0),
        Err(StoreError::ValueTooLarge { .. })
    ));
    assert_eq!(s.stats().keys, 1, "only the successful set stored anything");
}

#[test]
fn eviction_keeps_memory_under_the_limit_while_writing_three_times_as_much() {
    let max = 64 * 1024;
    let s = small(max, EvictionPolicy::Clock);
    let value = vec![7u8; 100];
    let mut written = 0;
    let mut i = 0u64;
    while written < 3 * max {
        let key = format!("key:{i:08}");
        s.set(key.as_bytes(), &value, SetOptions::default(), T0)
            .unwrap();
        written += charge(key.len(), value.len());
        i += 1;
        assert!(
            s.stats().used_bytes as usize <= max,
            "over the limit after {i} writes"
        );
    }
    let stats = s.stats();
    assert!(stats.evictions > 0);
    assert_eq!(
        stats.keys + stats.evictions,
        i,
        "every write either lives or was evicted"
    );
    // The accounting matches what is actually held.
    assert_eq!(
        stats.used_bytes as usize,
        stats.keys as usize * charge(12, 100)
    );
    assert!(
        stats.used_bytes as usize > max / 2,
        "eviction does not empty the cache"
    );
}

#[test]
fn clock_eviction_spares_recently_read_keys() {
    let per_item = charge(5, 100);
    let s = Store::new(StoreConfig {
        max_memory_bytes: 10 * per_item,
        shards: 1,
        ..StoreConfig::default()
    });
    let value = [1u8; 100];
    for i in 0..10 {
        s.set(
            format!("k{i:04}").as_bytes(),
            &value,
            SetOptions::default(),
            T0,
        )
        .unwrap();
    }
    // Read the first five: they get their reference bit.
    for i in 0..5 {
        assert!(s.get(format!("k{i:04}").as_bytes(), T0).unwrap().is_some());
    }
    for i in 10..15 {
        s.set(
            format!("k{i:04}").as_bytes(),
            &value,
            SetOptions::default(),
            T0,
        )
        .unwrap();
    }
    for i in 0..5 {
        assert!(value_present(&s, i), "hot key k{i} was evicted");
    }
    for i in 5..10 {
        assert!(
            !value_present(&s, i),
            "cold key k{i} should have been evicted first"
        );
    }
    assert_eq!(s.stats().evictions, 5);
}

fn value_present(s: &Store, i: usize) -> bool {
    s.ttl(format!("k{i:04}").as_bytes(), T0).unwrap() != Ttl::Missing
}

#[test]
fn eviction_takes_expired_entries_first() {
    let per_item = charge(5, 100);
    let s = Store::new(StoreConfig {
        max_memory_bytes: 4 * per_item,
        shards: 1,
        ..StoreConfig::default()
    });
    let value = [1u8; 100];
    let short = SetOptions {
        ttl_ms: Some(10),
        ..SetOptions::default()
    };
    s.set(b"k0000", &value, SetOptions::default(), T0).unwrap();
    s.set(b"k0001", &value, short, T0).unwrap();
    s.set(b"k0002", &value, SetOptions::default(), T0).unwrap();
    s.set(b"k0003", &value, SetOptions::default(), T0).unwrap();
    s.set(b"k0004", &value, SetOptions::default(), T0 + 10)
        .unwrap();
    let stats = s.stats();
    assert_eq!((stats.evictions, stats.expirations), (0, 1));
    assert!(value_present(&s, 0));
}

#[test]
fn noeviction_refuses_writes_and_keeps_serving_reads() {
    let per_item = charge(5, 100);
    let s = Store::new(StoreConfig {
        max_memory_bytes: 3 * per_item,
        eviction: EvictionPolicy::NoEviction,
        ..StoreConfig::default()
    });
    let value = [1u8; 100];
    for i in 0..3 {
        s.set(
            format!("k{i:04}").as_bytes(),
            &value,
            SetOptions::default(),
            T0,
        )
        .unwrap();
    }
    let err = s
        .set(b"k0003", &value, SetOptions::default(), T0)
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::MemoryFull {
            needed: per_item,
            used: 3 * per_item,
            max: 3 * per_item,
            policy: EvictionPolicy::NoEviction
        }
    );
    assert!(err.to_string().contains("noeviction"), "{err}");
    assert!(value_present(&s, 0) && !value_present(&s, 3));
    // Overwriting with a value of the same size needs no new memory.
    s.set(b"k0000", &[2u8; 100], SetOptions::default(), T0)
        .unwrap();
    // Nor does growing it within the allocator's chunk (here 16-byte steps)...
    assert_eq!(charge(5, 101), per_item);
    s.set(b"k0000", &[2u8; 101], SetOptions::default(), T0)
        .unwrap();
    // ...but growing it past the chunk does.
    assert!(charge(5, 120) > per_item);
    assert!(matches!(
        s.set(b"k0000", &[2u8; 120], SetOptions::default(), T0),
        Err(StoreError::MemoryFull { .. })
    ));
    // Deleting frees room.
    assert!(s.delete(b"k0001", T0).unwrap());
    s.set(b"k0003", &value, SetOptions::default(), T0).unwrap();
    assert_eq!(s.stats().evictions, 0);
}

#[test]
fn an_item_larger_than_max_memory_is_refused_even_with_eviction() {
    let s = small(1_000, EvictionPolicy::Clock);
    s.set(b"small", b"v", SetOptions::default(), T0).unwrap();
    let err = s
        .set(b"big", &[0u8; 1_000], SetOptions::default(), T0)
        .unwrap_err();
    assert!(matches!(err, StoreError::MemoryFull { .. }), "{err}");
    assert!(
        value_present_key(&s, b"small"),
        "nothing evicted for a write that cannot fit"
    );
}

fn value_present_key(s: &Store, key: &[u8]) -> bool {
    s.ttl(key, T0).unwrap() != Ttl::Missing
}

#[test]
fn flush_empties_every_shard() {
    let s = store();
    for i in 0..1000 {
        s.set(format!("k{i}").as_bytes(), b"v", SetOptions::default(), T0)
            .unwrap();
    }
    assert_eq!(s.flush(), 1000);
    let stats = s.stats();
    assert_eq!((stats.keys, stats.used_bytes), (0, 0));
    assert_eq!(value(&s, b"k1", T0), None);
}

#[test]
fn slots_are_reused_and_the_shard_compacts_after_mass_deletion() {
    let s = Store::new(StoreConfig {
        shards: 1,
        ..StoreConfig::default()
    });
    let ttl = SetOptions {
        ttl_ms: Some(1),
        ..SetOptions::default()
    };
    for i in 0..5000 {
        s.set(format!("k{i}").as_bytes(), b"v", ttl, T0).unwrap();
    }
    s.set(b"keep", b"v", SetOptions::default(), T0).unwrap();
    assert_eq!(s.reclaim_expired(T0 + 1, 10_000), 5000);
    assert_eq!(value(&s, b"keep", T0 + 1).as_deref(), Some(&b"v"[..]));
    for i in 0..10 {
        s.set(
            format!("n{i}").as_bytes(),
            b"v",
            SetOptions::default(),
            T0 + 1,
        )
        .unwrap();
    }
    assert_eq!(s.stats().keys, 11);
    assert_eq!(
        s.stats().used_bytes as usize,
        11 * charge(2, 1) + charge(4, 1) - charge(2, 1)
    );
}

mod model {
    //! The store against a `HashMap` model, with TTLs and a moving clock.

    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, u8, Option<u8>),
        Get(u8),
        Delete(u8),
        Incr(u8, i8),
        Expire(u8, u8),
        Persist(u8),
        Tick(u8),
        Reclaim,
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0u8..8;
        prop_oneof![
            (key.clone(), any::<u8>(), proptest::option::of(1u8..20))
                .prop_map(|(k, v, t)| Op::Set(k, v, t)),
            key.clone().prop_map(Op::Get),
            key.clone().prop_map(Op::Delete),
            (key.clone(), any::<i8>()).prop_map(|(k, d)| Op::Incr(k, d)),
            (key.clone(), 1u8..20).prop_map(|(k, t)| Op::Expire(k, t)),
            key.prop_map(Op::Persist),
            (0u8..10).prop_map(Op::Tick),
            Just(Op::Reclaim),
        ]
    }

    /// value, expires_at
    type Model = HashMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

    fn live<'a>(model: &'a Model, key: &[u8], now: u64) -> Option<&'a (Vec<u8>, Option<u64>)> {
        model
            .get(key)
            .filter(|(_, at)| at.is_none_or(|at| at > now))
    }

    proptest! {
        #[test]
        fn store_matches_a_hashmap_model(ops in proptest::collection::vec(op(), 1..200)) {
            let s = Store::new(StoreConfig { shards: 2, ..StoreConfig::default() });
            let mut model = Model::new();
            let mut now = T0;
            for op in ops {
                match op {
                    Op::Set(k, v, ttl) => {
                        let opts = SetOptions { ttl_ms: ttl.map(u64::from), ..SetOptions::default() };
                        s.set(&[k], &[v], opts, now).unwrap();
                        model.insert(vec![k], (vec![v], ttl.map(|t| now + u64::from(t))));
                    }
                    Op::Get(k) => {
                        let got = value(&s, &[k], now).map(|b| b.to_vec());
                        prop_assert_eq!(got, live(&model, &[k], now).map(|(v, _)| v.clone()));
                    }
                    Op::Delete(k) => {
                        let expected = live(&model, &[k], now).is_some();
                        model.remove(&[k][..]);
                        prop_assert_eq!(s.delete(&[k], now).unwrap(), expected);
                    }
                    Op::Incr(k, d) => {
                        let current = live(&model, &[k], now).cloned();
                        let result = s.incr(&[k], i64::from(d), None, now);
                        match current {
                            None => {
                                prop_assert_eq!(result.unwrap().0, i64::from(d));
                                model.insert(vec![k], (d.to_string().into_bytes(), None));
                            }
                            Some((v, at)) => match std::str::from_utf8(&v).ok().and_then(|t| t.parse::<i64>().ok()) {
                                Some(n) if !v.starts_with(b"+") => {
                                    prop_assert_eq!(result.unwrap().0, n + i64::from(d));
                                    model.insert(vec![k], ((n + i64::from(d)).to_string().into_bytes(), at));
                                }
                                _ => prop_assert_eq!(result.unwrap_err(), StoreError::NotAnInteger),
                            },
                        }
                    }
                    Op::Expire(k, t) => {
                        let updated = s.set_ttl(&[k], Some(u64::from(t)), now).unwrap().is_some();
                        let exists = live(&model, &[k], now).is_some();
                        prop_assert_eq!(updated, exists);
                        if exists {
                            model.get_mut(&[k][..]).unwrap().1 = Some(now + u64::from(t));
                        }
                    }
                    Op::Persist(k) => {
                        let updated = s.set_ttl(&[k], None, now).unwrap().is_some();
                        let had_ttl = live(&model, &[k], now).is_some_and(|(_, at)| at.is_some());
                        prop_assert_eq!(updated, had_ttl);
                        if had_ttl {
                            model.get_mut(&[k][..]).unwrap().1 = None;
                        }
                    }
                    Op::Tick(ms) => now += u64::from(ms),
                    Op::Reclaim => {
                        s.reclaim_expired(now, usize::MAX);
                        model.retain(|_, (_, at)| at.is_none_or(|at| at > now));
                        prop_assert_eq!(s.stats().keys as usize, model.len());
                    }
                }
                let expected_bytes: usize = model.iter().map(|(k, (v, _))| charge(k.len(), v.len())).sum();
                prop_assert_eq!(s.stats().used_bytes as usize, expected_bytes);
            }
        }
    }
}

fn with_tombstones() -> Store {
    Store::new(StoreConfig {
        tombstone_grace_ms: 1_000,
        shards: 2,
        ..StoreConfig::default()
    })
}

#[test]
fn a_delete_leaves_a_versioned_tombstone_for_the_grace_period() {
    let s = with_tombstones();
    let v1 = s
        .set(b"k", b"v", SetOptions::default(), T0)
        .unwrap()
        .version
        .unwrap();
    let (deleted, version) = s.delete_versioned(b"k", T0).unwrap();
    let tomb = version.unwrap();
    assert!(deleted && tomb > v1);
    assert_eq!(value(&s, b"k", T0), None);
    assert_eq!(s.ttl(b"k", T0).unwrap(), Ttl::Missing);
    assert_eq!(s.stats().keys, 0, "tombstones are not keys");
    let held = s.get_versioned(b"k").unwrap().unwrap();
    assert_eq!((held.value, held.version), (None, tomb));
    // Deleting again keeps the first tombstone.
    assert_eq!(
        s.delete_versioned(b"k", T0 + 5).unwrap(),
        (false, Some(tomb))
    );
    // A new write orders after the delete.
    let v2 = s
        .set(b"k", b"again", SetOptions::default(), T0)
        .unwrap()
        .version
        .unwrap();
    assert!(v2 > tomb);
    // Tombstones go after the grace period and do not count as expirations.
    s.delete(b"k", T0).unwrap();
    assert_eq!(s.reclaim_expired(T0 + 1_000, 10), 1);
    assert!(s.get_versioned(b"k").unwrap().is_none());
    assert_eq!(s.stats().expirations, 0);
}

/// Two coordinators can stamp the same version on different writes of one key. Replicas that
/// receive them in opposite orders must keep the same copy (before content ordering, each kept
/// whichever arrived first, and they disagreed until a QUORUM read repaired the key).
#[test]
fn replicas_keep_the_same_copy_of_a_version_tie_whatever_the_arrival_order() {
    let copies: [(Option<&[u8]>, Option<u64>); 5] = [
        (Some(b"apple"), None),
        (Some(b"pear"), None),
        (Some(b"pear"), Some(T0 + 10_000)),
        (None, None),
        (Some(b""), None),
    ];
    for a in copies {
        for b in copies {
            let (left, right) = (with_tombstones(), with_tombstones());
            left.apply(b"k", a.0, 9, a.1, T0).unwrap();
            left.apply(b"k", b.0, 9, b.1, T0).unwrap();
            right.apply(b"k", b.0, 9, b.1, T0).unwrap();
            right.apply(b"k", a.0, 9, a.1, T0).unwrap();
            let (l, r) = (
                left.get_versioned(b"k").unwrap().unwrap(),
                right.get_versioned(b"k").unwrap().unwrap(),
            );
            assert_eq!(
                (l.value.clone(), l.version),
                (r.value.clone(), r.version),
                "{a:?} then {b:?} vs the reverse"
            );
            if l.value.is_some() {
                assert_eq!(l.expires_at_ms, r.expires_at_ms, "{a:?} / {b:?}");
            }
        }
    }
    // The rule: a value beats a tombstone, greater bytes win, a later expiry wins.
    let s = with_tombstones();
    s.apply(b"t", None, 9, None, T0).unwrap();
    assert!(s.apply(b"t", Some(b"a"), 9, None, T0).unwrap());
    assert!(!s.apply(b"t", None, 9, None, T0).unwrap());
    assert!(!s.apply(b"t", Some(b"A"), 9, None, T0).unwrap());
    assert!(s.apply(b"t", Some(b"b"), 9, Some(T0 + 5), T0).unwrap());
    assert!(s.apply(b"t", Some(b"b"), 9, None, T0).unwrap());
}

#[test]
fn apply_keeps_the_newest_version_whatever_the_arrival_order() {
    let s = with_tombstones();
    assert!(s.apply(b"k", Some(b"v5"), 5, None, T0).unwrap());
    assert!(
        !s.apply(b"k", Some(b"v3"), 3, None, T0).unwrap(),
        "older write ignored"
    );
    assert!(
        !s.apply(b"k", Some(b"v4x"), 5, None, T0).unwrap(),
        "an equal version with losing content ignored"
    );
    assert!(
        !s.apply(b"k", Some(b"v5"), 5, None, T0).unwrap(),
        "the same copy again changes nothing"
    );
    assert_eq!(value(&s, b"k", T0).as_deref(), Some(&b"v5"[..]));
    assert!(
        s.apply(b"k", None, 7, None, T0).unwrap(),
        "a newer delete wins"
    );
    assert_eq!(value(&s, b"k", T0), None);
    assert!(
        !s.apply(b"k", Some(b"v6"), 6, None, T0).unwrap(),
        "a late older write cannot revive it"
    );
    assert_eq!(value(&s, b"k", T0), None);
    assert!(s.apply(b"k", Some(b"v8"), 8, Some(T0 + 50), T0).unwrap());
    assert_eq!(
        s.get(b"k", T0).unwrap().unwrap().expires_at_ms,
        Some(T0 + 50)
    );
    // Local writes after an applied version order after it.
    let local = s
        .set(b"k", b"local", SetOptions::default(), 1)
        .unwrap()
        .version
        .unwrap();
    assert!(local > 8);
}

#[test]
fn scan_visits_every_entry_and_remove_if_version_is_conditional() {
    let s = with_tombstones();
    for i in 0..100 {
        s.set(format!("k{i}").as_bytes(), b"v", SetOptions::default(), T0)
            .unwrap();
    }
    s.delete(b"k0", T0).unwrap();
    let mut seen = Vec::new();
    for shard in 0..s.shard_count() {
        let mut cursor = Some(0);
        while let Some(at) = cursor {
            let (items, next) = s.scan(shard, at, 7);
            seen.extend(items);
            cursor = next;
        }
    }
    assert_eq!(seen.len(), 100);
    let (key, tomb) = seen.iter().find(|(k, _)| k == "k0").unwrap().clone();
    assert!(tomb.value.is_none());
    let (k1, item) = seen.iter().find(|(k, _)| k == "k1").unwrap().clone();
    assert!(
        !s.remove_if_version(&k1, item.version + 1).unwrap(),
        "a newer write stays"
    );
    assert!(s.remove_if_version(&k1, item.version).unwrap());
    assert!(s.get_versioned(&k1).unwrap().is_none());
    assert!(s.remove_if_version(&key, tomb.version).unwrap());
}

#[test]
fn apply_refuses_versions_too_far_ahead_and_leaves_the_clock_alone() {
    let s = store();
    let drift = s.config().max_clock_drift_ms;
    assert_eq!(drift, DEFAULT_MAX_CLOCK_DRIFT_MS);
    s.set(b"k", b"mine", SetOptions::default(), T0).unwrap();
    let before = s.get_versioned(b"k").unwrap().unwrap();
    let day = 24 * 3600 * 1000;
    for (forged, ahead_ms) in [
        (u64::MAX, Hlc::millis(u64::MAX) - T0),
        (Hlc::at_millis(T0 + day), day),
        (Hlc::at_millis(T0 + drift + 1), drift + 1),
    ] {
        for value in [Some(&b"forged"[..]), None] {
            assert_eq!(
                s.apply(b"k", value, forged, None, T0),
                Err(StoreError::ClockDrift(ClockDrift {
                    ahead_ms,
                    max_drift_ms: drift
                })),
                "{forged:#x}"
            );
            // A new key is refused too, not only one that would be replaced.
            assert!(s.apply(b"new", value, forged, None, T0).is_err());
        }
    }
    assert_eq!(s.get_versioned(b"k").unwrap(), Some(before.clone()));
    assert!(s.get_versioned(b"new").unwrap().is_none());
    // The clock did not move: the next local write is stamped at the wall clock and wins.
    let next = s
        .set(b"k", b"later", SetOptions::default(), T0 + 1)
        .unwrap()
        .version
        .unwrap();
    assert_eq!(next, Hlc::at_millis(T0 + 1));
    assert!(next > before.version);
    assert_eq!(value(&s, b"k", T0 + 1).as_deref(), Some(&b"later"[..]));
    // Exactly at the bound is still accepted (clocks that are merely skewed keep working).
    let edge = Hlc::at_millis(T0 + drift);
    assert!(s.apply(b"k", Some(b"edge"), edge, None, T0).unwrap());
    assert!(
        s.set(b"k", b"after", SetOptions::default(), T0)
            .unwrap()
            .version
            .unwrap()
            > edge
    );
}

#[test]
fn the_drift_bound_is_a_setting() {
    let strict = Store::new(StoreConfig {
        max_clock_drift_ms: 10,
        ..StoreConfig::default()
    });
    let ahead = Hlc::at_millis(T0 + 11);
    assert!(matches!(
        strict.apply(b"k", Some(b"v"), ahead, None, T0),
        Err(StoreError::ClockDrift(ClockDrift {
            ahead_ms: 11,
            max_drift_ms: 10
        }))
    ));
    assert!(store().apply(b"k", Some(b"v"), ahead, None, T0).unwrap());
}

/// Every key of a whole `scan_keys` pass from cursor 0, calling `between` after each call.
fn scan_all(
    s: &Store,
    count: usize,
    now: &mut u64,
    mut between: impl FnMut(&Store, &mut u64),
) -> Vec<Bytes> {
    let (mut cursor, mut keys, mut calls) = (0, Vec::new(), 0);
    loop {
        let (batch, next) = s.scan_keys(cursor, count, count * 10, *now);
        assert!(batch.len() <= count, "at most COUNT keys per call");
        keys.extend(batch);
        calls += 1;
        assert!(calls < 100_000, "the scan ends");
        if next == 0 {
            return keys;
        }
        cursor = next;
        between(s, now);
    }
}

#[test]
fn a_key_scan_of_a_quiet_store_returns_every_live_key_once() {
    let s = Store::new(StoreConfig {
        shards: 8,
        tombstone_grace_ms: 60_000,
        ..StoreConfig::default()
    });
    for i in 0..3000 {
        s.set(format!("k{i}").as_bytes(), b"v", SetOptions::default(), T0)
            .unwrap();
    }
    // Tombstones and expired entries are not keys.
    s.delete(b"k7", T0).unwrap();
    let ttl = SetOptions {
        ttl_ms: Some(10),
        ..SetOptions::default()
    };
    s.set(b"k8", b"v", ttl, T0).unwrap();
    let mut now = T0 + 10;
    let mut keys = scan_all(&s, 100, &mut now, |_, _| {});
    keys.sort();
    let mut expected: Vec<Bytes> = (0..3000)
        .filter(|i| *i != 7 && *i != 8)
        .map(|i| Bytes::from(format!("k{i}")))
        .collect();
    expected.sort();
    assert_eq!(keys, expected);
    assert_ne!(
        s.scan_keys(0, 10, 100, now).1,
        0,
        "a partial pass gives a cursor"
    );
    // An empty store ends at once; any cursor value is accepted.
    let empty = store();
    assert_eq!(empty.scan_keys(0, 10, 100, T0), (Vec::new(), 0));
    assert_eq!(
        empty.scan_keys(u64::MAX, 10, 100, T0).0,
        Vec::<Bytes>::new()
    );
}

#[test]
fn a_key_scan_call_does_bounded_work_on_a_sparse_store() {
    let s = Store::new(StoreConfig {
        shards: 1,
        ..StoreConfig::default()
    });
    for i in 0..1000 {
        s.set(format!("k{i}").as_bytes(), b"v", SetOptions::default(), T0)
            .unwrap();
    }
    for i in 0..999 {
        s.delete(format!("k{i}").as_bytes(), T0).unwrap();
    }
    // 999 free slots before the one key: a call with COUNT 10 looks at 100 of them and returns
    // a cursor, not the key.
    let (keys, cursor) = s.scan_keys(0, 10, 100, T0);
    assert!(keys.is_empty());
    assert_eq!(cursor, 100);
    let mut now = T0;
    assert_eq!(scan_all(&s, 10, &mut now, |_, _| {}), [Bytes::from("k999")]);
}

#[test]
fn a_key_scan_survives_compaction_of_a_shard() {
    let s = Store::new(StoreConfig {
        shards: 1,
        ..StoreConfig::default()
    });
    let ttl = SetOptions {
        ttl_ms: Some(10),
        ..SetOptions::default()
    };
    // 3000 short-lived keys, then 100 that stay, at the end of the slab.
    for i in 0..3000 {
        s.set(format!("gone{i}").as_bytes(), b"v", ttl, T0).unwrap();
    }
    for i in 0..100 {
        s.set(
            format!("stay{i}").as_bytes(),
            b"v",
            SetOptions::default(),
            T0,
        )
        .unwrap();
    }
    let mut now = T0;
    let mut first = true;
    let keys = scan_all(&s, 50, &mut now, |s, now| {
        if first {
            // Past the first 500 slots: the short-lived keys expire and the shard compacts,
            // moving the keys that stay to slots the cursor already passed.
            first = false;
            *now += 10;
            assert_eq!(s.reclaim_expired(*now, usize::MAX), 3000);
        }
    });
    for i in 0..100 {
        let key = Bytes::from(format!("stay{i}"));
        assert!(keys.contains(&key), "{key:?} missed");
    }
}

#[test]
fn random_key_finds_live_keys_and_gives_up_on_expired_ones() {
    let s = Store::new(StoreConfig {
        shards: 8,
        tombstone_grace_ms: 60_000,
        ..StoreConfig::default()
    });
    assert_eq!(s.random_key(T0, 1, 1000), None);
    s.set(b"only", b"v", SetOptions::default(), T0).unwrap();
    for seed in 0..64 {
        assert_eq!(s.random_key(T0, seed, 1000).as_deref(), Some(&b"only"[..]));
    }
    s.delete(b"only", T0).unwrap();
    assert_eq!(s.random_key(T0, 3, 1000), None, "a tombstone is no key");
    let ttl = SetOptions {
        ttl_ms: Some(10),
        ..SetOptions::default()
    };
    for i in 0..20_000 {
        s.set(format!("k{i}").as_bytes(), b"v", ttl, T0).unwrap();
    }
    // Everything expired but not reclaimed: bounded work, then none.
    assert_eq!(s.random_key(T0 + 10, 7, 1000), None);
    assert!(s.random_key(T0 + 9, 7, 1000).is_some());
    let seen: std::collections::HashSet<Bytes> = (0..200)
        .filter_map(|seed| s.random_key(T0, u64::wrapping_mul(seed, 0x9e37_79b9_7f4a_7c15), 1000))
        .collect();
    assert!(seen.len() > 100, "random keys vary: {}", seen.len());
}

#[test]
fn a_flush_through_a_version_drops_older_writes_and_refuses_them_later() {
    let s = Store::new(StoreConfig {
        shards: 4,
        tombstone_grace_ms: 60_000,
        ..StoreConfig::default()
    });
    for i in 0..100 {
        s.set(format!("k{i}").as_bytes(), b"v", SetOptions::default(), T0)
            .unwrap();
    }
    s.delete(b"k0", T0).unwrap();
    let old = s.get_versioned(b"k1").unwrap().unwrap().version;
    // A flush stamped by another node a little ahead of this one.
    let flush = Hlc::at_millis(T0 + 5);
    assert_eq!(
        s.flush_through(flush, T0).unwrap(),
        100,
        "tombstone included"
    );
    assert_eq!(s.stats().keys, 0);
    assert_eq!(s.stats().used_bytes, 0);
    assert_eq!(s.flush_floor(), flush);
    // A replica, hint or anti-entropy push of a flushed write is not applied.
    assert!(!s.apply(b"k1", Some(b"v"), old, None, T0).unwrap());
    assert!(!s.apply(b"k1", Some(b"v"), flush, None, T0).unwrap());
    assert_eq!(value(&s, b"k1", T0), None);
    // Later writes, local or remote, are kept.
    let local = s
        .set(b"k2", b"new", SetOptions::default(), T0)
        .unwrap()
        .version
        .unwrap();
    assert!(local > flush, "the clock moved past the flush");
    assert!(s.apply(b"k3", Some(b"new"), flush + 1, None, T0).unwrap());
    // A second flush keeps what is newer than it.
    assert_eq!(s.flush_through(flush, T0).unwrap(), 0);
    assert_eq!(s.stats().keys, 2);
    // A flush stamped too far ahead is refused like any remote version.
    let ahead = Hlc::at_millis(T0 + 3_600_000);
    assert!(matches!(
        s.flush_through(ahead, T0),
        Err(StoreError::ClockDrift(_))
    ));
    assert_eq!(s.stats().keys, 2);
}

mod scan_model {
    use super::*;
    use proptest::prelude::*;

    /// What happens between two scan calls.
    #[derive(Debug, Clone)]
    enum Step {
        /// Nothing.
        Quiet,
        /// New keys (some short-lived).
        Insert(u16, bool),
        /// Deletes of keys that were only there for a while.
        DeleteChurn(u16),
        /// The short-lived keys expire and are reclaimed (shards compact).
        ExpireChurn,
        /// Overwrites of keys that stay.
        Overwrite(u16),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Quiet),
            (1u16..2000, any::<bool>()).prop_map(|(n, ttl)| Step::Insert(n, ttl)),
            (1u16..2000).prop_map(Step::DeleteChurn),
            Just(Step::ExpireChurn),
            (1u16..200).prop_map(Step::Overwrite),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn a_scan_over_a_changing_store_returns_every_key_that_stayed(
            shards in prop_oneof![Just(1usize), Just(2), Just(8)],
            stay in 1usize..400,
            churn in 0usize..3000,
            count in 1usize..200,
            steps in proptest::collection::vec(step(), 0..40),
        ) {
            let s = Store::new(StoreConfig { shards, ..StoreConfig::default() });
            let ttl = SetOptions { ttl_ms: Some(10), ..SetOptions::default() };
            let mut next_churn = 0usize;
            // Churn and staying keys interleaved, so slots move under the cursor.
            for i in 0..stay.max(churn) {
                if i < churn {
                    s.set(format!("c{next_churn}").as_bytes(), b"v", ttl, T0).unwrap();
                    next_churn += 1;
                }
                if i < stay {
                    s.set(format!("s{i}").as_bytes(), b"v", SetOptions::default(), T0).unwrap();
                }
            }
            let mut steps = steps.into_iter();
            let mut deleted_upto = 0usize;
            let mut now = T0;
            let keys = scan_all(&s, count, &mut now, |s, now| {
                match steps.next().unwrap_or(Step::Quiet) {
                    Step::Quiet => {}
                    Step::Insert(n, short) => {
                        for _ in 0..n {
                            let key = format!("c{next_churn}");
                            next_churn += 1;
                            let options = if short { ttl } else { SetOptions::default() };
                            s.set(key.as_bytes(), b"v", options, *now).unwrap();
                        }
                    }
                    Step::DeleteChurn(n) => {
                        let upto = (deleted_upto + usize::from(n)).min(next_churn);
                        for i in deleted_upto..upto {
                            s.delete(format!("c{i}").as_bytes(), *now).unwrap();
                        }
                        deleted_upto = upto;
                    }
                    Step::ExpireChurn => {
                        *now += 10;
                        s.reclaim_expired(*now, usize::MAX);
                    }
                    Step::Overwrite(n) => {
                        for i in 0..usize::from(n).min(stay) {
                            s.set(format!("s{i}").as_bytes(), b"w", SetOptions::default(), *now)
                                .unwrap();
                        }
                    }
                }
            });
            let seen: std::collections::HashSet<&[u8]> = keys.iter().map(|k| &k[..]).collect();
            for i in 0..stay {
                let key = format!("s{i}");
                prop_assert!(seen.contains(key.as_bytes()), "{} missed", key);
            }
        }
    }
}

#[test]
fn a_node_alone_deletes_without_tombstones_and_resumes_them_when_told() {
    let s = with_tombstones();
    s.set_tombstones_needed(false);
    s.set(b"k", b"v", SetOptions::default(), T0).unwrap();
    assert_eq!(s.delete_versioned(b"k", T0).unwrap(), (true, None));
    assert!(s.get_versioned(b"k").unwrap().is_none(), "nothing kept");
    assert_eq!(
        s.delete_versioned(b"absent", T0).unwrap(),
        (false, None),
        "no tombstone for a key nobody holds"
    );
    assert_eq!(s.stats().used_bytes, 0);
    // A peer appears: deletes leave tombstones again.
    s.set_tombstones_needed(true);
    s.set(b"k", b"v", SetOptions::default(), T0).unwrap();
    let (deleted, version) = s.delete_versioned(b"k", T0).unwrap();
    assert!(deleted && version.is_some());
    assert_eq!(s.get_versioned(b"k").unwrap().unwrap().value, None);
}

#[test]
fn an_evicted_tombstone_never_lets_an_older_copy_revive_its_key() {
    let per_item = charge(5, 100);
    let s = Store::new(StoreConfig {
        max_memory_bytes: 4 * per_item,
        tombstone_grace_ms: 600_000,
        shards: 1,
        ..StoreConfig::default()
    });
    let payload = [1u8; 100];
    let old = s
        .set(b"gone0", &payload, SetOptions::default(), T0)
        .unwrap()
        .version
        .unwrap();
    let (_, tomb) = s.delete_versioned(b"gone0", T0).unwrap();
    let tomb = tomb.unwrap();
    // Fill memory until the tombstone is evicted, well within its grace period.
    let mut i = 0;
    while s.get_versioned(b"gone0").unwrap().is_some() {
        assert!(i < 100, "the tombstone was never evicted");
        s.set(
            format!("k{i:04}").as_bytes(),
            &payload,
            SetOptions::default(),
            T0 + 1,
        )
        .unwrap();
        i += 1;
    }
    assert_eq!(s.stats().tombstones_evicted, 1);
    // A late copy older than the delete (a hint, a lagging replica, anti-entropy) is refused...
    assert!(
        !s.apply(b"gone0", Some(&payload), old, None, T0 + 2)
            .unwrap()
    );
    assert_eq!(value(&s, b"gone0", T0 + 2), None);
    // ...and so is a copy at the delete's own version; a newer write is taken.
    assert!(
        !s.apply(b"gone0", Some(&payload), tomb, None, T0 + 2)
            .unwrap()
    );
    let newer = s
        .set(b"fresh", b"x", SetOptions::default(), T0 + 2)
        .unwrap();
    let newer = newer.version.unwrap();
    assert!(newer > tomb);
    assert!(
        s.apply(b"gone0", Some(b"new"), newer, None, T0 + 2)
            .unwrap()
    );
    assert_eq!(value(&s, b"gone0", T0 + 2).as_deref(), Some(&b"new"[..]));
    // A key that is present keeps ordering by its own version, floor or not.
    let held = s.get_versioned(b"fresh").unwrap().unwrap().version;
    assert!(
        !s.apply(b"fresh", Some(b"older"), held - 1, None, T0 + 2)
            .unwrap()
    );
}

/// Every entry of `slot`, walked `step` at a time.
fn walk_slot(s: &Store, slot: u16, step: usize) -> Vec<Bytes> {
    let mut keys = Vec::new();
    let mut cursor = Some(SlotCursor::default());
    while let Some(at) = cursor {
        let (items, next) = s.scan_slot(slot, at, step);
        keys.extend(items.into_iter().map(|(k, _)| k));
        cursor = next;
    }
    keys.sort();
    keys
}

#[test]
fn a_slot_walk_visits_exactly_that_slots_entries_through_removals_and_compaction() {
    let s = small(1 << 30, EvictionPolicy::NoEviction);
    // Hash tags put many keys in a few slots; plain keys spread over the rest.
    let tagged = |t: u32, i: u32| format!("{{tag{t}}}:{i}");
    for t in 0..3 {
        for i in 0..500 {
            s.set(tagged(t, i).as_bytes(), b"v", SetOptions::default(), T0)
                .unwrap();
        }
    }
    for i in 0..3000 {
        s.set(
            format!("plain{i}").as_bytes(),
            b"v",
            SetOptions::default(),
            T0,
        )
        .unwrap();
    }
    let expected = |s: &Store, slot: u16| {
        let mut keys: Vec<Bytes> = (0..s.shard_count())
            .flat_map(|shard| {
                let mut all = Vec::new();
                let mut cursor = Some(0);
                while let Some(at) = cursor {
                    let (items, next) = s.scan(shard, at, 100);
                    all.extend(items.into_iter().map(|(k, _)| k));
                    cursor = next;
                }
                all
            })
            .filter(|k| key_slot(k) == slot)
            .collect();
        keys.sort();
        keys
    };
    let tag_slot = key_slot(b"tag0");
    let plain_slot = key_slot(b"plain7");
    for slot in [tag_slot, plain_slot, key_slot(b"tag2")] {
        let want = expected(&s, slot);
        assert!(!want.is_empty());
        assert_eq!(walk_slot(&s, slot, 7), want, "slot {slot}");
        assert_eq!(walk_slot(&s, slot, 10_000), want, "slot {slot} in one step");
    }
    // Removals from the middle, the head and the tail of chains keep them whole.
    for i in (0..500).step_by(3) {
        assert!(
            s.remove_if_version(
                tagged(0, i).as_bytes(),
                s.get_versioned(tagged(0, i).as_bytes())
                    .unwrap()
                    .unwrap()
                    .version
            )
            .unwrap()
        );
    }
    let want = expected(&s, tag_slot);
    assert_eq!(want.len(), 500 - 167);
    assert_eq!(walk_slot(&s, tag_slot, 5), want);
    // Held slots: the tag slots and the plain keys' slots, nothing else.
    let held = s.held_slots();
    let mut slots: Vec<u16> = (0..3000)
        .map(|i| key_slot(format!("plain{i}").as_bytes()))
        .chain((0..3).map(|t| key_slot(format!("tag{t}").as_bytes())))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(
        (0..SLOTS)
            .filter(|&s| held[usize::from(s)])
            .collect::<Vec<_>>(),
        slots
    );
    // Removing nearly everything compacts the shards (entries move): the chains follow.
    for i in 0..3000 {
        if i % 50 != 0 {
            let key = format!("plain{i}");
            let version = s.get_versioned(key.as_bytes()).unwrap().unwrap().version;
            assert!(s.remove_if_version(key.as_bytes(), version).unwrap());
        }
    }
    for t in 0..3 {
        for i in 0..500 {
            let key = tagged(t, i);
            if let Some(item) = s.get_versioned(key.as_bytes()).unwrap() {
                s.remove_if_version(key.as_bytes(), item.version).unwrap();
            }
        }
    }
    s.reclaim_expired(T0, usize::MAX);
    for i in (0..3000).step_by(50) {
        let slot = key_slot(format!("plain{i}").as_bytes());
        assert_eq!(walk_slot(&s, slot, 3), expected(&s, slot));
    }
    assert!(walk_slot(&s, tag_slot, 3).is_empty());
    // An empty store holds no slot.
    s.flush();
    assert!(!s.held_slots().iter().any(|&h| h));
}

#[test]
fn a_slot_walk_survives_its_next_entry_going_away() {
    // One shard: the slot is one chain.
    let s = Store::new(StoreConfig {
        shards: 1,
        ..StoreConfig::default()
    });
    let keys: Vec<String> = (0..40).map(|i| format!("{{t}}:{i}")).collect();
    for key in &keys {
        s.set(key.as_bytes(), b"v", SetOptions::default(), T0)
            .unwrap();
    }
    let slot = key_slot(b"t");
    let (first, cursor) = s.scan_slot(slot, SlotCursor::default(), 10);
    assert_eq!(first.len(), 10);
    let cursor = cursor.unwrap();
    // Remove every key not returned yet: the cursor's next entry is gone, the walk restarts its
    // chain and returns what is left (the first ten again), and ends.
    for key in &keys {
        if !first.iter().any(|(k, _)| k == key.as_bytes()) {
            let version = s.get_versioned(key.as_bytes()).unwrap().unwrap().version;
            s.remove_if_version(key.as_bytes(), version).unwrap();
        }
    }
    let mut rest = Vec::new();
    let mut cursor = Some(cursor);
    let mut steps = 0;
    while let Some(at) = cursor {
        let (items, next) = s.scan_slot(slot, at, 4);
        rest.extend(items.into_iter().map(|(k, _)| k));
        cursor = next;
        steps += 1;
        assert!(steps < 100, "the walk ends");
    }
    rest.sort();
    let mut want: Vec<Bytes> = first.into_iter().map(|(k, _)| k).collect();
    want.sort();
    assert_eq!(rest, want);
}

#[test]
fn compaction_keeps_the_tombstone_floors() {
    let per_item = charge(5, 100);
    let s = Store::new(StoreConfig {
        max_memory_bytes: 1_200 * per_item,
        tombstone_grace_ms: 600_000,
        shards: 1,
        ..StoreConfig::default()
    });
    let payload = [1u8; 100];
    let old = s
        .set(b"gone0", &payload, SetOptions::default(), T0)
        .unwrap()
        .version
        .unwrap();
    s.delete(b"gone0", T0).unwrap();
    let ttl = SetOptions {
        ttl_ms: Some(1_000),
        ..SetOptions::default()
    };
    let mut i = 0;
    while s.stats().tombstones_evicted == 0 {
        assert!(i < 2_000, "the tombstone was never evicted");
        s.set(format!("k{i:04}").as_bytes(), &payload, ttl, T0 + 1)
            .unwrap();
        i += 1;
    }
    let generation = s.shards[0].lock.read().generation();
    assert!(s.reclaim_expired(T0 + 5_000, usize::MAX) > 1_024);
    assert_ne!(
        s.shards[0].lock.read().generation(),
        generation,
        "the shard compacted"
    );
    assert!(
        !s.apply(b"gone0", Some(&payload), old, None, T0 + 5_000)
            .unwrap(),
        "the evicted tombstone's floor outlives the compaction"
    );
    assert_eq!(value(&s, b"gone0", T0 + 5_000), None);
}

#[test]
fn a_hash_slot_lives_in_one_shard_and_its_walk_reads_only_that_shard() {
    let s = Store::new(StoreConfig {
        shards: 8,
        ..StoreConfig::default()
    });
    for i in 0..2_000 {
        s.set(
            format!("key:{i}").as_bytes(),
            b"v",
            SetOptions::default(),
            T0,
        )
        .unwrap();
    }
    let held = s.held_slots();
    for i in 0..2_000 {
        let key = format!("key:{i}");
        let slot = key_slot(key.as_bytes());
        let place = s.place(key.as_bytes());
        assert_eq!(place.shard, usize::from(slot) % 8, "{key}");
        assert!(held[usize::from(slot)], "{key}");
    }
    assert_eq!(
        held.iter().filter(|&&h| h).count(),
        (0..2_000)
            .map(|i| key_slot(format!("key:{i}").as_bytes()))
            .collect::<std::collections::HashSet<_>>()
            .len(),
        "no slot without an entry is reported held"
    );
    // A walk of a slot with entries returns them and ends after its owner shard.
    let slot = key_slot(b"key:0");
    let (items, next) = s.scan_slot(slot, SlotCursor::default(), 1_000);
    assert!(next.is_none());
    assert!(items.iter().any(|(k, _)| &k[..] == b"key:0"));
    assert!(items.iter().all(|(k, _)| key_slot(k) == slot));
    // Visiting a slot (slot digests) sees exactly its entries, for every slot.
    let mut by_slot: std::collections::HashMap<u16, Vec<Vec<u8>>> = Default::default();
    for i in 0..2_000 {
        let key = format!("key:{i}").into_bytes();
        by_slot.entry(key_slot(&key)).or_default().push(key);
    }
    for slot in 0..SLOTS {
        let mut seen = Vec::new();
        s.visit_slot(slot, |key, _| seen.push(key.to_vec()));
        seen.sort();
        let mut expected = by_slot.remove(&slot).unwrap_or_default();
        expected.sort();
        assert_eq!(seen, expected, "slot {slot}");
    }
    // More shards than slots are clamped: every shard still holds whole slots.
    let many = Store::new(StoreConfig {
        shards: 1 << 16,
        ..StoreConfig::default()
    });
    assert_eq!(many.config().shards, usize::from(SLOTS));
}

#[test]
fn serve_stale_keeps_expired_values_readable_through_get_or_stale_only() {
    let s = store().with_serve_stale_ms(1_000);
    let ttl = SetOptions {
        ttl_ms: Some(100),
        ..SetOptions::default()
    };
    s.set(b"k", b"old", ttl, T0).unwrap();
    let (item, stale) = s.get_or_stale(b"k", T0 + 50).unwrap().unwrap();
    assert_eq!((&item.value[..], stale), (&b"old"[..], false), "live");
    // Expired: a plain read misses, get_or_stale answers it as stale within the window.
    assert_eq!(value(&s, b"k", T0 + 100), None);
    let (item, stale) = s.get_or_stale(b"k", T0 + 100).unwrap().unwrap();
    assert_eq!((&item.value[..], stale), (&b"old"[..], true));
    // The expiry task leaves it for the window, then reclaims it.
    assert_eq!(s.reclaim_expired(T0 + 1_099, 100), 0);
    assert!(s.get_or_stale(b"k", T0 + 1_099).unwrap().is_some());
    assert!(
        s.get_or_stale(b"k", T0 + 1_100).unwrap().is_none(),
        "past the window"
    );
    assert_eq!(s.reclaim_expired(T0 + 1_100, 100), 1);
    assert_eq!(s.stats().keys, 0);

    // A write replaces a stale value; a delete leaves nothing stale.
    s.set(b"k", b"old", ttl, T0).unwrap();
    s.set(b"k", b"new", SetOptions::default(), T0 + 200)
        .unwrap();
    let (item, stale) = s.get_or_stale(b"k", T0 + 200).unwrap().unwrap();
    assert_eq!((&item.value[..], stale), (&b"new"[..], false));
    s.delete(b"k", T0 + 300).unwrap();
    assert!(s.get_or_stale(b"k", T0 + 300).unwrap().is_none());
}

#[test]
fn without_serve_stale_get_or_stale_is_get_and_expired_entries_are_reclaimed_at_once() {
    let s = store();
    assert_eq!(s.serve_stale_ms(), 0);
    let ttl = SetOptions {
        ttl_ms: Some(100),
        ..SetOptions::default()
    };
    s.set(b"k", b"v", ttl, T0).unwrap();
    assert!(s.get_or_stale(b"k", T0 + 100).unwrap().is_none());
    assert_eq!(s.reclaim_expired(T0 + 100, 100), 1);
}

/// Records what the store tells its observer.
#[derive(Debug, Default)]
struct Recorder {
    keys: parking_lot::Mutex<Vec<Vec<u8>>>,
    flushes: AtomicUsize,
}

impl KeyObserver for Recorder {
    fn changed(&self, key: &[u8]) {
        self.keys.lock().push(key.to_vec());
    }
    fn flushed(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }
}

impl Recorder {
    /// Whether `key` was told since the last call, and forgets what was told.
    fn told(&self, key: &[u8]) -> bool {
        std::mem::take(&mut *self.keys.lock())
            .iter()
            .any(|k| k == key)
    }
}

fn observed(store: &Store) -> (Arc<Recorder>, Arc<AtomicUsize>) {
    let recorder = Arc::new(Recorder::default());
    let on = Arc::new(AtomicUsize::new(1));
    assert!(store.observe(on.clone(), recorder.clone()));
    (recorder, on)
}

#[test]
fn every_mutation_path_tells_the_observer() {
    let s = store();
    let (rec, _on) = observed(&s);
    let now = T0;
    let k = b"k".as_slice();
    s.set(k, b"1", SetOptions::default(), now).unwrap();
    assert!(rec.told(k), "set");
    s.incr(k, 1, None, now).unwrap();
    assert!(rec.told(k), "incr");
    let version = s.get(k, now).unwrap().unwrap().version;
    s.compare_and_set(k, version, b"5", None, now).unwrap();
    assert!(rec.told(k), "compare_and_set");
    s.set_ttl(k, Some(60_000), now).unwrap();
    assert!(rec.told(k), "set_ttl");
    s.expire(k, Expiry::In(30_000), ExpireCondition::Always, now)
        .unwrap();
    assert!(rec.told(k), "expire");
    s.append(k, b"x", now).unwrap();
    assert!(rec.told(k), "append");
    s.set_range(k, 0, b"9", now).unwrap();
    assert!(rec.told(k), "set_range");
    s.set(k, b"1.5", SetOptions::default(), now).unwrap();
    rec.told(k);
    s.incr_by_float(k, 1.0, now).unwrap();
    assert!(rec.told(k), "incr_by_float");
    s.get_ex(k, Some(Expiry::In(10_000)), now).unwrap();
    assert!(rec.told(k), "get_ex");
    s.take(k, now).unwrap();
    assert!(rec.told(k), "take");
    s.set(k, b"v", SetOptions::default(), now).unwrap();
    s.delete(k, now).unwrap();
    assert!(rec.told(k), "delete");
    s.mset(&[(k, b"m".as_slice())], None, now).unwrap();
    assert!(rec.told(k), "mset");
    s.mdelete(&[k], now).unwrap();
    assert!(rec.told(k), "mdelete");
    s.mset_if_absent(&[(b"nx".as_slice(), b"v".as_slice())], None, now)
        .unwrap();
    assert!(rec.told(b"nx"), "mset_if_absent");
    let remote = Hlc::at_millis(now) + 1_000;
    s.apply(b"r", Some(b"v"), remote, None, now).unwrap();
    assert!(
        rec.told(b"r"),
        "apply (replication, repair, hints, rebalancing)"
    );
    s.remove_if_version(b"r", remote).unwrap();
    assert!(rec.told(b"r"), "remove_if_version (hand-off)");
    s.set(
        b"ttl",
        b"v",
        SetOptions {
            ttl_ms: Some(10),
            ..SetOptions::default()
        },
        now,
    )
    .unwrap();
    rec.told(b"ttl");
    s.reclaim_expired(now + 1_000, 100);
    assert!(rec.told(b"ttl"), "reclaim_expired");
    s.flush();
    assert_eq!(rec.flushes.load(Ordering::Relaxed), 1, "flush");
    s.flush_through(Hlc::at_millis(now + 10), now + 10).unwrap();
    assert_eq!(rec.flushes.load(Ordering::Relaxed), 2, "flush_through");
}

#[test]
fn eviction_tells_the_observer_and_a_switched_off_observer_hears_nothing() {
    let s = small(64 * 1024, EvictionPolicy::Clock);
    let (rec, on) = observed(&s);
    s.set(b"victim", &[0; 512], SetOptions::default(), 1)
        .unwrap();
    rec.told(b"victim");
    for i in 0..1_000u32 {
        s.set(&i.to_be_bytes(), &[0; 512], SetOptions::default(), 1)
            .unwrap();
    }
    assert!(s.stats().evictions > 0);
    assert!(rec.told(b"victim"), "the evicted key was told");
    on.store(0, Ordering::Relaxed);
    s.set(b"quiet", b"v", SetOptions::default(), 1).unwrap();
    assert!(!rec.told(b"quiet"));
}
