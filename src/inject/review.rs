//! The AdmissionReview v1 envelope: parse the API server's request, hand the
//! Pod to [`super::sidecar`], wrap the decision into a response.
//!
//! Kept apart from the HTTP server so every malformed-input path (bad JSON,
//! no `request`, no `uid`, an object that is not a Pod) is a plain function
//! result that unit tests can reach, and none of them can panic.

use super::sidecar::{Decision, Settings};
use base64::Engine;
use serde_json::{json, Value};

/// The body cannot be used at all: the server answers 400 with this message.
#[derive(Debug, PartialEq)]
pub struct BadReview(pub String);

/// Turn an AdmissionReview request body into the AdmissionReview response body.
///
/// Anything that is a well-formed review is answered with a review, `allowed: true`
/// unless the pod asked for injection with unusable annotations. Objects other than
/// Pods are allowed unchanged with a status message saying why (the webhook is
/// registered for Pods only; answering "allowed" keeps a misconfigured rule from
/// blocking other resources).
pub fn respond(body: &[u8], settings: &Settings) -> Result<Value, BadReview> {
    let review: Value = serde_json::from_slice(body)
        .map_err(|e| BadReview(format!("request body is not JSON: {e}")))?;
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("admission.k8s.io/v1");
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
    let envelope = |response: Value| {
        let mut response = response;
        response["uid"] = json!(uid);
        json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response})
    };
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
    if kind != Some("Pod") {
        let what = kind.unwrap_or("an object without a kind");
        return Ok(envelope(json!({
            "allowed": true,
            "status": {"code": 200, "message": format!("ringside injects only into Pods; {what} left unchanged")},
        })));
    }
    let Some(pod) = request.get("object").filter(|o| o.is_object()) else {
        return Ok(envelope(json!({
            "allowed": true,
            "status": {"code": 200, "message": "AdmissionReview request has no Pod object; nothing injected"},
        })));
    };
    Ok(envelope(match settings.decide(pod) {
        Decision::Skip(why) => json!({"allowed": true, "status": {"code": 200, "message": why}}),
        Decision::Deny(why) => json!({
            "allowed": false,
            "status": {"code": 400, "reason": "BadRequest", "message": format!("ringside: {why}")},
        }),
        Decision::Patch(ops) => {
            let bytes = serde_json::to_vec(&ops).unwrap_or_default();
            json!({
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(bytes),
            })
        }
    }))
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
        assert!(respond(b"{", &s).is_err());
        assert!(respond(b"[]", &s).is_err());
        assert!(respond(br#"{"kind":"AdmissionReview"}"#, &s).is_err());
        assert!(respond(br#"{"kind":"AdmissionReview","request":{"object":{}}}"#, &s).is_err());
    }

    #[test]
    fn patch_is_base64_json() {
        let s = Settings::default();
        let pod = json!({"metadata": {"annotations": {"ringside.io/inject": "true"}},
                         "spec": {"containers": [{"name": "app", "image": "app"}]}});
        let r = respond(&review(pod), &s).unwrap();
        assert_eq!(r["response"]["uid"], "u-1");
        assert_eq!(r["response"]["patchType"], "JSONPatch");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(r["response"]["patch"].as_str().unwrap())
            .unwrap();
        let ops: Value = serde_json::from_slice(&raw).unwrap();
        assert!(ops.as_array().unwrap().len() >= 3);
    }
}
