//! Credential injection (`origin.inject_headers`, `upstreams[].inject_headers`):
//! headers ringside adds to every request it sends to an origin (fills,
//! revalidations, requests it proxies, ranges), never to a peer and never to
//! a CONNECT tunnel. Their values come from a file (a mounted Secret, read
//! again when it changes, see `watched_files`) or an environment variable,
//! with an optional prefix (`Bearer `).
//!
//! The app then holds no secret and its requests carry no credential, so
//! ordinary shared caching applies: the request is judged, keyed and sent
//! to the key's owner before anything is injected, and in a cluster the
//! owner injects its own copy. A value is marked sensitive and is never in
//! a key, a log line or a metric.

use super::secret_files;
use super::watched_files::Watched;
use crate::config::InjectHeader;
use crate::error::{Error, Result};
use http::header::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

/// The headers injected into one origin's requests.
#[derive(Debug, Default)]
pub struct Injected {
    headers: Vec<Header>,
}

#[derive(Debug)]
struct Header {
    name: HeaderName,
    value: Watched<HeaderValue>,
    /// Replace a copy the app sent; else the app's wins.
    replace: bool,
}

impl Injected {
    /// The headers `list` (the config's `field`) describes, their values read
    /// now. An error names the field and the file or variable, never a value.
    pub fn load(field: &str, list: &[InjectHeader]) -> Result<Injected> {
        let headers = list
            .iter()
            .enumerate()
            .map(|(i, header)| Header::load(&format!("{field}[{i}]"), header))
            .collect::<Result<_, _>>()?;
        Ok(Injected { headers })
    }

    /// Add the headers to a request about to go to the origin.
    pub fn apply(&self, request: &mut RequestHeader) {
        for header in &self.headers {
            if !header.replace && request.headers.contains_key(&header.name) {
                continue;
            }
            let value = (*header.value.current()).clone();
            let _ = request.insert_header(header.name.clone(), value);
        }
    }
}

impl Header {
    fn load(field: &str, config: &InjectHeader) -> Result<Header> {
        let name = HeaderName::from_bytes(config.name.as_bytes()).map_err(|_| {
            let name = &config.name;
            Error::invalid(format!("{field}.name: {name:?} is not a header name"))
        })?;
        let prefix = config.prefix.clone();
        let value = match (config.value_file.trim(), config.value_env.trim()) {
            (path, "") if !path.is_empty() => {
                let file_field = format!("{field}.value_file");
                let owned = path.to_string();
                let load = move || {
                    let text = secret_files::read(&file_field, &owned)?;
                    header_value(&file_field, &prefix, &text)
                };
                let what = format!("injected {} header", name.as_str());
                Watched::new(&what, &[path], load, |_| {})?
            }
            ("", var) if !var.is_empty() => {
                let field = format!("{field}.value_env");
                let text = std::env::var(var)
                    .map_err(|_| Error::invalid(format!("{field}: ${var} is not set")))?;
                Watched::fixed(&field, header_value(&field, &prefix, &text)?)
            }
            _ => {
                return Err(Error::invalid(format!(
                    "{field}: expected exactly one of value_file (a mounted Secret) and value_env"
                )))
            }
        };
        Ok(Header {
            name,
            value,
            replace: config.replace,
        })
    }
}

/// `prefix` + `text` as a header value marked sensitive; the error names
/// `field`, never the value.
fn header_value(field: &str, prefix: &str, text: &str) -> Result<HeaderValue> {
    if text.trim().is_empty() {
        return Err(Error::invalid(format!("{field}: empty")));
    }
    let mut value = HeaderValue::from_str(&format!("{prefix}{}", text.trim())).map_err(|_| {
        Error::invalid(format!(
            "{field}: not a valid header value (control characters?)"
        ))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, file: &str, env: &str, prefix: &str, replace: bool) -> InjectHeader {
        InjectHeader {
            name: name.into(),
            value_file: file.into(),
            value_env: env.into(),
            prefix: prefix.into(),
            replace,
        }
    }

    #[test]
    fn values_come_from_a_file_or_the_environment_and_replace_the_apps_copy() {
        let path = std::env::temp_dir().join(format!("ringside-inject-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let path = path.display().to_string();
        std::env::set_var("RINGSIDE_TEST_INJECT_KEY", "k-env");
        let list = [
            config("Authorization", &path, "", "Bearer ", true),
            config("X-Api-Key", "", "RINGSIDE_TEST_INJECT_KEY", "", false),
        ];
        let injected = Injected::load("origin.inject_headers", &list).unwrap();
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request
            .insert_header("authorization", "Bearer app")
            .unwrap();
        request.insert_header("x-api-key", "app-key").unwrap();
        injected.apply(&mut request);
        assert_eq!(request.headers["authorization"], "Bearer s3cret");
        assert!(request.headers["authorization"].is_sensitive());
        assert_eq!(
            request.headers["x-api-key"], "app-key",
            "replace: false keeps the app's"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn mistakes_name_the_field_and_never_the_value() {
        let list = [config("Authorization", "", "", "", true)];
        let e = Injected::load("origin.inject_headers", &list)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("origin.inject_headers[0]: expected exactly one"),
            "{e}"
        );
        let list = [config("X-Key", "/nonexistent/key", "", "", true)];
        let e = Injected::load("upstreams[1].inject_headers", &list)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("upstreams[1].inject_headers[0].value_file: /nonexistent/key"),
            "{e}"
        );
        std::env::set_var("RINGSIDE_TEST_INJECT_BAD", "bad\u{1}value");
        let list = [config("X-Key", "", "RINGSIDE_TEST_INJECT_BAD", "", true)];
        let e = Injected::load("origin.inject_headers", &list)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("bad"), "{e}");
    }
}
