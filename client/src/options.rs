//! Per-request options and the typed results of requests.

use std::time::Duration;

use bytes::Bytes;

/// How many replicas of a key must take part in a request before it is answered.
///
/// When no consistency is chosen (the default), the cluster's default applies: `Quorum` for
/// writes, `One` for reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of the key's replicas.
    Quorum,
    /// Every replica of the key.
    All,
}

/// When a [`set_with`](crate::Client::set_with) takes effect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SetCondition {
    /// Always store (a plain set).
    #[default]
    Always,
    /// Store only when the key does not exist (Redis `NX`).
    IfAbsent,
    /// Store only when the key exists (Redis `XX`).
    IfPresent,
}

/// Options of [`Client::set_with`](crate::Client::set_with).
///
/// ```
/// use std::time::Duration;
/// use ringcache::SetOptions;
///
/// let options = SetOptions::new().ttl(Duration::from_secs(60)).if_absent();
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetOptions {
    /// Time to live; `None` means the key never expires.
    pub ttl: Option<Duration>,
    /// When the write takes effect.
    pub condition: SetCondition,
    /// Return the value the key held before the write.
    pub return_previous: bool,
    /// Write consistency; `None` uses the client's default.
    pub consistency: Option<Consistency>,
}

impl SetOptions {
    /// Options of a plain set: no TTL, no condition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Expires the key after `ttl`.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the condition under which the write takes effect.
    #[must_use]
    pub fn condition(mut self, condition: SetCondition) -> Self {
        self.condition = condition;
        self
    }

    /// Stores only when the key does not exist.
    #[must_use]
    pub fn if_absent(self) -> Self {
        self.condition(SetCondition::IfAbsent)
    }

    /// Stores only when the key exists.
    #[must_use]
    pub fn if_present(self) -> Self {
        self.condition(SetCondition::IfPresent)
    }

    /// Returns the previous value in [`SetOutcome::previous`].
    #[must_use]
    pub fn return_previous(mut self) -> Self {
        self.return_previous = true;
        self
    }

    /// Overrides the client's default consistency for this write.
    #[must_use]
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = Some(consistency);
        self
    }
}

/// The result of [`Client::set_with`](crate::Client::set_with).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetOutcome {
    /// Whether the value was stored; `false` only when the condition did not hold.
    pub stored: bool,
    /// The version of the stored value; `None` when nothing was stored.
    pub version: Option<u64>,
    /// The value the key held before, when [`SetOptions::return_previous`] was set and the key
    /// existed.
    pub previous: Option<Bytes>,
}

/// A stored value with its metadata, as returned by [`Client::get_entry`](crate::Client::get_entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Bytes,
    /// The value's version: greater for every later write of the key. Use it with
    /// [`Client::compare_and_set`](crate::Client::compare_and_set).
    pub version: u64,
    /// Time the key has left to live; `None` when it never expires.
    pub ttl: Option<Duration>,
}

/// A key's remaining lifetime, as returned by [`Client::ttl`](crate::Client::ttl).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyTtl {
    /// The key does not exist.
    Missing,
    /// The key exists and never expires.
    Persistent,
    /// The key expires after this long.
    ExpiresIn(Duration),
}

/// The TTL change of [`Client::get_ex`](crate::Client::get_ex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetExpiry {
    /// Expire this long from now (> 0).
    In(std::time::Duration),
    /// Expire at this time; a time already past deletes the key (its value is still returned).
    At(std::time::SystemTime),
    /// Remove the TTL (nothing changes for a key without one).
    Persist,
}
