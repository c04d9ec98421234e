//! Client for the ringcache distributed in-memory cache.
//!
//! A [`Client`] connects to a node of the cluster over gRPC and offers the cache API: reads and
//! writes of byte-string keys and values, TTLs, counters, batches and compare-and-set.
//!
//! The client is topology-aware: it learns the member list ([`Topology`]) from the seed it
//! connects through, keeps it fresh (a watch stream, and the topology digest every answer
//! carries), computes the consistent-hash ring itself and sends each request straight to its
//! key's primary node. Batches are split by node and sent concurrently. When a node cannot be
//! reached, requests move on to the key's next replica. See [`Client`] for the details.
//!
//! ```no_run
//! use std::time::Duration;
//! use ringcache::{Client, Error, KeyTtl};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Error> {
//!     let client = Client::connect(["127.0.0.1:7379"]).await?;
//!
//!     client.set("greeting", "hello").await?;
//!     assert_eq!(client.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//!
//!     client.set_ex("session:42", "alice", Duration::from_secs(60)).await?;
//!     assert!(matches!(client.ttl("session:42").await?, KeyTtl::ExpiresIn(_)));
//!
//!     let visits = client.incr("visits", 1).await?;
//!     println!("visit #{visits}");
//!     Ok(())
//! }
//! ```
//!
//! A missing key is never an error: reads return `None`. Failures are [`Error`]s;
//! [`Error::is_retryable`] tells those worth retrying.
//!
//! # In production
//!
//! - **Batches** (`mget`, `mset`, `mdelete`) of any size are split by node and into requests
//!   within the limits the nodes state (`max_batch_keys`, `max_message_bytes`) and
//!   [`ClientBuilder::max_batch_keys`], sent concurrently, and answered in order.
//! - **Per-call options**: [`Client::with_timeout`], [`Client::with_consistency`],
//!   [`Client::with_retry`] and [`Client::with_options`] ([`CallOptions`]) return a cheap handle
//!   whose calls use them; a per-call timeout bounds the whole call.
//! - **Retries** ([`RetryPolicy`], [`RetryBudget`]): jittered exponential backoff under a
//!   token-bucket budget, for what is safe to repeat only: a request that never reached a
//!   node, or an idempotent operation (reads, plain sets, deletes) after a broken connection
//!   or an `UNAVAILABLE` answer. `incr`, `append`, `compare_and_set`, conditional sets and the
//!   like are never repeated once they may have run.
//! - **Metrics** through the [`metrics`](https://docs.rs/metrics) facade (requests by operation
//!   and outcome, latency, attempt failures, failovers, retries, batch parts, topology
//!   refreshes, pools and streams; all named `ringcache_client_*` and listed in
//!   [`metrics_catalog`]), and **tracing spans**
//!   `ringcache.request` (operation, the key's hash slot and hash, never the key; the node that
//!   answered; attempts; outcome) with a `ringcache.attempt` span per node tried.
//! - **No transport type in the API**: errors carry [`ServerCode`], not a gRPC library's code;
//!   custom networks plug in a [`Connector`] (a byte stream per connection).
//!
//! # Features
//!
//! - `cli` (off by default): the `ringctl` binary and `ctl`, its library
//!   (`cargo install --path client --features cli`). Without it the crate is the client alone.
//! - `serde`: typed values as JSON, `Client::get_json`, `set_json`, `set_json_ex`,
//!   `set_json_with` and `mget_json`.

#![warn(missing_docs)]

mod breaker;
mod builder;
mod client;
mod conn;
mod connector;
mod error;
mod hot;
#[cfg(feature = "serde")]
mod json;
mod lease;
mod local;
mod near;
mod observe;
mod options;
mod pipeline;
mod refresh;
mod retry;
mod router;
mod security;
mod wire;

#[cfg(feature = "cli")]
pub mod ctl;

pub use breaker::CircuitBreaker;
pub use builder::ClientBuilder;
pub use bytes::Bytes;
pub use client::{Client, ClientStats};
pub use connector::{ConnectFuture, Connector, NodeStream};
pub use error::{Error, ServerCode};
pub use lease::{ComputeError, LeaseOptions, LeaseToken, Leased};
pub use local::{LocalNode, LocalRead};
pub use near::{
    DEFAULT_NEAR_MAX_BYTES, DEFAULT_NEAR_MAX_ENTRIES, DEFAULT_NEAR_TTL, MAX_NEAR_ENTRIES,
    MAX_NEAR_TTL, NEAR_ENTRY_OVERHEAD, NEAR_STREAM_RETRY, NearCacheOptions, NearCacheStats,
};
/// The catalog of the client's metrics (`ringcache_client_*`): name, type, unit, labels, help.
pub use observe::catalog as metrics_catalog;
pub use options::{
    CallOptions, Consistency, Entry, GetExpiry, KeyTtl, RetryBudget, RetryPolicy, SetCondition,
    SetOptions, SetOutcome,
};
pub use ringcache_proto::topology::{Member, NodeState, Topology};
pub use security::TlsOptions;

/// The examples of the crate's own README (its registry page), compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
