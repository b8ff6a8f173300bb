//! The free-space guard: the store never runs its filesystem out of space.
//!
//! sled fails badly on a full disk (an interrupted write poisons the open database; before
//! the vendored fix, a restart on a full disk left a snapshot that no later start could
//! read). So the host keeps a floor of free space (`store.min_free_bytes`, or
//! `store.min_free_percent` of the filesystem, whichever is larger): below it, new events and
//! new definitions are refused with a clear error while pending deliveries go on, and above
//! it again everything is accepted. Before the store opens, free space is checked first, so
//! a start on a full disk refuses without writing a byte.
//!
//! A *ballast* file (`store.ballast_bytes`, in the data directory) holds space in reserve:
//! it is deleted when free space falls under the floor (at start, or while running), which
//! gives the store room to open and finish its pending work, and made again once there is
//! room for it above the floor.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::StoreConfig;
pub use crate::storage::{mib, LowSpace, SpaceStatus};

/// The ballast file's name in the data directory.
pub const BALLAST_FILE: &str = "ballast";
/// At most this much free space is needed to open the store (less when the floor is lower).
const OPEN_SPACE: u64 = 8 << 20;
/// How long a measurement is reused.
const MEASURE_EVERY: Duration = Duration::from_millis(100);

/// Free and total bytes of a filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged process may still write.
    pub free: u64,
    /// The filesystem's size.
    pub total: u64,
}

/// Measures the filesystem holding `dir`.
///
/// # Errors
/// When `statvfs` fails (the directory is gone, say).
pub fn measure(dir: &Path) -> std::io::Result<Space> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: statvfs only writes the struct it is given; the path is NUL-terminated.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let unit = stat.f_frsize as u64;
        Ok(Space {
            free: (stat.f_bavail as u64).saturating_mul(unit),
            total: (stat.f_blocks as u64).saturating_mul(unit),
        })
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(Space {
            free: u64::MAX,
            total: u64::MAX,
        })
    }
}

/// Why the store was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenRefused {
    /// Too little free space to open without risking the store; nothing was written.
    #[error(
        "its filesystem has {} free, less than the {} needed to open the store safely; \
         nothing was written: free space and start again",
        mib(*free),
        mib(*needed)
    )]
    Full {
        /// Free bytes.
        free: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// The filesystem could not be measured.
    #[error("measuring its free space: {0}")]
    Measure(#[from] std::io::Error),
}

/// The guard over one data directory.
pub struct SpaceGuard {
    dir: PathBuf,
    min_bytes: u64,
    min_percent: f64,
    ballast_bytes: u64,
    accepting: AtomicBool,
    free: AtomicU64,
    floor: AtomicU64,
    measured: Mutex<Option<Instant>>,
}

impl SpaceGuard {
    /// A guard over `dir` with the settings in `config`.
    pub fn new(dir: &Path, config: &StoreConfig) -> SpaceGuard {
        SpaceGuard {
            dir: dir.to_path_buf(),
            min_bytes: config.min_free_bytes,
            min_percent: config.min_free_percent,
            ballast_bytes: config.ballast_bytes,
            accepting: AtomicBool::new(true),
            free: AtomicU64::new(u64::MAX),
            floor: AtomicU64::new(0),
            measured: Mutex::new(None),
        }
    }

    fn is_off(&self) -> bool {
        self.min_bytes == 0 && self.min_percent <= 0.0
    }

    /// The floor for a filesystem of `total` bytes.
    fn floor_of(&self, total: u64) -> u64 {
        let by_percent = (total as f64 * self.min_percent / 100.0) as u64;
        self.min_bytes.max(by_percent)
    }

    fn ballast(&self) -> PathBuf {
        self.dir.join(BALLAST_FILE)
    }

    /// Before the store opens: releases the ballast when space is under the floor, and
    /// refuses when too little is left to open safely (without writing anything).
    ///
    /// # Errors
    /// [`OpenRefused`] naming the free space and what is needed.
    pub fn before_open(&self) -> Result<(), OpenRefused> {
        if self.is_off() {
            return Ok(());
        }
        let mut space = measure(&self.dir)?;
        let floor = self.floor_of(space.total);
        if space.free < floor && self.release_ballast() {
            space = measure(&self.dir)?;
        }
        let needed = floor.min(OPEN_SPACE);
        if space.free < needed {
            return Err(OpenRefused::Full {
                free: space.free,
                needed,
            });
        }
        self.record(space, true);
        Ok(())
    }

    /// Measures now and makes the ballast again when there is room for it (it writes the
    /// whole file: call it off the request path, as the host's disk watch does).
    pub fn maintain(&self) {
        if self.is_off() {
            return;
        }
        match measure(&self.dir) {
            Ok(space) => self.record(space, true),
            Err(e) => tracing::error!(dir = %self.dir.display(), "measuring free space: {e}"),
        }
    }

    /// Whether a write that grows the store may go ahead now.
    ///
    /// # Errors
    /// [`LowSpace`] while free space is under the floor.
    pub fn admit(&self) -> Result<(), LowSpace> {
        let status = self.status();
        if status.accepting {
            Ok(())
        } else {
            Err(LowSpace {
                free: status.free,
                floor: status.floor,
            })
        }
    }

    /// The current state, measured at most every 100 ms.
    pub fn status(&self) -> SpaceStatus {
        let mut measured = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        if measured.is_none_or(|at| at.elapsed() >= MEASURE_EVERY) {
            *measured = Some(Instant::now());
            drop(measured);
            match measure(&self.dir) {
                Ok(space) => self.record(space, false),
                Err(e) => tracing::error!(dir = %self.dir.display(), "measuring free space: {e}"),
            }
        }
        SpaceStatus {
            free: self.free.load(Ordering::Relaxed),
            floor: self.floor.load(Ordering::Relaxed),
            accepting: self.accepting.load(Ordering::Relaxed),
        }
    }

    /// Takes a measurement in: the accepting state (logged when it changes), the ballast
    /// released under the floor, and (when `make` is set) made again once there is room.
    fn record(&self, mut space: Space, make: bool) {
        let floor = self.floor_of(space.total);
        if space.free < floor && self.release_ballast() {
            if let Ok(after) = measure(&self.dir) {
                space = after;
            }
        } else if make
            && self.ballast_bytes > 0
            && space.free >= floor.saturating_add(self.ballast_bytes.saturating_mul(2))
            && self.make_ballast()
        {
            space.free = space.free.saturating_sub(self.ballast_bytes);
        }
        let accepting = space.free >= floor;
        self.free.store(space.free, Ordering::Relaxed);
        self.floor.store(floor, Ordering::Relaxed);
        let was = self.accepting.swap(accepting, Ordering::Relaxed);
        if was && !accepting {
            tracing::warn!(
                free = space.free,
                floor,
                "{}",
                LowSpace {
                    free: space.free,
                    floor
                }
            );
        } else if !was && accepting {
            tracing::info!(
                free = space.free,
                floor,
                "free space is above the floor again: accepting new events"
            );
        }
    }

    /// Deletes the ballast; whether there was one.
    fn release_ballast(&self) -> bool {
        match std::fs::remove_file(self.ballast()) {
            Ok(()) => {
                tracing::warn!(
                    bytes = self.ballast_bytes,
                    "free space under the floor: released the ballast file"
                );
                true
            }
            Err(_) => false,
        }
    }

    /// Makes the ballast when it is missing; whether it was made now.
    fn make_ballast(&self) -> bool {
        let path = self.ballast();
        if path.exists() {
            return false;
        }
        match write_ballast(&path, self.ballast_bytes) {
            Ok(()) => true,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!("making the ballast file {}: {e}", path.display());
                false
            }
        }
    }
}

/// Writes `bytes` of zeros (allocated, not sparse) to a new file at `path`.
fn write_ballast(path: &Path, bytes: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    let aside = path.with_extension("making");
    let mut file = std::fs::File::create(&aside)?;
    let block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    std::fs::rename(&aside, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min_free_bytes: u64, ballast_bytes: u64) -> StoreConfig {
        StoreConfig {
            min_free_bytes,
            min_free_percent: 0.0,
            ballast_bytes,
            ..StoreConfig::default()
        }
    }

    #[test]
    fn the_floor_is_the_larger_of_bytes_and_percentage() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(100, 0);
        c.min_free_percent = 10.0;
        let guard = SpaceGuard::new(dir.path(), &c);
        assert_eq!(guard.floor_of(500), 100);
        assert_eq!(guard.floor_of(5_000), 500);
    }

    #[test]
    fn refuses_under_the_floor_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let guard = SpaceGuard::new(dir.path(), &config(u64::MAX / 4, 0));
        let low = guard.admit().unwrap_err();
        assert!(low.to_string().contains("below the floor"), "{low}");
        assert!(!guard.status().accepting);
        // Opening needs far less than the floor: the store opens and refuses new writes.
        assert!(guard.before_open().is_ok());
        assert!(!guard.status().accepting);
        let off = SpaceGuard::new(dir.path(), &config(0, 0));
        assert!(off.admit().is_ok());
        assert!(off.before_open().is_ok());
    }

    #[test]
    fn the_ballast_is_made_with_room_and_released_under_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let guard = SpaceGuard::new(dir.path(), &config(1, 1 << 20));
        guard.before_open().unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join(BALLAST_FILE))
                .unwrap()
                .len(),
            1 << 20
        );
        // Now under a floor no disk has: released at the next start, and not made again.
        let starved = SpaceGuard::new(dir.path(), &config(u64::MAX / 4, 1 << 20));
        starved.before_open().unwrap();
        assert!(!dir.path().join(BALLAST_FILE).exists());
        starved.maintain();
        assert!(!dir.path().join(BALLAST_FILE).exists());
    }
}
