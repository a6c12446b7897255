//! What the client is told of a fill's answer: its `Cache-Status` and the
//! result it is counted under in `ringside_requests_total`. The fill
//! reports facts (who answered, whether it was a revalidation, whether and
//! why it is kept, whether the answer is this client's alone: `fill::Report`);
//! this is the one place that turns them into words, with the scope the
//! request used and whether its answer is served under an override.

use crate::config::Scope;
use crate::fill::{Kept, NotKept, Report, Source};
use crate::metrics::CacheResult;
use crate::rfc::cache_status::{self, CacheStatus, Detail, Fwd};

/// The Cache-Status and metric result of an answer a fill brought;
/// `collapsed`: the request waited on another request's fill.
pub fn told(report: &Report, collapsed: bool) -> (CacheResult, CacheStatus) {
    let (result, status) = match (report.private, report.kept, report.source) {
        (true, Kept::No(why, _), _) => (
            CacheResult::Revalidated,
            CacheStatus::REVALIDATED.detail(detail(why)),
        ),
        (true, _, _) => (CacheResult::Revalidated, CacheStatus::REVALIDATED),
        (false, Kept::No(NotKept::BodyTooLarge, _), _) => (
            CacheResult::Bypass,
            CacheStatus::bypass(Detail::BodyTooLarge),
        ),
        (false, Kept::No(why, status), source) => (
            result_of(source),
            CacheStatus::forward(Fwd::UriMiss)
                .fwd_status(status)
                .detail(detail(why)),
        ),
        (false, Kept::Storing, Source::Origin) => (
            CacheResult::Miss,
            CacheStatus::forward(Fwd::UriMiss).detail(Detail::Storing),
        ),
        (false, _, Source::Origin) if report.revalidated => {
            (CacheResult::Revalidated, CacheStatus::REVALIDATED)
        }
        (false, _, source) => (result_of(source), status_of(source)),
    };
    (
        result,
        if collapsed {
            status.collapsed()
        } else {
            status
        },
    )
}

/// The Cache-Status `scope` of a request's scope (None: the shared cache).
pub fn scope(scope: Scope) -> Option<cache_status::Scope> {
    match scope {
        Scope::Shared => None,
        Scope::PerCredential => Some(cache_status::Scope::PerCredential),
        Scope::SharedDespiteCredentials => Some(cache_status::Scope::SharedDespiteCredentials),
    }
}

/// A fresh answer from this source.
fn status_of(source: Source) -> CacheStatus {
    match source {
        Source::Origin => CacheStatus::STORED,
        Source::Owner => CacheStatus::FROM_PEER,
        Source::PreviousOwner => CacheStatus::FROM_PREVIOUS_OWNER,
    }
}

fn result_of(source: Source) -> CacheResult {
    match source {
        Source::Origin => CacheResult::Miss,
        Source::Owner | Source::PreviousOwner => CacheResult::Peer,
    }
}

fn detail(why: NotKept) -> Detail {
    match why {
        NotKept::Rule(rule) => Detail::NotStorable(rule),
        NotKept::TooLarge => Detail::TooLarge,
        NotKept::BodyTooLarge => Detail::BodyTooLarge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfc::cache_rules::NotStorable;

    fn report(source: Source, revalidated: bool, kept: Kept, private: bool) -> Report {
        Report {
            source,
            revalidated,
            kept,
            private,
            overridden: false,
        }
    }

    fn words(r: Report) -> String {
        told(&r, false)
            .1
            .header_value()
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn facts_become_one_cache_status() {
        use Source::*;
        let private = Kept::No(NotKept::Rule(NotStorable::Private), 200);
        assert_eq!(
            words(report(Origin, false, Kept::Stored, false)),
            "ringside; fwd=uri-miss; stored"
        );
        assert!(words(report(Origin, false, Kept::Storing, false)).contains("detail=storing"));
        assert!(!words(report(Owner, false, Kept::Storing, false)).contains("storing"));
        assert!(words(report(Owner, false, Kept::Stored, false)).contains("detail=peer"));
        assert!(
            words(report(Origin, false, private, false)).contains("fwd-status=200; detail=private")
        );
        assert!(words(report(Origin, true, Kept::Stored, false)).contains("fwd-status=304"));
        assert!(
            words(report(Owner, true, private, true)).contains("fwd-status=304; detail=private")
        );
        let (result, status) = told(&report(Owner, false, Kept::Stored, false), true);
        assert_eq!(result, CacheResult::Peer);
        assert!(status
            .header_value()
            .to_str()
            .unwrap()
            .contains("collapsed"));
    }
}
