//! Finding PostgreSQL's binaries: `WASMHOOKS_PG_BIN`, else beside the `initdb` on `PATH`,
//! else the newest Debian version under `/usr/lib/postgresql`.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Why a server could not be started when no binaries are found.
pub(super) const NOT_FOUND: &str =
    "PostgreSQL's server binaries (initdb, postgres) were not found on PATH or in \
     /usr/lib/postgresql/*/bin: install Debian's `postgresql` package (apt-get install \
     postgresql), or set WASMHOOKS_PG_BIN";
/// Where Debian installs each major version's binaries (`<version>/bin`).
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The directory holding the server binaries, found once per process.
pub(super) fn bin_dir() -> Result<&'static Path, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        find_bin_dir(
            std::env::var_os("WASMHOOKS_PG_BIN").as_deref(),
            std::env::var_os("PATH").as_deref(),
            Path::new(DEBIAN_ROOT),
        )
    });
    found.as_deref().map_err(Clone::clone)
}

/// Finds the server binaries: in `env_dir` (`WASMHOOKS_PG_BIN`) if given, else next to the
/// `initdb` on `path`, else in the newest `<debian_root>/<version>/bin`.
pub(super) fn find_bin_dir(
    env_dir: Option<&OsStr>,
    path: Option<&OsStr>,
    debian_root: &Path,
) -> Result<PathBuf, String> {
    if let Some(dir) = env_dir {
        let dir = PathBuf::from(dir);
        if !has_server(&dir) {
            return Err(format!(
                "WASMHOOKS_PG_BIN is {}, which does not hold PostgreSQL's server binaries \
                 (initdb, postgres)",
                dir.display()
            ));
        }
        return Ok(dir);
    }
    let beside_initdb = find_on_path("initdb", path).and_then(|initdb| {
        let resolved = fs::canonicalize(&initdb).ok()?;
        [resolved, initdb]
            .iter()
            .filter_map(|file| file.parent())
            .find(|dir| has_server(dir))
            .map(Path::to_path_buf)
    });
    beside_initdb
        .or_else(|| newest_debian_bin_dir(debian_root))
        .ok_or_else(|| NOT_FOUND.to_string())
}

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

fn find_on_path(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|file| file.is_file())
}

/// The `bin` directory of the highest version under `root` that holds the server binaries.
fn newest_debian_bin_dir(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_server(bin))
        .max()
        .map(|(_, bin)| bin)
}

/// A client program: the one beside the server binaries, else the one on `PATH`.
pub(super) fn tool(bin: &Path, name: &str) -> PathBuf {
    let beside = bin.join(name);
    if beside.is_file() {
        return beside;
    }
    find_on_path(name, std::env::var_os("PATH").as_deref()).unwrap_or(beside)
}
