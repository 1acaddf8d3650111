//! What a reload watches: the configuration file, the TLS files and the
//! secret files it names, each through its parent directory (editors
//! rename a new file over the old one), filtered by file name; and the
//! contents' digests that tell a changed TLS file from a touched one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::plan::tls_files;
use crate::config::Config;

/// SHA-256 of a file's contents (`None` if unreadable): TLS files are small.
fn digest(path: &Path) -> Option<[u8; 32]> {
    crate::secret::read_small_file(path, crate::secret::MAX_FILE)
        .ok()
        .map(|b| Sha256::digest(&b).into())
}

pub(super) fn digests(c: &Config) -> BTreeMap<PathBuf, Option<[u8; 32]>> {
    tls_files(c)
        .into_iter()
        .map(|(_, p)| {
            let d = digest(&p);
            (p, d)
        })
        .collect()
}

/// The files to watch, as (canonical directory, file name): the
/// configuration file, its TLS files and the files secrets come from (a
/// changed key file reloads, and the new key applies like any other).
fn watch_targets(c: &Config) -> BTreeSet<(PathBuf, std::ffi::OsString)> {
    std::iter::once(c.path.clone())
        .chain(tls_files(c).into_iter().map(|(_, p)| p))
        .chain(c.secret_files.iter().cloned())
        .filter_map(|p| {
            let name = p.file_name()?.to_owned();
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            };
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            Some((dir, name))
        })
        .collect()
}

/// inotify on the directories of the watched files; relevant events go to
/// a bounded channel of one (a burst collapses into one pending wake-up).
pub(super) struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
    targets: Arc<Mutex<BTreeSet<(PathBuf, std::ffi::OsString)>>>,
    dirs: BTreeSet<PathBuf>,
}

impl Watch {
    pub(super) fn new(tx: mpsc::Sender<()>) -> Watch {
        let targets: Arc<Mutex<BTreeSet<(PathBuf, std::ffi::OsString)>>> = Arc::default();
        let seen = targets.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            use notify::event::{AccessKind, AccessMode, EventKind};
            let Ok(event) = res else { return };
            match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
                EventKind::Access(_) => return,
                _ => {}
            }
            let targets = seen.lock().expect("watch targets");
            let relevant = event
                .paths
                .iter()
                .any(|p| match (p.parent(), p.file_name()) {
                    (Some(d), Some(n)) => targets.contains(&(d.to_owned(), n.to_owned())),
                    _ => false,
                });
            drop(targets);
            if relevant {
                // Full: a wake-up is already pending.
                let _ = tx.try_send(());
            }
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(w) => Some(w),
            Err(e) => {
                error!(
                    error = %e,
                    "cannot watch the configuration file; reload with SIGHUP \
                     (`systemctl reload dakkio-gateway`)"
                );
                None
            }
        };
        Watch {
            watcher,
            targets,
            dirs: BTreeSet::new(),
        }
    }

    /// Watch what `config` names (and stop watching what it no longer does).
    pub(super) fn update(&mut self, config: &Config) {
        use notify::Watcher as _;
        let targets = watch_targets(config);
        let dirs: BTreeSet<PathBuf> = targets.iter().map(|(d, _)| d.clone()).collect();
        *self.targets.lock().expect("watch targets") = targets;
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for gone in self.dirs.difference(&dirs) {
            let _ = w.unwatch(gone);
        }
        for dir in dirs.difference(&self.dirs) {
            if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                warn!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot watch a directory for configuration changes; reload with SIGHUP"
                );
            }
        }
        self.dirs = dirs;
    }
}
