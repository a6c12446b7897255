//! Secrets as files: the cluster secret and the admin token read from a
//! file (a mounted Kubernetes Secret) instead of an environment variable,
//! which `/proc/<pid>/environ`, crash dumps and some tools' `describe`
//! show. The file is read at start and again when it changes (a
//! [`Watched`] value, as the TLS files are), so a rotated Secret takes
//! effect without a restart; a new content that fails its check (empty, too
//! short) is logged by field and path, never by content, and the previous
//! one kept.
//!
//! A secret given in the configuration itself is a [`Watched::fixed`]
//! value, so users ask for the current one the same way either way.

use super::watched_files::Watched;
use crate::error::{self, Error, Result};

/// The secret in the file at `path`: its content without a trailing newline
/// (`echo`, editors and `kubectl create secret --from-file` of such a file
/// leave one). The error names `field` and the path, never the content.
pub fn read(field: &str, path: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::new(error::Kind::Read, format!("{field}: {path}")).caused_by(e))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

/// How one secret is checked, turned into what its user keeps, and counted.
pub struct Kind<T> {
    /// The config field of the value (`cluster.secret`); its file's field
    /// is this plus `_file`.
    pub field: &'static str,
    /// What is wrong with a secret, if anything (never quoting it).
    pub check: fn(&str) -> Result<()>,
    /// The form its user keeps (the text, an HMAC key).
    pub make: fn(&str) -> T,
    /// Told of every reload of the file: true when it loaded.
    pub on_reload: fn(bool),
}

/// The secret `value`, or when `path` is not empty the one in that file,
/// read now and again when the file changes. Err names the field.
pub fn watch<T: Send + Sync + 'static>(
    kind: Kind<T>,
    value: &str,
    path: &str,
) -> Result<Watched<T>> {
    let Kind {
        field,
        check,
        make,
        on_reload,
    } = kind;
    let what = field.replace(['.', '_'], " ");
    if path.is_empty() {
        check(value).map_err(|why| why.within(field))?;
        return Ok(Watched::fixed(&what, make(value)));
    }
    let file_field = format!("{field}_file");
    let owned = path.to_string();
    let load = move || {
        let text = read(&file_field, &owned)?;
        check(&text).map_err(|why| why.within(&owned).within(&file_field))?;
        Ok(make(&text))
    };
    Watched::new(&what, &[path], load, on_reload)
}

/// At least `min` bytes long (the message gives the length, not the text).
pub fn at_least(text: &str, min: usize) -> Result<()> {
    match text.len() {
        0 => Err(Error::invalid("empty")),
        n if n < min => Err(Error::invalid(format!(
            "{n} characters; expected {min} or more"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind() -> Kind<String> {
        Kind {
            field: "admin_token",
            check: |t| at_least(t, 4),
            make: str::to_string,
            on_reload: |_| {},
        }
    }

    #[test]
    fn a_file_is_read_without_its_newline_and_checked_by_field() {
        let path = std::env::temp_dir().join(format!("ringside-secret-{}", std::process::id()));
        let path = path.display().to_string();
        std::fs::write(&path, "s3cret-token\n").unwrap();
        let watched = watch(kind(), "", &path).unwrap();
        assert_eq!(*watched.current(), "s3cret-token");
        std::fs::write(&path, "abc").unwrap();
        let e = watch(kind(), "", &path).err().unwrap().to_string();
        assert!(
            e.contains("admin_token_file") && e.contains("3 characters"),
            "{e}"
        );
        assert!(!e.contains("abc"), "the secret is never in a message: {e}");
        let e = watch(kind(), "", "/nonexistent/token")
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("admin_token_file: /nonexistent/token"), "{e}");
        let fixed = watch(kind(), "given-in-config", "").unwrap();
        assert_eq!(*fixed.current(), "given-in-config");
        let _ = std::fs::remove_file(&path);
    }
}
