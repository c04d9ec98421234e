//! gRPC adapters: they convert wire messages to store calls and back, record metrics, and map
//! errors to `tonic::Status` in one place ([`status`]).
//!
//! **Invariant:** only this module knows `tonic::Status`; the store and the node speak typed errors.

mod admin;
pub mod auth;
mod batched;
mod cache;
mod cluster;
mod digest;
mod forward;
pub mod health;
mod internal;
mod invalidations;
mod lease;
mod pipeline;
mod replica_stream;
pub mod status;
mod update;

pub use admin::AdminService;
pub use auth::AuthLayer;
pub use cache::{Arrival, CacheService};
pub use cluster::ClusterService;
pub use digest::DigestLayer;
pub use health::HealthService;
pub use internal::InternalService;
