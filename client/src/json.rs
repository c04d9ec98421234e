//! Typed values as JSON (feature `serde`): `get_json`, `set_json`, `set_json_ex`, `mget_json`.
//!
//! Values are stored as their `serde_json` text, so any client (ringctl, redis-cli, another
//! language) reads them as JSON too. Encoding happens before anything is sent; a stored value
//! that does not decode as the requested type is [`Error::Codec`] naming the key, not a miss.

use std::time::Duration;

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::{Client, Error, SetOptions, SetOutcome};

fn encode<T: Serialize + ?Sized>(key: &[u8], value: &T) -> Result<Bytes, Error> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| {
        Error::Codec(format!(
            "cannot encode the value of {} as json: {e}",
            show(key)
        ))
    })
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(value).map_err(|e| {
        Error::Codec(format!(
            "the value of {} is not json of the requested type: {e}",
            show(key)
        ))
    })
}

/// A key for a message: quoted text, or escaped bytes when it is not UTF-8.
fn show(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("\"{}\"", key.escape_ascii()),
    }
}

impl Client {
    /// Returns the value at `key` decoded from JSON as a `T`, or `None` when the key does not
    /// exist (feature `serde`).
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] when the stored value is not JSON of type `T`; otherwise as
    /// [`get`](Client::get).
    ///
    /// ```no_run
    /// # async fn run(client: ringcache::Client) -> Result<(), ringcache::Error> {
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Session {
    ///     user: String,
    ///     roles: Vec<String>,
    /// }
    ///
    /// let session = Session { user: "ada".into(), roles: vec!["admin".into()] };
    /// client.set_json("session:9", &session).await?;
    /// let back: Option<Session> = client.get_json("session:9").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        key: impl Into<Bytes>,
    ) -> Result<Option<T>, Error> {
        let key = key.into();
        match self.get(key.clone()).await? {
            Some(value) => decode(&key, &value).map(Some),
            None => Ok(None),
        }
    }

    /// Stores `value` encoded as JSON at `key`, without expiry; returns the new version
    /// (feature `serde`). See [`set`](Client::set).
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] when `value` cannot be serialized (nothing is sent); otherwise as
    /// [`set`](Client::set).
    pub async fn set_json<T: Serialize + ?Sized>(
        &self,
        key: impl Into<Bytes>,
        value: &T,
    ) -> Result<u64, Error> {
        let key = key.into();
        let encoded = encode(&key, value)?;
        self.set(key, encoded).await
    }

    /// Stores `value` encoded as JSON at `key` for `ttl`; returns the new version (feature
    /// `serde`). See [`set_ex`](Client::set_ex).
    pub async fn set_json_ex<T: Serialize + ?Sized>(
        &self,
        key: impl Into<Bytes>,
        value: &T,
        ttl: Duration,
    ) -> Result<u64, Error> {
        let key = key.into();
        let encoded = encode(&key, value)?;
        self.set_ex(key, encoded, ttl).await
    }

    /// Stores `value` encoded as JSON with [`SetOptions`] (a TTL, a condition, ...) (feature
    /// `serde`). See [`set_with`](Client::set_with).
    pub async fn set_json_with<T: Serialize + ?Sized>(
        &self,
        key: impl Into<Bytes>,
        value: &T,
        options: SetOptions,
    ) -> Result<SetOutcome, Error> {
        let key = key.into();
        let encoded = encode(&key, value)?;
        self.set_with(key, encoded, options).await
    }

    /// Returns the values of several keys decoded from JSON as `T`s, in the order of `keys`
    /// (`None` for a missing key); batches as [`mget`](Client::mget) (feature `serde`).
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] naming the first key whose value is not JSON of type `T`.
    pub async fn mget_json<T: DeserializeOwned, K: Into<Bytes>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<T>>, Error> {
        let keys: Vec<Bytes> = keys.into_iter().map(Into::into).collect();
        let values = self.mget(keys.iter().cloned()).await?;
        keys.iter()
            .zip(values)
            .map(|(key, value)| value.map(|v| decode(key, &v)).transpose())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_messages_are_quoted_and_escaped() {
        assert_eq!(show(b"user:1"), "\"user:1\"");
        assert_eq!(show(b"\xff\x00a"), "\"\\xff\\x00a\"");
        let error = decode::<u32>(b"k", b"not json").unwrap_err();
        assert!(
            matches!(&error, Error::Codec(m) if m.contains("\"k\"") && m.contains("not json")),
            "{error:?}"
        );
        assert_eq!(decode::<Vec<u8>>(b"k", b"[1,2]").unwrap(), [1, 2]);
        assert_eq!(encode(b"k", &[1, 2]).unwrap(), Bytes::from("[1,2]"));
    }
}
