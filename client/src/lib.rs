//! Client for the ringcache distributed in-memory cache.
//!
//! A [`Client`] connects to a node of the cluster over gRPC and offers the cache API: reads and
//! writes of byte-string keys and values, TTLs, counters, batches and compare-and-set.
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

#![warn(missing_docs)]

mod builder;
mod client;
mod conn;
mod error;
mod options;
mod wire;

pub use builder::ClientBuilder;
pub use bytes::Bytes;
pub use client::Client;
pub use error::Error;
pub use options::{Consistency, Entry, KeyTtl, SetCondition, SetOptions, SetOutcome};
