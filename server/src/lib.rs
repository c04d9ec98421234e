//! `ringcached`, one node of a ringcache cluster, as a library: the binary and the tests start
//! nodes through [`node::Node`].

pub mod store;
