//! What the webhook tells a user about a pod beyond the patch: near-misses
//! it warns about (AdmissionResponse `warnings`, which `kubectl apply`
//! prints) and pods it refuses because the sidecar cannot work in them.
//!
//! Pure functions over the pod's JSON, like [`super::sidecar`]: a pod of any
//! shape gets an answer, never a panic.

use super::pod::{
    PodOptions, ANNOTATIONS, ANNOTATION_ADMIN_PORT, ANNOTATION_APP, ANNOTATION_INJECT,
    ANNOTATION_PORT, ANNOTATION_WAIT_BEFORE_EXIT,
};
use serde_json::{Map, Value};

/// The prefix of every ringside annotation.
const PREFIX: &str = "ringside.io/";

/// Values of `ringside.io/inject` that mean "yes" to a person but not to the
/// webhook (only `"true"` injects).
const ALMOST_TRUE: &[&str] = &["true", "yes", "y", "on", "1", "enabled", "enable"];

fn map<'a>(pod: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    pod.get("metadata")?.get(key)?.as_object()
}

/// Near-misses, one short message each: an inject value that is almost
/// `"true"`, ringside keys set as labels instead of annotations, and
/// ringside annotations the webhook does not know (typos).
pub fn near_misses(pod: &Value) -> Vec<String> {
    let mut warnings = Vec::new();
    let annotations = map(pod, "annotations");
    let inject = annotations
        .and_then(|a| a.get(ANNOTATION_INJECT))
        .and_then(Value::as_str)
        .map(str::trim);
    if let Some(v) = inject.filter(|v| *v != "true") {
        if ALMOST_TRUE.contains(&v.to_ascii_lowercase().as_str()) {
            warnings.push(format!(
                "{ANNOTATION_INJECT} is {v:?}: only \"true\" injects the ringside sidecar"
            ));
        }
    }
    for key in map(pod, "labels").into_iter().flat_map(Map::keys) {
        if ANNOTATIONS.contains(&key.as_str()) {
            warnings.push(format!(
                "{key} is a label: ringside reads it only as an annotation"
            ));
        }
    }
    for key in annotations.into_iter().flat_map(Map::keys) {
        if key.starts_with(PREFIX) && !ANNOTATIONS.contains(&key.as_str()) {
            warnings.push(format!(
                "unknown annotation {key} is ignored (see ringside's annotation list)"
            ));
        }
    }
    warnings
}

/// Annotations the injected sidecar will not act on, one message each: a
/// wait before exit on a native sidecar (Kubernetes stops it after the app,
/// so it has nothing to wait for).
pub fn ignored(pod: &Value, o: &PodOptions) -> Vec<String> {
    let wait = map(pod, "annotations").and_then(|a| a.get(ANNOTATION_WAIT_BEFORE_EXIT));
    match (wait.and_then(Value::as_str), o.native) {
        (Some(v), true) if v.trim() != "0" => vec![format!(
            "{ANNOTATION_WAIT_BEFORE_EXIT} is {v:?} but is ignored: the sidecar is a native \
             sidecar, which Kubernetes stops after the app's containers, so it serves the \
             app's last calls without waiting (set ringside.io/native-sidecar: \"false\" \
             for a regular container that waits)"
        )],
        _ => Vec::new(),
    }
}

/// Containers that run beside the sidecar: the app's, and init containers
/// that are native sidecars themselves (`restartPolicy: Always`).
fn running_containers(pod: &Value) -> impl Iterator<Item = &Value> {
    let list = |key: &str| {
        pod.get("spec")
            .and_then(|s| s.get(key))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let sidecars = list("initContainers")
        .iter()
        .filter(|c| c.get("restartPolicy").and_then(Value::as_str) == Some("Always"));
    list("containers").iter().chain(sidecars)
}

/// Why the sidecar cannot go into this pod, if it cannot: (reason label for
/// metrics, message naming the problem).
pub fn unfit(pod: &Value, o: &PodOptions) -> Option<(&'static str, String)> {
    let host_network = pod
        .get("spec")
        .and_then(|s| s.get("hostNetwork"))
        .and_then(Value::as_bool)
        == Some(true);
    if host_network {
        return Some((
            "host_network",
            format!(
                "hostNetwork pods cannot get the sidecar: it would listen on the node's ports {}, \
                 {} and {}; remove {ANNOTATION_INJECT} or hostNetwork",
                o.port, o.admin_port, o.peer_port
            ),
        ));
    }
    let needs = [
        (o.port, "its app-facing listener", ANNOTATION_PORT),
        (o.admin_port, "its admin listener", ANNOTATION_ADMIN_PORT),
    ];
    for c in running_containers(pod) {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
        let ports = c.get("ports").and_then(Value::as_array);
        for port in ports.into_iter().flatten() {
            let Some(number) = port.get("containerPort").and_then(Value::as_u64) else {
                continue;
            };
            if let Some((_, what, annotation)) =
                needs.iter().find(|(p, ..)| u64::from(*p) == number)
            {
                return Some((
                    "port_conflict",
                    format!(
                        "container {name:?} already uses port {number}, which the sidecar needs \
                         for {what}; set {annotation} to a free port"
                    ),
                ));
            }
            if number == u64::from(o.peer_port) {
                return Some((
                    "port_conflict",
                    format!(
                        "container {name:?} already uses port {number}, which the sidecar needs \
                         for its peers; move the app off it (every replica of an app shares the \
                         chart's sidecar.peerPort)"
                    ),
                ));
            }
        }
    }
    None
}

/// Why a pod of no app in `namespace` could not start, if it could not: the
/// standalone `config_map` and the Secret exist only in the chart's
/// namespaces (`namespaces`).
pub fn no_config_map(namespace: &str, namespaces: &[String], config_map: &str) -> Option<String> {
    if namespaces.iter().any(|n| n == namespace) {
        return None;
    }
    Some(format!(
        "namespace {namespace} has no ConfigMap {config_map} and no peer Secret (the chart \
         writes them to {}); add the namespace to the chart's namespaces (or an app there, \
         and annotate {ANNOTATION_APP})",
        namespaces.join(", ")
    ))
}

/// Why `app` cannot be used in `namespace`, if it cannot: only the chart's
/// apps have a ConfigMap, and only in their own namespace.
pub fn unknown_app(app: &str, namespace: &str, apps: &[(String, String)]) -> Option<String> {
    let known = |ns: &str, name: &str| apps.iter().any(|(n, a)| n == ns && a == name);
    if known(namespace, app) {
        return None;
    }
    let here: Vec<&str> = apps
        .iter()
        .filter(|(ns, _)| ns == namespace)
        .map(|(_, a)| a.as_str())
        .collect();
    let here = match here.is_empty() {
        true => "none".to_string(),
        false => here.join(", "),
    };
    Some(format!(
        "annotation {ANNOTATION_APP}: {app:?} is not an app of the chart in namespace \
         {namespace} (apps there: {here}); add it to the chart's apps, or its ConfigMap \
         will not exist"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::sidecar::Settings;
    use serde_json::json;

    #[test]
    fn near_misses_are_named() {
        let pod = json!({"metadata": {
            "annotations": {"ringside.io/inject": "True", "ringside.io/capcity": "1Gi"},
            "labels": {"ringside.io/app": "catalog", "app": "catalog"}}});
        let w = near_misses(&pod);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("\"True\""), "{w:?}");
        assert!(w[1].contains("ringside.io/app is a label"), "{w:?}");
        assert!(w[2].contains("ringside.io/capcity"), "{w:?}");
        for quiet in [
            json!({"metadata": {"annotations": {"ringside.io/inject": "true"}}}),
            json!({"metadata": {"annotations": {"ringside.io/inject": "false"}}}),
            json!(null),
        ] {
            assert!(near_misses(&quiet).is_empty(), "{quiet}");
        }
    }

    #[test]
    fn apps_are_known_per_namespace() {
        let apps = vec![
            ("shop".to_string(), "catalog".to_string()),
            ("web".to_string(), "search".to_string()),
        ];
        assert_eq!(unknown_app("catalog", "shop", &apps), None);
        let why = unknown_app("catalgo", "shop", &apps).unwrap();
        assert!(
            why.contains("\"catalgo\"") && why.contains("apps there: catalog"),
            "{why}"
        );
        let why = unknown_app("search", "shop", &apps).unwrap();
        assert!(why.contains("namespace shop"), "{why}");
        assert!(unknown_app("catalog", "other", &apps)
            .unwrap()
            .contains("none"));
    }

    #[test]
    fn unfit_pods_are_named() {
        let s = Settings::default();
        let o = s.pod_options(&json!({}), "shop").unwrap();
        let host = json!({"spec": {"hostNetwork": true, "containers": []}});
        assert_eq!(unfit(&host, &o).unwrap().0, "host_network");
        let taken = json!({"spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 3000}, {"containerPort": 9090}]}]}});
        let (reason, message) = unfit(&taken, &o).unwrap();
        assert_eq!(reason, "port_conflict");
        assert!(
            message.contains("\"app\"") && message.contains("9090"),
            "{message}"
        );
        assert!(message.contains("ringside.io/admin-port"), "{message}");
        let mesh = json!({"spec": {"containers": [{"name": "app"}], "initContainers": [
            {"name": "proxy", "restartPolicy": "Always", "ports": [{"containerPort": 8080}]}]}});
        assert!(unfit(&mesh, &o).unwrap().1.contains("\"proxy\""));
        let fine = json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 3000}]}],
            "initContainers": [{"name": "migrate", "ports": [{"containerPort": 8080}]}]}});
        assert_eq!(unfit(&fine, &o), None);
    }
}
