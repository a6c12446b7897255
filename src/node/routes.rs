//! Which origin a request is for, and which path rules apply there.
//!
//! The app's requests go to the origin of the listener they arrive on (the
//! configured origin on `listen`, each of `upstreams` on its own), unless
//! the app uses ringside as its HTTP proxy: then an absolute-form target
//! (`GET http://api.example/x HTTP/1.1`) names the origin, which must be on
//! `forward_proxy.allow`. Peers name the origin in a signed header; purges in
//! `ringside-origin`. All of them resolve here, against one table built
//! from the configuration, so that an origin is reachable only if the
//! configuration lists it. Path rules belong to the origin, not to the
//! listener: the owner of a key applies the same rules as the node that
//! asked it.

use crate::config::{Config, OriginUrl, PathRule};
use crate::net::inject::Injected;
use crate::net::origin::OriginTarget;
use http::Method;
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::http::RequestHeader;
use std::collections::HashMap;
use std::sync::Arc;

/// The origins this node may reach.
pub struct Origins {
    /// The reverse-proxy origin: requests in origin-form go here.
    default: Arc<OriginTarget>,
    /// Every origin by URL: the reverse origin, the upstreams, the
    /// forward-proxy allowlist.
    by_url: HashMap<OriginUrl, Arc<OriginTarget>>,
    /// The upstreams that have rules of their own.
    own_rules: HashMap<OriginUrl, Vec<PathRule>>,
    /// `cache.rules`, for every other origin.
    rules: Vec<PathRule>,
}

/// Why a request has no origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    /// CONNECT after a connection's first request.
    LateConnect,
    /// An absolute-form target whose authority pingora and we may read apart.
    AmbiguousTarget,
    InvalidTarget,
    UnsupportedScheme,
    /// An origin not on `forward_proxy.allow`.
    NotAllowed,
}

impl Unroutable {
    /// The answer's status.
    pub fn status(self) -> u16 {
        match self {
            Unroutable::LateConnect => 405,
            Unroutable::NotAllowed => 403,
            _ => 400,
        }
    }

    /// The answer's body.
    pub fn message(self) -> &'static str {
        match self {
            Unroutable::LateConnect => "CONNECT only as a connection's first request, to a host on forward_proxy.connect_allow\n",
            Unroutable::AmbiguousTarget => "ambiguous request target\n",
            Unroutable::InvalidTarget => "invalid request target\n",
            Unroutable::UnsupportedScheme => "unsupported URL scheme\n",
            Unroutable::NotAllowed => "origin is not on ringside's forward_proxy allowlist\n",
        }
    }
}

impl Origins {
    /// The origins of a checked `config`, the values of the headers they
    /// inject read now (an error names the field: a file that cannot be read).
    pub fn new(config: &Config) -> crate::error::Result<Origins> {
        let injected = Injected::load("origin.inject_headers", &config.origin.inject_headers)?;
        let origin = config
            .origin()
            .map_err(|e| crate::error::Error::invalid(e.to_string()))?;
        let default = OriginTarget::new(origin.url.clone(), config)
            .with_injected(injected)
            .with_base_path(origin.base_path.clone());
        let default = Arc::new(default);
        let mut by_url = HashMap::new();
        by_url.insert(default.url.clone(), default.clone());
        let mut own_rules = HashMap::new();
        for (i, upstream) in config.upstreams.iter().enumerate() {
            let url = &upstream.origin.url;
            if let Some(rules) = &upstream.rules {
                own_rules.insert(url.clone(), rules.clone());
            }
            let field = format!("upstreams[{i}].inject_headers");
            let injected = Injected::load(&field, &upstream.inject_headers)?;
            let target = OriginTarget::new(url.clone(), config)
                .with_injected(injected)
                .with_base_path(upstream.origin.base_path.clone());
            by_url.entry(url.clone()).or_insert(Arc::new(target));
        }
        for url in &config.forward_proxy.allow {
            let target = Arc::new(OriginTarget::new(url.clone(), config));
            by_url.entry(url.clone()).or_insert(target);
        }
        Ok(Origins {
            default,
            by_url,
            own_rules,
            rules: config.cache.rules.clone(),
        })
    }

    /// The rule for a path at `target`: the first whose prefix matches.
    pub fn rule_for(&self, target: &OriginTarget, path: &str) -> Option<&PathRule> {
        self.own_rules
            .get(&target.url)
            .unwrap_or(&self.rules)
            .iter()
            .find(|r| path.starts_with(&r.prefix))
    }

    /// The reverse-proxy origin.
    pub fn default(&self) -> &Arc<OriginTarget> {
        &self.default
    }

    /// The origin with this URL, if this node may reach it.
    pub fn get(&self, url: &OriginUrl) -> Option<Arc<OriginTarget>> {
        self.by_url.get(url).cloned()
    }

    /// The origin of an app's request that arrived on the listener of `listener_origin`.
    pub fn route(
        &self,
        req: &RequestHeader,
        listener_origin: &Arc<OriginTarget>,
    ) -> Result<Arc<OriginTarget>, Unroutable> {
        if req.method == Method::CONNECT {
            // Tunnels open at a connection's start (tunnel.rs), or not at all.
            return Err(Unroutable::LateConnect);
        }
        // pingora keeps only the path in `req.uri`; an absolute-form
        // target's scheme and authority are in the raw target.
        let (scheme, authority) = match raw_target_authority(req.raw_path()) {
            RawTargetAuthority::None => return Ok(listener_origin.clone()),
            RawTargetAuthority::AmbiguousAuthority => return Err(Unroutable::AmbiguousTarget),
            RawTargetAuthority::Absolute {
                scheme, authority, ..
            } => (scheme, authority),
        };
        let url = absolute_origin(scheme, authority)?;
        self.get(&url).ok_or(Unroutable::NotAllowed)
    }
}

/// The origin URL of an absolute-form target's scheme and authority.
fn absolute_origin(scheme: &[u8], authority: &[u8]) -> Result<OriginUrl, Unroutable> {
    let authority =
        http::uri::Authority::try_from(authority).map_err(|_| Unroutable::InvalidTarget)?;
    let tls = match scheme.to_ascii_lowercase().as_slice() {
        b"http" => false,
        b"https" => true,
        _ => return Err(Unroutable::UnsupportedScheme),
    };
    Ok(OriginUrl {
        tls,
        host: authority
            .host()
            .trim_matches(['[', ']'])
            .to_ascii_lowercase(),
        port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
    })
}
