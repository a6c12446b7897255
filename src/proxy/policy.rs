//! The caching policy of one request: its path rule, and what the rule
//! makes of this request. Decided once, in `request_filter`, from the
//! normalised request, so that the key, the rules the fill judges the
//! answer by and what the client is told (scope, override) agree.
//!
//! - **Scope** (`scope:` on the rule): `shared` caches for every caller, as
//!   RFC 9111's shared cache does; `per-credential` gives each credential
//!   its own partition (a request without one uses the shared cache), in
//!   which a private cache's rules apply; `shared-despite-credentials`
//!   stores and shares although requests carry credentials (the operator's
//!   assertion). A credential is any of the credential headers
//!   (`cache.credential_headers` and `_extra`), whatever carries it.
//! - **Override** (`override:`): the origin directives the rule's ttl wins
//!   over, for ringside's own decisions.
//! - **Body key** (`methods:`, QUERY on every rule): which methods besides
//!   GET and HEAD are reads answered from the cache, keyed on their body.

use super::Ringside;
use crate::config::{BodyKey, Override, PathRule, Scope};
use crate::net::origin::OriginTarget;
use crate::rfc::cache_rules::{Audience, Overrides, RuleOptions};
use http::Method;
use pingora::http::RequestHeader;

/// What one request's path rule makes of it.
pub struct Policy {
    /// The rule says never cache.
    pub bypass: bool,
    /// What the fill judges the answer by.
    pub rules: RuleOptions,
    /// The scope that applies to this request: `per-credential` only when it
    /// carries a credential, `shared-despite-credentials` only when the
    /// credential was set aside.
    pub scope: Scope,
    /// The request's partition (`per-credential` with a credential).
    pub partition: Option<String>,
    /// How the body of a POST or QUERY keys the request.
    pub body: BodyPolicy,
    /// The digest of the body that keys this request, once read (`body.rs`).
    pub body_digest: Option<String>,
}

/// Body-keyed reads under a rule.
#[derive(Debug, Clone, Copy)]
pub struct BodyPolicy {
    /// The rule lists POST.
    pub post: bool,
    pub key: BodyKey,
    /// Bodies longer than this pass through uncached.
    pub max: u64,
}

impl BodyPolicy {
    /// Whether `method` is a read this rule answers from the cache by its body.
    pub fn caches(&self, method: &Method) -> bool {
        method.as_str() == "QUERY" || (self.post && *method == Method::POST)
    }
}

impl Ringside {
    /// The policy of a (normalised) request for `target`.
    pub(super) fn policy(&self, target: &OriginTarget, req: &RequestHeader) -> Policy {
        let rule = self.node.origins.rule_for(target, req.uri.path());
        let base = &self.rule_options;
        let mut rules = RuleOptions {
            default_ttl: rule.and_then(|r| r.ttl),
            stale_if_error: rule
                .and_then(|r| r.stale_if_error)
                .unwrap_or(base.stale_if_error),
            stale_while_revalidate: rule
                .and_then(|r| r.stale_while_revalidate)
                .unwrap_or_default(),
            overrides: rule.map_or_else(Overrides::default, overrides),
            ..base.clone()
        };
        let credentials = crate::rfc::cache_rules::has_credentials(&req.headers, &base.credentials);
        let (scope, partition) = match rule.map_or(Scope::Shared, |r| r.scope) {
            Scope::PerCredential if credentials => {
                (Scope::PerCredential, self.node.partitions.of(&req.headers))
            }
            Scope::SharedDespiteCredentials if credentials => {
                (Scope::SharedDespiteCredentials, None)
            }
            _ => (Scope::Shared, None),
        };
        rules.credentialed = credentials;
        rules.audience = match scope {
            Scope::Shared => Audience::Shared,
            Scope::PerCredential => Audience::Private,
            Scope::SharedDespiteCredentials => Audience::SharedDespiteCredentials,
        };
        let cache = &self.node.config.cache;
        Policy {
            bypass: rule.is_some_and(|r| r.bypass),
            rules,
            scope,
            partition,
            body: BodyPolicy {
                post: rule
                    .is_some_and(|r| r.methods.iter().any(|m| m.eq_ignore_ascii_case("POST"))),
                key: rule.map_or(BodyKey::Raw, |r| r.body_key),
                max: rule
                    .and_then(|r| r.max_key_body)
                    .unwrap_or(cache.max_key_body),
            },
            body_digest: None,
        }
    }
}

/// A rule's `override:` list as the caching rules take it.
fn overrides(rule: &PathRule) -> Overrides {
    let o = &rule.overrides;
    Overrides {
        no_store: o.contains(Override::NoStore),
        no_cache: o.contains(Override::NoCache),
        private: o.contains(Override::Private),
        freshness: o.contains(Override::MaxAge),
    }
}
