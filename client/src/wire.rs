//! Conversion of every request to and from its protobuf messages, with the local argument checks.
//!
//! Only what is certain is checked here (an empty key, a zero TTL); limits that depend on the
//! node's configuration (key and value sizes, batch sizes) are left to the node.

use std::time::Duration;

use bytes::Bytes;
use ringcache_proto::v1 as pb;

use crate::{
    Error,
    options::{Consistency, Entry, KeyTtl, SetCondition, SetOptions, SetOutcome},
};

/// Checks a key and takes ownership of it.
pub(crate) fn key(key: impl Into<Bytes>) -> Result<Bytes, Error> {
    let key = key.into();
    if key.is_empty() {
        return Err(Error::InvalidArgument("key must not be empty".to_owned()));
    }
    Ok(key)
}

/// Checks every key of a batch.
pub(crate) fn keys<K: Into<Bytes>>(keys: impl IntoIterator<Item = K>) -> Result<Vec<Bytes>, Error> {
    keys.into_iter().map(key).collect()
}

/// A TTL in whole milliseconds: zero is rejected, anything below 1 ms counts as 1 ms, and
/// fractions of a millisecond above that are dropped.
pub(crate) fn ttl_ms(ttl: Duration) -> Result<u64, Error> {
    if ttl.is_zero() {
        return Err(Error::InvalidArgument(
            "ttl must be greater than zero".to_owned(),
        ));
    }
    Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
}

fn optional_ttl_ms(ttl: Option<Duration>) -> Result<Option<u64>, Error> {
    ttl.map(ttl_ms).transpose()
}

fn ttl_from_ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// The wire value of a consistency; `None` leaves the choice to the cluster.
pub(crate) fn consistency(consistency: Option<Consistency>) -> i32 {
    let proto = match consistency {
        None => pb::Consistency::Unspecified,
        Some(Consistency::One) => pb::Consistency::One,
        Some(Consistency::Quorum) => pb::Consistency::Quorum,
        Some(Consistency::All) => pb::Consistency::All,
    };
    proto as i32
}

fn condition(condition: SetCondition) -> i32 {
    let proto = match condition {
        SetCondition::Always => pb::SetCondition::Always,
        SetCondition::IfAbsent => pb::SetCondition::IfAbsent,
        SetCondition::IfPresent => pb::SetCondition::IfPresent,
    };
    proto as i32
}

// ---- Get ----------------------------------------------------------------------------------------

pub(crate) fn get_request(key: Bytes, consistency_: Option<Consistency>) -> pb::GetRequest {
    pb::GetRequest {
        key,
        consistency: consistency(consistency_),
        tracking_id: 0,
    }
}

pub(crate) fn entry(response: pb::GetResponse) -> Option<Entry> {
    response.found.then(|| Entry {
        value: response.value,
        version: response.version,
        ttl: response.ttl_ms.map(ttl_from_ms),
    })
}

pub(crate) fn value(response: pb::GetResponse) -> Option<Bytes> {
    response.found.then_some(response.value)
}

// ---- Set ----------------------------------------------------------------------------------------

pub(crate) fn set_request(
    key: Bytes,
    value: Bytes,
    options: &SetOptions,
    default_consistency: Option<Consistency>,
) -> Result<pb::SetRequest, Error> {
    Ok(pb::SetRequest {
        key,
        value,
        ttl_ms: optional_ttl_ms(options.ttl)?,
        condition: condition(options.condition),
        return_previous: options.return_previous,
        consistency: consistency(options.consistency.or(default_consistency)),
        lease_token: options.lease.map_or(0, crate::LeaseToken::get),
        ..pb::SetRequest::default()
    })
}

pub(crate) fn set_outcome(response: pb::SetResponse) -> SetOutcome {
    SetOutcome {
        stored: response.stored,
        version: response.stored.then_some(response.version),
        previous: response.previous,
    }
}

/// The version of an unconditional set, which must have been stored.
pub(crate) fn set_version(response: &pb::SetResponse) -> Result<u64, Error> {
    if response.stored {
        Ok(response.version)
    } else {
        Err(Error::Protocol(
            "the node did not store an unconditional set".to_owned(),
        ))
    }
}

// ---- Delete -------------------------------------------------------------------------------------

pub(crate) fn delete_request(key: Bytes, consistency_: Option<Consistency>) -> pb::DeleteRequest {
    pb::DeleteRequest {
        key,
        consistency: consistency(consistency_),
        return_previous: false,
    }
}

// ---- MGet / MSet / MDelete ----------------------------------------------------------------------

pub(crate) fn mget_request(keys: Vec<Bytes>, consistency_: Option<Consistency>) -> pb::MGetRequest {
    pb::MGetRequest {
        keys,
        consistency: consistency(consistency_),
        tracking_id: 0,
    }
}

pub(crate) fn mget_values(
    response: pb::MGetResponse,
    requested: usize,
) -> Result<Vec<Option<Bytes>>, Error> {
    check_len("mget", response.results.len(), requested)?;
    Ok(response.results.into_iter().map(value).collect())
}

pub(crate) fn mset_request<K: Into<Bytes>, V: Into<Bytes>>(
    entries: impl IntoIterator<Item = (K, V)>,
    ttl: Option<Duration>,
    consistency_: Option<Consistency>,
) -> Result<pb::MSetRequest, Error> {
    let entries = entries
        .into_iter()
        .map(|(k, v)| {
            Ok(pb::KeyValue {
                key: key(k)?,
                value: v.into(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(pb::MSetRequest {
        entries,
        ttl_ms: optional_ttl_ms(ttl)?,
        consistency: consistency(consistency_),
        if_absent: false,
    })
}

pub(crate) fn mset_versions(
    response: pb::MSetResponse,
    requested: usize,
) -> Result<Vec<u64>, Error> {
    check_len("mset", response.versions.len(), requested)?;
    Ok(response.versions)
}

pub(crate) fn mdelete_request(
    keys: Vec<Bytes>,
    consistency_: Option<Consistency>,
) -> pb::MDeleteRequest {
    pb::MDeleteRequest {
        keys,
        consistency: consistency(consistency_),
    }
}

/// The encoded size of a key in a batch request (`repeated bytes keys`), for splitting batches
/// within the message limit.
pub(crate) fn key_size(key: &Bytes) -> usize {
    prost::encoding::bytes::encoded_len(1, key)
}

/// The encoded size of a key-value pair in an `MSet` request.
pub(crate) fn entry_size(entry: &pb::KeyValue) -> usize {
    prost::encoding::message::encoded_len(1, entry)
}

fn check_len(what: &str, got: usize, requested: usize) -> Result<(), Error> {
    if got == requested {
        Ok(())
    } else {
        Err(Error::Protocol(format!(
            "{what} answered {got} results for {requested} keys"
        )))
    }
}

// ---- Incr ---------------------------------------------------------------------------------------

pub(crate) fn incr_request(
    key: Bytes,
    delta: i64,
    ttl: Option<Duration>,
    consistency_: Option<Consistency>,
) -> Result<pb::IncrRequest, Error> {
    Ok(pb::IncrRequest {
        key,
        delta,
        ttl_ms: optional_ttl_ms(ttl)?,
        consistency: consistency(consistency_),
    })
}

/// The delta that decrements by `delta`.
pub(crate) fn negate_delta(delta: i64) -> Result<i64, Error> {
    delta.checked_neg().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "cannot decrement by {delta}: the increment would overflow"
        ))
    })
}

// ---- CompareAndSet ------------------------------------------------------------------------------

pub(crate) fn cas_request(
    key: Bytes,
    expected_version: u64,
    value: Bytes,
    ttl: Option<Duration>,
    consistency_: Option<Consistency>,
) -> Result<pb::CompareAndSetRequest, Error> {
    Ok(pb::CompareAndSetRequest {
        key,
        expected_version,
        value,
        ttl_ms: optional_ttl_ms(ttl)?,
        consistency: consistency(consistency_),
    })
}

// ---- Expire / Persist / Ttl ---------------------------------------------------------------------

pub(crate) fn expire_request(
    key: Bytes,
    ttl: Duration,
    consistency_: Option<Consistency>,
) -> Result<pb::ExpireRequest, Error> {
    Ok(pb::ExpireRequest {
        key,
        ttl_ms: ttl_ms(ttl)?,
        consistency: consistency(consistency_),
        ..pb::ExpireRequest::default()
    })
}

pub(crate) fn persist_request(key: Bytes, consistency_: Option<Consistency>) -> pb::PersistRequest {
    pb::PersistRequest {
        key,
        consistency: consistency(consistency_),
    }
}

pub(crate) fn ttl_request(key: Bytes, consistency_: Option<Consistency>) -> pb::TtlRequest {
    pb::TtlRequest {
        key,
        consistency: consistency(consistency_),
    }
}

pub(crate) fn key_ttl(response: &pb::TtlResponse) -> KeyTtl {
    match (response.found, response.ttl_ms) {
        (false, _) => KeyTtl::Missing,
        (true, None) => KeyTtl::Persistent,
        (true, Some(ms)) => KeyTtl::ExpiresIn(ttl_from_ms(ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_sent_in_milliseconds() {
        assert_eq!(ttl_ms(Duration::from_secs(3)).unwrap(), 3000);
        assert_eq!(ttl_ms(Duration::from_micros(1500)).unwrap(), 1);
        assert_eq!(ttl_ms(Duration::from_micros(2999)).unwrap(), 2);
        assert_eq!(ttl_ms(Duration::MAX).unwrap(), u64::MAX);
    }

    #[test]
    fn sub_millisecond_ttl_rounds_up() {
        assert_eq!(ttl_ms(Duration::from_nanos(1)).unwrap(), 1);
        assert_eq!(ttl_ms(Duration::from_micros(999)).unwrap(), 1);
    }

    #[test]
    fn zero_ttl_is_rejected() {
        assert!(matches!(
            ttl_ms(Duration::ZERO),
            Err(Error::InvalidArgument(m)) if m == "ttl must be greater than zero"
        ));
        let options = SetOptions::new().ttl(Duration::ZERO);
        assert!(set_request(Bytes::from("k"), Bytes::new(), &options, None).is_err());
        assert!(expire_request(Bytes::from("k"), Duration::ZERO, None).is_err());
        assert!(mset_request([("k", "v")], Some(Duration::ZERO), None).is_err());
    }

    #[test]
    fn empty_keys_are_rejected() {
        assert!(matches!(
            key(""),
            Err(Error::InvalidArgument(m)) if m == "key must not be empty"
        ));
        assert!(keys(["a", ""]).is_err());
        assert!(mset_request([("", "v")], None, None).is_err());
        assert_eq!(key("a").unwrap(), Bytes::from_static(b"a"));
    }

    #[test]
    fn decrement_of_the_smallest_delta_is_rejected() {
        assert_eq!(negate_delta(5).unwrap(), -5);
        assert_eq!(negate_delta(i64::MAX).unwrap(), -i64::MAX);
        assert!(matches!(
            negate_delta(i64::MIN),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn set_request_carries_every_option() {
        let options = SetOptions::new()
            .ttl(Duration::from_secs(1))
            .if_present()
            .return_previous()
            .consistency(Consistency::All);
        let request = set_request(
            Bytes::from("k"),
            Bytes::from("v"),
            &options,
            Some(Consistency::One),
        )
        .unwrap();
        assert_eq!(request.ttl_ms, Some(1000));
        assert_eq!(request.condition, pb::SetCondition::IfPresent as i32);
        assert!(request.return_previous);
        assert_eq!(request.consistency, pb::Consistency::All as i32);

        let plain = set_request(
            Bytes::from("k"),
            Bytes::new(),
            &SetOptions::new(),
            Some(Consistency::Quorum),
        )
        .unwrap();
        assert_eq!(plain.ttl_ms, None);
        assert_eq!(plain.condition, pb::SetCondition::Always as i32);
        assert_eq!(plain.consistency, pb::Consistency::Quorum as i32);
        assert_eq!(consistency(None), pb::Consistency::Unspecified as i32);
    }

    #[test]
    fn responses_convert() {
        let miss = pb::GetResponse::default();
        assert_eq!(entry(miss.clone()), None);
        assert_eq!(value(miss), None);
        let hit = pb::GetResponse {
            found: true,
            value: Bytes::from("v"),
            version: 7,
            ttl_ms: Some(1500),
            hot: false,
            tracked: false,
        };
        assert_eq!(
            entry(hit.clone()),
            Some(Entry {
                value: Bytes::from("v"),
                version: 7,
                ttl: Some(Duration::from_millis(1500)),
            })
        );
        // An empty value is a hit, not a miss.
        let empty = pb::GetResponse {
            found: true,
            ..Default::default()
        };
        assert_eq!(value(empty), Some(Bytes::new()));

        let not_stored = pb::SetResponse {
            stored: false,
            version: 0,
            previous: Some(Bytes::from("old")),
        };
        assert_eq!(
            set_outcome(not_stored.clone()),
            SetOutcome {
                stored: false,
                version: None,
                previous: Some(Bytes::from("old")),
            }
        );
        assert!(matches!(set_version(&not_stored), Err(Error::Protocol(_))));

        assert_eq!(key_ttl(&pb::TtlResponse::default()), KeyTtl::Missing);
        assert_eq!(
            key_ttl(&pb::TtlResponse {
                found: true,
                ttl_ms: None,
                ..Default::default()
            }),
            KeyTtl::Persistent
        );
        assert_eq!(
            key_ttl(&pb::TtlResponse {
                found: true,
                ttl_ms: Some(250),
                ..Default::default()
            }),
            KeyTtl::ExpiresIn(Duration::from_millis(250))
        );
    }

    #[test]
    fn batch_answers_must_match_the_request() {
        let response = pb::MGetResponse {
            results: vec![pb::GetResponse::default()],
        };
        assert!(matches!(
            mget_values(response.clone(), 2),
            Err(Error::Protocol(_))
        ));
        assert_eq!(mget_values(response, 1).unwrap(), vec![None]);
        let versions = pb::MSetResponse {
            versions: vec![1, 2],
        };
        assert!(mset_versions(versions.clone(), 3).is_err());
        assert_eq!(mset_versions(versions, 2).unwrap(), vec![1, 2]);
    }
}
