//! The Redis front door (RESP): a listener on `--resp-port` that serves Redis clients
//! (`redis-cli`, any language's Redis library) from the same cluster as the gRPC API.
//!
//! - `parse`: reading commands (multi-bulk and inline, pipelined) with limits;
//! - `reply`: encoding replies for RESP2 and RESP3;
//! - `commands`: the commands, run through the node's `Cache` service (routing, forwarding,
//!   replication and metrics as for gRPC);
//! - `strings`: the string and expiry commands beyond GET/SET basics (SET's options, GETDEL,
//!   GETEX, MSETNX, APPEND, SETRANGE, GETRANGE, STRLEN, INCRBYFLOAT, the EXPIRE family, TYPE,
//!   TOUCH), each a store operation done in one step on the key's coordinator;
//! - `table`: the command table (arity, flags, key positions, roles), shared by `COMMAND`,
//!   arity checks, slot routing and role checks;
//! - `server`: the accept loop and the per-connection read–run–reply loop.

pub mod commands;
pub mod parse;
pub mod reply;
pub mod server;
mod strings;
pub mod table;

pub use server::serve;
