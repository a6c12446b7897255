//! What goes wrong while starting up and on the cluster's own paths. That
//! covers the files the configuration names (secrets, TLS certificates,
//! injected headers), the listeners, DNS, etcd and membership.
//!
//! The model is hyper's `Error { kind, cause }`. An [`Error`] has a
//! [`Kind`] to branch on, a message that names the setting or file in
//! words, and the error that caused it, kept as `source()` and not
//! flattened into the text. Its `Display` is the message, then `: ` and the
//! cause, so the operator reads one line.
//!
//! A request's failures are not these. They are answers (`FetchError`, a
//! peer's refusal). A configuration mistake found while reading the file is
//! `ConfigError`.

use std::error::Error as StdError;
use std::fmt;

/// A start-up or cluster error: what kind, about what, and why.
pub struct Error {
    kind: Kind,
    message: String,
    cause: Option<Box<dyn StdError + Send + Sync>>,
}

/// What kind of thing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file the configuration names cannot be read.
    Read,
    /// A file or setting holds what it must not: no certificate, a key
    /// that is not the certificate's, a secret too short, a value that
    /// cannot be a header.
    Invalid,
    /// An address to listen on is taken or cannot be bound.
    Listen,
    /// Names cannot be resolved: the resolver could not be built, or its
    /// server failed.
    Dns,
    /// etcd failed, refused us, or answered what we cannot read.
    Etcd,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            cause: None,
        }
    }

    /// A value that is not what it must be.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(Kind::Invalid, message)
    }

    /// The same error, caused by `cause`.
    pub fn caused_by(mut self, cause: impl Into<Box<dyn StdError + Send + Sync>>) -> Error {
        self.cause = Some(cause.into());
        self
    }

    /// The same error, about `context` (a field, say): `context: message`.
    pub fn within(mut self, context: impl fmt::Display) -> Error {
        self.message = format!("{context}: {}", self.message);
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.message)?;
        match &self.cause {
            Some(cause) => write!(f, ": {cause}"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("cause", &self.cause)
            .finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn StdError + 'static))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_and_told_after_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Error::new(Kind::Read, "/etc/secret")
            .caused_by(io)
            .within("cluster.secret_file");
        assert_eq!(
            e.to_string(),
            "cluster.secret_file: /etc/secret: no such file"
        );
        assert_eq!(e.kind(), Kind::Read);
        let cause = e.source().expect("a cause");
        assert!(cause.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(Error::invalid("empty").to_string(), "empty");
    }
}
