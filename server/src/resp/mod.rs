//! The Redis front door (RESP): a listener on `--resp-port` that serves Redis clients
//! (`redis-cli`, any language's Redis library) from the same cluster as the gRPC API.
//!
//! - `parse`: reading commands (multi-bulk and inline, pipelined) with limits;
//! - `reply`: encoding replies for RESP2 and RESP3;
//! - `cluster`: the Redis Cluster protocol (`CLUSTER ...`, `-MOVED`/`-CROSSSLOT` routing of
//!   cluster-aware connections);
//! - `commands`: the commands, run through the node's `Cache` service (routing, forwarding,
//!   replication and metrics as for gRPC);
//! - `strings`: the string and expiry commands beyond GET/SET basics (SET's options, GETDEL,
//!   GETEX, MSETNX, APPEND, SETRANGE, GETRANGE, STRLEN, INCRBYFLOAT, the EXPIRE family, TYPE,
//!   TOUCH), each a store operation done in one step on the key's coordinator;
//! - `keyspace`: `SCAN`, `RANDOMKEY`, `DBSIZE`, `FLUSHALL`/`FLUSHDB`; `glob`: Redis's `MATCH`
//!   patterns;
//! - `table`: the command table (arity, flags, key positions, roles), shared by `COMMAND`,
//!   arity checks, slot routing and role checks;
//! - `gate`: the checks every command passes first (known, arity, AUTH, role) and its count;
//! - `client`: connection state, the registry of open connections, `AUTH`, `HELLO`, `RESET`,
//!   `CLIENT`;
//! - `introspect`: `COMMAND`, `INFO`, `TIME`;
//! - `refusal`: Redis's replies to the refusals of the `Cache` service (its `tonic::Status`);
//! - `server`: the accept loop (caps, TLS, timeouts) and the per-connection read–run–reply loop.

pub mod client;
pub mod cluster;
pub mod commands;
mod gate;
pub mod glob;
pub mod introspect;
pub mod keyspace;
mod lease;
pub mod parse;
// RESP adapts the gRPC `Cache` service in-process: this module alone reads the `tonic::Status`
// its handlers refuse a command with, and turns it into Redis's reply.
#[allow(clippy::disallowed_types)]
mod refusal;
pub mod reply;
pub mod server;
mod strings;
pub mod table;

pub use server::serve;
