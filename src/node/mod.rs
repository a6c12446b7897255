//! The node: what one ringside process shares between its listeners.
//!
//! The app-facing and peer listeners (`proxy`) and the admin listener
//! (`admin`) each hold the same `Arc<Node>`: the configuration, the origins
//! it may reach (`routes`), and the [`Filler`] that owns the cache, the
//! in-flight fills and, in a cluster, the membership and hot area. Nothing
//! here knows about listeners, so both sides depend on it and not on each
//! other.

pub(crate) mod handoff;
pub(crate) mod partitions;
pub(crate) mod routes;

use crate::cache::keys;
use crate::cache::singleflight::Group;
use crate::cache::store::Store;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::fill::Filler;
use crate::metrics;
use crate::net::origin::{OriginClient, OriginTarget};
use crate::node::routes::Origins;
use partitions::Partitions;
use std::sync::Arc;

pub struct Node {
    pub config: Arc<Config>,
    pub origins: Origins,
    pub filler: Arc<Filler>,
    /// Origins and peers are reached through it: the fills' upstream, and
    /// what else speaks to them (purges, announcements, handoff, tunnels).
    pub client: Arc<OriginClient>,
    /// Names the cache partitions of `scope: per-credential` rules.
    pub partitions: Partitions,
}

impl Node {
    /// A node whose own keys live in `store`, in `cluster` if there is one;
    /// an error names the field of what could not be read (an injected
    /// header's file).
    pub fn new(
        config: Arc<Config>,
        store: Store,
        cluster: Option<Arc<Cluster>>,
    ) -> crate::error::Result<Node> {
        let client = Arc::new(
            cluster
                .as_ref()
                .map_or_else(|| OriginClient::new(None), |c| c.peer_client()),
        );
        let filler = Arc::new(Filler {
            flights: Group::new(),
            upstream: client.clone(),
            store: Arc::new(store),
            cluster,
            asking_previous: Default::default(),
        });
        let secret = cluster_secret(&config);
        Ok(Node {
            origins: Origins::new(&config)?,
            partitions: Partitions::new(secret.as_deref(), config.credential_headers()),
            config,
            filler,
            client,
        })
    }

    pub fn store(&self) -> &Store {
        &self.filler.store
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.filler.cluster.as_ref()
    }

    /// Every store that may hold a key: this node's own and, in a cluster,
    /// the hot area's mirrors of keys other nodes own.
    pub fn stores(&self) -> Vec<&Store> {
        let mut stores = vec![self.store()];
        if let Some(cluster) = self.cluster() {
            stores.push(&cluster.hot.store);
        }
        stores
    }

    /// Remove the URL of `key` and everything derived from it (or, with
    /// `prefix`, every key that starts with `key`) from every store of this
    /// node, and forget the fills of it under way: a request after this
    /// starts a fill of its own instead of joining one that began before
    /// and may bring what the origin had then (see `singleflight`).
    pub fn purge_here(&self, key: &str, prefix: bool) {
        for store in self.stores() {
            match prefix {
                true => store.remove_prefix(key),
                false => store.remove_url(key),
            }
        }
        let flights = &self.filler.flights;
        match prefix {
            true => flights.forget_where(|flight| flight.starts_with(key)),
            false => flights.forget_where(|flight| keys::url_of(flight) == key),
        }
        metrics::PURGES.inc();
    }

    /// The plain cache key of a normalised URI at `target` (see `keys.rs`).
    pub fn cache_key(&self, target: &OriginTarget, uri: &http::Uri) -> String {
        keys::plain(&target.key_prefix, uri, self.config.cache.include_query)
    }
}

/// The cluster secret as this node started with it (from the file when
/// `cluster.secret_file` names one), which keys the credential partitions
/// alike on every member; None without a cluster (or when the file cannot
/// be read: the partitions then get a random key of their own, and this
/// node's names for them match no other member's, so it fetches rather
/// than shares).
fn cluster_secret(config: &Config) -> Option<String> {
    let cluster = &config.cluster;
    if !cluster.enabled {
        return None;
    }
    match cluster.secret_file.trim() {
        "" => Some(cluster.secret.clone()),
        path => crate::net::secret_files::read("cluster.secret_file", path).ok(),
    }
}
