//! Compiled plugins kept on disk, so a restart deserializes instead of recompiling.
//!
//! An artifact is named by the module's content hash and the engine's
//! `precompile_compatibility_hash()`, so a wasmtime upgrade, other engine settings or another
//! CPU look for another file and recompile. Deserializing trusts its input completely, so
//! every file ends with an HMAC-SHA256, under a key only this host holds, of the name and
//! the artifact: a file this host did not write (copied from elsewhere, truncated, tampered
//! with) is never deserialized; it is recompiled and replaced.
//!
//! The tag goes at the end so the file itself is a valid artifact (wasmtime locates what it
//! reads by the ELF headers' offsets and ignores trailing bytes): a verified file is mapped
//! straight into memory by `Component::deserialize_file` rather than copied, so only the
//! pages of code a plugin actually runs become resident, and they are the kernel's clean,
//! shared page cache rather than the process's own memory. Files are only ever replaced by
//! rename, never rewritten in place, so a mapped file does not change under the host.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::model::ModuleId;

type HmacSha256 = Hmac<Sha256>;

const MAC_LEN: usize = 32;

/// The artifact folder and its key.
pub struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
}

/// Why a compiled artifact on disk is not used (it is compiled again instead).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ArtifactRejected(pub String);

impl ArtifactCache {
    /// A cache in `dir` (created when missing) whose artifacts are authenticated with `key`.
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub fn new(dir: &Path, key: [u8; 32]) -> io::Result<ArtifactCache> {
        fs::create_dir_all(dir)?;
        Ok(ArtifactCache {
            dir: dir.to_path_buf(),
            key,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn name(id: &ModuleId, compat: &str) -> String {
        format!("{id}-{compat}.cwasm")
    }

    fn mac(&self, name: &str, artifact: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("any key length works");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(artifact);
        mac
    }

    /// The path of the artifact of `id` for engines with `compat`, once its tag proves this
    /// host wrote it. `Err` says why a file that exists was not used.
    pub fn verified(
        &self,
        id: &ModuleId,
        compat: &str,
    ) -> Result<Option<PathBuf>, ArtifactRejected> {
        let name = Self::name(id, compat);
        let path = self.dir.join(&name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ArtifactRejected(format!("reading {name}: {e}"))),
        };
        let Some(split) = bytes.len().checked_sub(MAC_LEN) else {
            return Err(ArtifactRejected(format!("{name} is truncated")));
        };
        let (artifact, tag) = bytes.split_at(split);
        self.mac(&name, artifact).verify_slice(tag).map_err(|_| {
            ArtifactRejected(format!(
                "{name} was not written by this host (authentication failed)"
            ))
        })?;
        Ok(Some(path))
    }

    /// Stores the artifact of `id` atomically (a crash leaves the old file or none).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, id: &ModuleId, compat: &str, artifact: &[u8]) -> io::Result<()> {
        let name = Self::name(id, compat);
        let tag = self.mac(&name, artifact).finalize().into_bytes();
        // A temp file of this write's own: two threads compiling the same module at once
        // (deliveries of a module new to this host) must not write into one file.
        let temp = self.dir.join(format!(
            ".{name}.{}.{:016x}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut file = fs::File::create(&temp)?;
        file.write_all(artifact)?;
        file.write_all(&tag)?;
        file.sync_all()?;
        fs::rename(&temp, self.dir.join(&name))
    }

    /// Removes every artifact of `id` (any engine).
    pub fn remove(&self, id: &ModuleId) {
        let prefix = format!("{id}-");
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// A stable text form of an engine's `precompile_compatibility_hash()`.
pub fn compatibility(engine: &wasmtime::Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..12])
}
