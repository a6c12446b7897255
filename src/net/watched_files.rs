//! A value loaded from files and loaded again when they change: TLS
//! certificates and CAs (`tls_files`), secrets (`secret_files`), anything a
//! Kubernetes Secret or ConfigMap volume holds.
//!
//! The kubelet swaps a mounted Secret's files (an atomic symlink switch) a
//! minute or so after the Secret changes; a process that read them once
//! would go on using the old contents. So a [`Watched`] value remembers its
//! files' metadata (modification time, size, inode: a `stat` each, no read)
//! and, when its user asks for the value and a file changed, loads them
//! again. It looks at most once per [`RECHECK`], so asking on every
//! handshake or request costs a clock read.
//!
//! Files that do not load (one half-written, a key that does not match its
//! certificate, a secret too short) are logged and the previous value kept;
//! the next change of any of them is tried again. Each user says how
//! reloads are counted. A value with no files ([`Watched::fixed`]) never
//! changes: a setting given in the configuration itself.

use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// How often a [`Watched`] value looks at its files, at most.
pub const RECHECK: Duration = Duration::from_secs(1);

/// What identifies one version of a file: modification time, size, inode.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &str) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

type Loader<T> = Box<dyn Fn() -> Result<T> + Send + Sync>;

/// A value loaded from files, loaded again when they change.
pub struct Watched<T> {
    /// What the files are, for the log ("peer TLS certificate").
    what: String,
    paths: Vec<String>,
    load: Loader<T>,
    /// Told of every reload: true when it loaded.
    on_reload: fn(bool),
    state: Mutex<State<T>>,
}

struct State<T> {
    /// The files' stamps when last tried (loaded or not).
    stamps: Vec<Stamp>,
    checked: Instant,
    value: Arc<T>,
    /// Counts the values loaded: 0 for the first.
    generation: u64,
}

impl<T> Watched<T> {
    /// Load the value from `paths` now with `load`; an error says what is
    /// wrong with the files.
    pub fn new(
        what: &str,
        paths: &[&str],
        load: impl Fn() -> Result<T> + Send + Sync + 'static,
        on_reload: fn(bool),
    ) -> Result<Watched<T>> {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let value = Arc::new(load()?);
        Ok(Watched {
            what: what.to_string(),
            paths,
            load: Box::new(load),
            on_reload,
            state: Mutex::new(State {
                stamps,
                checked: Instant::now(),
                value,
                generation: 0,
            }),
        })
    }

    /// A value that comes from no file and never changes (a secret given in
    /// the configuration rather than as a file).
    pub fn fixed(what: &str, value: T) -> Watched<T> {
        Watched {
            what: what.to_string(),
            paths: Vec::new(),
            load: Box::new(|| Err(Error::invalid("a fixed value is never loaded again"))),
            on_reload: |_| {},
            state: Mutex::new(State {
                stamps: Vec::new(),
                checked: Instant::now(),
                value: Arc::new(value),
                generation: 0,
            }),
        }
    }

    /// The current value, loaded again first if a file changed.
    pub fn current(&self) -> Arc<T> {
        self.current_with_generation().0
    }

    /// The current value and its generation (which changes with the value).
    pub fn current_with_generation(&self) -> (Arc<T>, u64) {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let stamps: Vec<Stamp> = self.paths.iter().map(|p| stamp(p)).collect();
            if stamps != state.stamps {
                state.stamps = stamps;
                self.reload(&mut state);
            }
        }
        (state.value.clone(), state.generation)
    }

    fn reload(&self, state: &mut State<T>) {
        match (self.load)() {
            Ok(value) => {
                state.value = Arc::new(value);
                state.generation += 1;
                (self.on_reload)(true);
                log::info!("reloaded the {} from {}", self.what, self.paths.join(", "));
            }
            Err(why) => {
                (self.on_reload)(false);
                log::warn!("keeping the previous {}: {why}", self.what);
            }
        }
    }
}

impl<T> fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    static RELOADS: AtomicU32 = AtomicU32::new(0);

    fn count(_loaded: bool) {
        RELOADS.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn a_changed_file_is_loaded_again_and_a_bad_one_keeps_the_value() {
        let path = std::env::temp_dir().join(format!("ringside-watched-{}", std::process::id()));
        let path = path.display().to_string();
        std::fs::write(&path, "1").unwrap();
        let read = {
            let path = path.clone();
            move || {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| Error::new(crate::error::Kind::Read, &path).caused_by(e))?;
                text.trim()
                    .parse::<u32>()
                    .map_err(|e| Error::invalid(format!("{text:?}: {e}")))
            }
        };
        let watched = Watched::new("a number", &[&path], read, count).unwrap();
        assert_eq!(watched.current_with_generation(), (Arc::new(1), 0));
        // Not looked at again within RECHECK.
        std::fs::write(&path, "22").unwrap();
        assert_eq!(*watched.current(), 1);
        watched.state.lock().checked -= RECHECK;
        assert_eq!(watched.current_with_generation(), (Arc::new(22), 1));
        std::fs::write(&path, "not a number").unwrap();
        watched.state.lock().checked -= RECHECK;
        assert_eq!(
            *watched.current(),
            22,
            "a file that does not load keeps the value"
        );
        assert_eq!(RELOADS.load(Ordering::SeqCst), 2);
        let _ = std::fs::remove_file(&path);
    }
}
