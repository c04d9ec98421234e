//! The Redis front door (RESP): a listener on `--resp-port` that serves Redis clients
//! (`redis-cli`, any language's Redis library) from the same cluster as the gRPC API.
//!
//! - `parse`: reading commands (multi-bulk and inline, pipelined) with limits;
//! - `reply`: encoding replies for RESP2 and RESP3;
//! - `commands`: the commands, run through the node's `Cache` service (routing, forwarding,
//!   replication and metrics as for gRPC);
//! - `table`: the command table (arity, flags, key positions, roles), shared by `COMMAND`,
//!   arity checks, slot routing and role checks;
//! - `server`: the accept loop and the per-connection read–run–reply loop.

pub mod commands;
pub mod glob;
pub mod keyspace;
pub mod parse;
pub mod reply;
pub mod server;
pub mod table;

pub use server::serve;
