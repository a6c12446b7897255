//! The AdmissionReview v1 envelope: parse the API server's request, hand the
//! Pod to [`super::sidecar`], wrap the decision into a response.
//!
//! Kept apart from the HTTP server so every malformed-input path (bad JSON,
//! no `request`, no `uid`, an object that is not a Pod) is a plain function
//! result that unit tests can reach, and none of them can panic.

use super::pod::AskedBy;
use super::sidecar::{Decision, Settings};
use base64::Engine;
use serde_json::{json, Value};

/// The body cannot be used at all: the server answers 400 with this message.
#[derive(Debug, PartialEq)]
pub struct BadReview(pub String);

/// An answered review: the AdmissionReview to send back, and what was
/// decided for whom, for the webhook's log and metrics.
#[derive(Debug)]
pub struct Reviewed {
    pub review: Value,
    /// `injected`, `skipped` or `denied`.
    pub decision: &'static str,
    /// Why, as a fixed label (`requested`, `not_requested`, `host_network`, ...).
    pub reason: &'static str,
    /// What was injected, or why not, in words.
    pub detail: String,
    /// `namespace/name` of the pod (`namespace/generateName*` before it has a name).
    pub pod: String,
    pub warnings: Vec<String>,
}

/// Turn an AdmissionReview request body into the AdmissionReview response.
///
/// Anything that is a well-formed review is answered with a review, `allowed: true`
/// unless the pod asked for injection and cannot have it. Objects other than
/// Pods are allowed unchanged with a status message saying why (the webhook is
/// registered for Pods only; answering "allowed" keeps a misconfigured rule from
/// blocking other resources). Near-misses become the response's `warnings`.
pub fn respond(body: &[u8], settings: &Settings, by: AskedBy) -> Result<Reviewed, BadReview> {
    let review: Value = serde_json::from_slice(body)
        .map_err(|e| BadReview(format!("request body is not JSON: {e}")))?;
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("admission.k8s.io/v1");
    let (request, uid) = admission_request(&review)?;
    let (decision, warnings) = decide(request, settings, by);
    let (label, reason) = decision.labels();
    let detail = match &decision {
        Decision::Skip(_, why) => why.to_string(),
        Decision::Deny(_, why) => why.clone(),
        Decision::Patch(_, summary, _) => summary.clone(),
    };
    let response = admission_response(&decision, uid, &warnings);
    Ok(Reviewed {
        review: json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response}),
        decision: label,
        reason,
        detail,
        pod: pod_name(request),
        warnings,
    })
}

/// The review's `.request` and its uid, or why the body is not a review.
fn admission_request(review: &Value) -> Result<(&Value, &str), BadReview> {
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err(BadReview(
            "request body is not an AdmissionReview (kind must be \"AdmissionReview\")".into(),
        ));
    }
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| {
            BadReview(
                "AdmissionReview has no request (expected .request with uid and object)".into(),
            )
        })?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| BadReview("AdmissionReview request has no uid".into()))?;
    Ok((request, uid))
}

/// What to do with the request's object: Pods are decided by `settings`;
/// anything else is left alone.
fn decide(request: &Value, settings: &Settings, by: AskedBy) -> (Decision, Vec<String>) {
    let kind = request
        .get("kind")
        .and_then(|k| k.get("kind"))
        .and_then(Value::as_str)
        .or_else(|| {
            request
                .get("object")
                .and_then(|o| o.get("kind"))
                .and_then(Value::as_str)
        });
    match (kind, request.get("object").filter(|o| o.is_object())) {
        (Some("Pod"), Some(object)) => {
            let verdict = settings.decide(object, &namespace(request), by);
            (verdict.decision, verdict.warnings)
        }
        (Some("Pod"), None) => (
            Decision::Skip(
                "no_object",
                "AdmissionReview request has no Pod object; nothing injected".into(),
            ),
            Vec::new(),
        ),
        (_, _) => (
            Decision::Skip(
                "not_a_pod",
                "ringside injects only into Pods; other objects are left unchanged".into(),
            ),
            Vec::new(),
        ),
    }
}

/// The AdmissionResponse for a decision.
fn admission_response(decision: &Decision, uid: &str, warnings: &[String]) -> Value {
    let mut response = match decision {
        Decision::Skip(_, why) => {
            json!({"allowed": true, "status": {"code": 200, "message": why}})
        }
        Decision::Deny(_, why) => json!({
            "allowed": false,
            "status": {"code": 400, "reason": "BadRequest", "message": format!("ringside: {why}")},
        }),
        Decision::Patch(ops, ..) => json!({
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(ops).unwrap_or_default()),
        }),
    };
    response["uid"] = json!(uid);
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    response
}

fn text(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The namespace the object is created in (the request's; the object may not say).
fn namespace(request: &Value) -> String {
    let metadata = request.get("object").and_then(|o| o.get("metadata"));
    text(request.get("namespace"))
        .or_else(|| text(metadata.and_then(|m| m.get("namespace"))))
        .unwrap_or("-")
        .to_string()
}

/// `namespace/name` for the log; a pod created by a controller has only a
/// `generateName` when it is admitted.
fn pod_name(request: &Value) -> String {
    let metadata = request.get("object").and_then(|o| o.get("metadata"));
    let namespace = namespace(request);
    let name = text(metadata.and_then(|m| m.get("name")))
        .or_else(|| text(request.get("name")))
        .map(str::to_string)
        .or_else(|| text(metadata.and_then(|m| m.get("generateName"))).map(|g| format!("{g}*")))
        .unwrap_or_else(|| "-".into());
    format!("{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "operation": "CREATE", "object": object}
        }))
        .unwrap()
    }

    #[test]
    fn malformed() {
        let s = Settings::default();
        let by = AskedBy::Pod;
        assert!(respond(b"{", &s, by).is_err());
        assert!(respond(b"[]", &s, by).is_err());
        assert!(respond(br#"{"kind":"AdmissionReview"}"#, &s, by).is_err());
        let no_uid = br#"{"kind":"AdmissionReview","request":{"object":{}}}"#;
        assert!(respond(no_uid, &s, by).is_err());
    }

    #[test]
    fn patch_is_base64_json() {
        let s = Settings::default();
        let pod = json!({"metadata": {"annotations": {"ringside.io/inject": "true"}},
                         "spec": {"containers": [{"name": "app", "image": "app"}]}});
        let r = respond(&review(pod), &s, AskedBy::Pod).unwrap().review;
        assert_eq!(r["response"]["uid"], "u-1");
        assert_eq!(r["response"]["patchType"], "JSONPatch");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(r["response"]["patch"].as_str().unwrap())
            .unwrap();
        let ops: Value = serde_json::from_slice(&raw).unwrap();
        assert!(ops.as_array().unwrap().len() >= 3);
    }
}
