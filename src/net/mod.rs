//! The network edge: what comes in (client connections and their limits,
//! `connections`; what pingora would misread in them, `screen`; how a
//! listener refuses on the wire, `refusals`; request bodies at once,
//! `bodies`; the listeners sharing one service, `listeners`; CONNECT
//! tunnels, `tunnel`; readiness probes, `readiness`), what goes out (origin
//! targets and the fetch client, `origin`, with its idle keep-alive
//! connections, `idle_pool`; the peer channel, `channel`; what both report,
//! `fetch`; names looked up, `dns`), TLS (`peer_tls` between peers, `tls_files` for certificates read from files and reloaded) and secrets read from
//! files (`secret_files`), both on `watched_files`. No caching decisions
//! are made here.

pub(crate) mod bodies;
pub mod channel;
pub(crate) mod connections;
pub(crate) mod dns;
pub(crate) mod fetch;
pub(crate) mod idle_pool;
pub(crate) mod inject;
pub(crate) mod listeners;
pub(crate) mod origin;
pub(crate) mod peer_tls;
pub(crate) mod readiness;
pub(crate) mod refusals;
pub(crate) mod screen;
pub(crate) mod secret_files;
pub(crate) mod tls_files;
pub(crate) mod tunnel;
pub(crate) mod watched_files;
