//! Backups while the host runs: the storage's copy into a new directory on the server, with
//! the secrets key beside it when it lives in the data directory, so a host starts from the
//! copy as from any data directory.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Error, Pipeline};
use crate::model::Millis;
use crate::storage::BackupReport;

/// Where to write a backup.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupInput {
    /// An absolute path on the server's filesystem: a new or empty directory.
    pub dir: String,
}

/// The file written last into a backup, once everything else in it is on disk: a directory
/// without it is not a complete backup.
pub const MARKER: &str = "backup.json";

/// What a backup wrote.
#[derive(Debug, Serialize)]
pub struct Backup {
    /// The directory written.
    pub dir: PathBuf,
    /// The moment the copy stands for.
    pub taken_at: Millis,
    /// What was copied.
    #[serde(flatten)]
    pub copied: BackupReport,
    /// Whether the secrets key was copied beside it (it is when it is the data directory's
    /// `secrets.key`; a key given in the settings is the operator's to keep).
    pub secrets_key_copied: bool,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
}

/// Releases the one-backup-at-a-time flag when the copy ends (not when its caller goes).
struct Running(Arc<Pipeline>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.backing_up.store(false, Ordering::Release);
    }
}

impl Pipeline {
    /// Writes a backup into `input.dir` while the host goes on working; one at a time. The
    /// copy runs on a blocking thread and holds its turn until it ends, whether or not its
    /// caller still waits.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a path that is not absolute, has `..` in it, is not a new or
    /// empty directory, or is inside the data directory; [`Error::Busy`] while another backup
    /// runs; a storage error.
    pub async fn backup(self: &Arc<Self>, input: BackupInput) -> Result<Backup, Error> {
        let dir = PathBuf::from(&input.dir);
        self.check_backup_dir(&dir)?;
        if self.backing_up.swap(true, Ordering::AcqRel) {
            return Err(Error::Busy(
                "a backup is already running; try again when it has answered".into(),
            ));
        }
        let running = Running(self.clone());
        let taken_at = self.now();
        tokio::task::spawn_blocking(move || {
            let pipeline = running.0.clone();
            let written = pipeline.write_backup(&dir, taken_at);
            drop(running);
            written
        })
        .await
        .expect("a backup does not panic")
    }

    /// Makes the directory, copies the store and the secrets key. Blocking.
    fn write_backup(&self, dir: &Path, taken_at: Millis) -> Result<Backup, Error> {
        create_private_dir(dir).map_err(|e| {
            Error::invalid("dir", format!("cannot create `{}`: {e}", dir.display()))
        })?;
        // Checked again once it exists, links resolved.
        self.check_outside_data_dir(dir)?;
        let started = Instant::now();
        let copied = self.store.backup(dir, taken_at)?;
        let secrets = &self.config.secrets;
        let mut secrets_key_copied = false;
        if secrets.key.is_none() && secrets.key_file.is_none() {
            let key_file = secrets.key_file(&self.config.data_dir);
            if key_file.exists() {
                std::fs::read(&key_file)
                    .and_then(|key| write_private(&dir.join("secrets.key"), &key))
                    .map_err(|e| Error::invalid("dir", format!("copying the secrets key: {e}")))?;
                secrets_key_copied = true;
            }
        }
        let backup = Backup {
            dir: dir.to_path_buf(),
            taken_at,
            copied,
            secrets_key_copied,
            took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let report = serde_json::to_vec_pretty(&backup).expect("a report serialises");
        write_private(&dir.join(MARKER), &report)
            .map_err(|e| Error::invalid("dir", format!("writing {MARKER}: {e}")))?;
        Ok(backup)
    }

    fn check_backup_dir(&self, dir: &Path) -> Result<(), Error> {
        let shown = dir.display();
        if !dir.is_absolute() {
            return Err(Error::invalid(
                "dir",
                format!("`{shown}` is not an absolute path on the server"),
            ));
        }
        if dir
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(Error::invalid(
                "dir",
                format!("`{shown}` has `.` or `..` in it; give the directory's plain path"),
            ));
        }
        self.check_outside_data_dir(dir)?;
        if dir.exists() {
            let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none());
            if !matches!(empty, Ok(true)) {
                return Err(Error::invalid(
                    "dir",
                    format!(
                        "`{shown}` exists and is not an empty directory; a backup goes into \
                         a new or empty one"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Refuses `dir` when it (or its nearest existing ancestor, links resolved) lies in the
    /// data directory.
    fn check_outside_data_dir(&self, dir: &Path) -> Result<(), Error> {
        let data_dir = self
            .config
            .data_dir
            .canonicalize()
            .unwrap_or_else(|_| self.config.data_dir.clone());
        let existing = dir
            .ancestors()
            .find(|a| a.exists())
            .and_then(|a| a.canonicalize().ok());
        if existing.is_some_and(|a| a.starts_with(&data_dir)) {
            return Err(Error::invalid(
                "dir",
                format!(
                    "`{}` is inside the data directory; write the backup elsewhere",
                    dir.display()
                ),
            ));
        }
        Ok(())
    }
}

/// Creates `dir` (and its parents) readable by its owner only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Writes `bytes` to a new file `to` readable by its owner only, synced with its directory
/// entry.
fn write_private(to: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(to)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    // The directory entry too, so the file is there after a crash.
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
