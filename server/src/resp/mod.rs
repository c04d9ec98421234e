//! The Redis front door (RESP): reading commands off a connection (`parse`). The listener, the
//! commands and the Redis Cluster protocol build on it.

pub mod parse;
