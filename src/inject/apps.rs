//! What the chart tells the webhook about each of its apps, beyond the
//! release-wide flags: per app (a namespace and a name, as a pod's
//! `ringside.io/app` picks it), the cache capacity of its sidecars
//! (`--app-capacities`, the chart's `apps[].capacity`), the Secret holding
//! its peer TLS files (`--peer-tls-secrets`, `apps[].peerTls`) and the
//! Secret keys its injected headers read (`--app-header-secrets`,
//! `apps[].injectHeaders`).
//!
//! A leaf: flag values in, one [`AppSidecar`] per app out. The chart renders
//! every flag from the same values its own `ringside.sidecar` template
//! reads, so that both give an app's pods the same container.

use std::collections::{BTreeMap, BTreeSet};

/// An app as the chart lists it: (namespace, name).
type AppKey = (String, String);

/// The Secrets an app's injected headers read: Secret name -> its keys, both
/// sorted, as the chart's `ringside.headerSecrets` sorts them (mounted in
/// this order, one file per key).
pub type HeaderSecrets = BTreeMap<String, BTreeSet<String>>;

/// What one app's sidecars get besides the release-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppSidecar {
    /// Cache capacity in bytes; None: the release's `--sidecar-capacity`.
    pub capacity: Option<u64>,
    /// The Secret with `ca.crt`, `tls.crt` and `tls.key` for mutual TLS between peers.
    pub peer_tls_secret: Option<String>,
    /// The Secret keys its injected headers' `value_file`s name.
    pub header_secrets: HeaderSecrets,
}

/// Every app the chart says something about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppSidecars {
    apps: BTreeMap<AppKey, AppSidecar>,
}

/// The flag values the per-app settings come from, each a list of
/// `NAMESPACE/APP=VALUE` (blank entries are ignored).
#[derive(Debug, Clone, Copy, Default)]
pub struct AppFlags<'a> {
    /// `--app-capacities`: `NAMESPACE/APP=SIZE`.
    pub capacities: &'a [String],
    /// `--peer-tls-secrets`: `NAMESPACE/APP=SECRET`.
    pub peer_tls_secrets: &'a [String],
    /// `--app-header-secrets`: `NAMESPACE/APP=SECRET/KEY`, an app repeated
    /// for each key it reads.
    pub header_secrets: &'a [String],
}

impl AppSidecars {
    /// Parse the flags; an error names the flag and the entry, and says what
    /// was expected.
    pub fn from_flags(flags: AppFlags) -> Result<AppSidecars, String> {
        let mut out = AppSidecars::default();
        for (app, size) in entries("--app-capacities", flags.capacities, "SIZE")? {
            let bytes = super::memory::parse_capacity(size)
                .filter(|b| *b > 0)
                .ok_or_else(|| {
                    format!(
                        "--app-capacities: {size:?} (for {}/{}) is invalid; expected a size \
                         such as 512MiB",
                        app.0, app.1
                    )
                })?;
            out.apps.entry(app).or_default().capacity = Some(bytes);
        }
        for (app, secret) in entries("--peer-tls-secrets", flags.peer_tls_secrets, "SECRET")? {
            out.apps.entry(app).or_default().peer_tls_secret = Some(secret.to_string());
        }
        let header_secrets = entries("--app-header-secrets", flags.header_secrets, "SECRET/KEY")?;
        for (app, value) in header_secrets {
            let (secret, key) = secret_key(value).ok_or_else(|| {
                format!(
                    "--app-header-secrets: {value:?} (for {}/{}) is invalid; expected \
                     SECRET/KEY, a Secret's name and one of its keys",
                    app.0, app.1
                )
            })?;
            let secrets = &mut out.apps.entry(app).or_default().header_secrets;
            secrets
                .entry(secret.to_string())
                .or_default()
                .insert(key.to_string());
        }
        Ok(out)
    }

    /// The settings of `app` in `namespace` (none for a pod of no app, or an
    /// app the chart says nothing special about).
    pub fn get(&self, namespace: &str, app: Option<&str>) -> AppSidecar {
        app.and_then(|app| {
            self.apps
                .get(&(namespace.to_string(), app.trim().to_string()))
        })
        .cloned()
        .unwrap_or_default()
    }

    /// Each app with a capacity of its own: (`namespace/app`, bytes).
    pub fn capacities(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.apps
            .iter()
            .filter_map(|((ns, name), app)| Some((format!("{ns}/{name}"), app.capacity?)))
    }
}

/// The `NAMESPACE/APP=VALUE` entries of `flag`, split; the error names the
/// flag, the entry and the expected form (`VALUE` spelled as `value`).
fn entries<'a>(
    flag: &str,
    list: &'a [String],
    value: &str,
) -> Result<Vec<(AppKey, &'a str)>, String> {
    list.iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let parsed = entry.split_once('=').and_then(|(app, v)| {
                let (namespace, name) = app.split_once('/')?;
                let parts = [namespace, name, v];
                parts.iter().all(|p| !p.is_empty()).then(|| {
                    let key = (namespace.to_string(), name.to_string());
                    (key, v)
                })
            });
            parsed.ok_or_else(|| {
                format!("{flag}: {entry:?} is invalid; expected NAMESPACE/APP={value}")
            })
        })
        .collect()
}

/// `SECRET/KEY` as a Kubernetes Secret name (a DNS subdomain) and a key of
/// it (letters, digits, `-`, `_`, `.`; not `.` or `..`, which would be
/// paths of the volume's own).
fn secret_key(text: &str) -> Option<(&str, &str)> {
    let (secret, key) = text.split_once('/')?;
    let secret_ok = !secret.is_empty()
        && secret.len() <= 253
        && secret
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !secret.starts_with(['-', '.'])
        && !secret.ends_with(['-', '.']);
    let key_ok = !key.is_empty()
        && key.len() <= 253
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (secret_ok && key_ok).then_some((secret, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_app_gets_what_its_entries_say() {
        let capacities = strings(&["shop/catalog=1Gi", " ", "web/search=64MiB"]);
        let tls = strings(&["shop/catalog=catalog-peer-tls"]);
        let headers = strings(&[
            "shop/catalog=partner-key/token",
            "shop/catalog=billing/key",
            "shop/catalog=partner-key/id",
            "shop/catalog=partner-key/token",
        ]);
        let apps = AppSidecars::from_flags(AppFlags {
            capacities: &capacities,
            peer_tls_secrets: &tls,
            header_secrets: &headers,
        })
        .unwrap();
        let catalog = apps.get("shop", Some("catalog"));
        assert_eq!(catalog.capacity, Some(1 << 30));
        assert_eq!(catalog.peer_tls_secret.as_deref(), Some("catalog-peer-tls"));
        // Sorted by Secret, then key; each key once.
        let mounted: Vec<(&str, Vec<&str>)> = catalog
            .header_secrets
            .iter()
            .map(|(s, keys)| (s.as_str(), keys.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            mounted,
            vec![
                ("billing", vec!["key"]),
                ("partner-key", vec!["id", "token"])
            ]
        );
        assert_eq!(apps.get("web", Some("search")).capacity, Some(64 << 20));
        // Apps are per namespace; a pod of no app gets nothing special.
        assert_eq!(apps.get("web", Some("catalog")), AppSidecar::default());
        assert_eq!(apps.get("shop", None), AppSidecar::default());
        let listed: Vec<_> = apps.capacities().collect();
        assert_eq!(
            listed,
            vec![
                ("shop/catalog".to_string(), 1 << 30),
                ("web/search".to_string(), 64 << 20)
            ]
        );
    }

    #[test]
    fn a_bad_entry_names_its_flag_and_the_form_expected() {
        let bad = |flags: AppFlags| AppSidecars::from_flags(flags).unwrap_err();
        let list = strings(&["catalog=1Gi"]);
        let e = bad(AppFlags {
            capacities: &list,
            ..AppFlags::default()
        });
        assert!(
            e.contains("--app-capacities") && e.contains("NAMESPACE/APP=SIZE"),
            "{e}"
        );
        let list = strings(&["shop/catalog=lots"]);
        let e = bad(AppFlags {
            capacities: &list,
            ..AppFlags::default()
        });
        assert!(e.contains("\"lots\"") && e.contains("shop/catalog"), "{e}");
        for entry in [
            "shop/catalog=partner-key",
            "shop/catalog=Partner/token",
            "shop/catalog=partner/../x",
            "shop/catalog=partner/..data",
            "shop/catalog=/token",
        ] {
            let list = strings(&[entry]);
            let e = bad(AppFlags {
                header_secrets: &list,
                ..AppFlags::default()
            });
            assert!(
                e.contains("--app-header-secrets") && e.contains("SECRET/KEY"),
                "{entry}: {e}"
            );
        }
        let list = strings(&["shop/=x"]);
        let e = bad(AppFlags {
            peer_tls_secrets: &list,
            ..AppFlags::default()
        });
        assert!(e.contains("NAMESPACE/APP=SECRET"), "{e}");
    }
}
