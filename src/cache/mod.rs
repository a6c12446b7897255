//! The cache of one node: the byte-bounded store of responses (`store`),
//! the layout of the keys everything is looked up by (`keys`), and the
//! singleflight group that makes concurrent misses one load
//! (`singleflight`). Nothing here speaks to the network.

pub(crate) mod keys;
pub(crate) mod singleflight;
pub(crate) mod store;
