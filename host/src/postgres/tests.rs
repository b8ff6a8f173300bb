//! The storage contract on PostgreSQL, against a throwaway server of the test process.

use std::path::Path;
use std::time::Duration;

use super::throwaway::Server;
use super::{Postgres, Settings};
use crate::storage::conformance::{self, Opener};
use crate::storage::seal::Sealer;

/// Opens the storage of a check in a schema named after its directory, on the process's
/// throwaway server.
pub(crate) struct SchemaPerDir;

/// The database the checks share.
const DATABASE: &str = "conformance";

/// The settings of the storage "in" `dir`: a schema named after the directory.
pub(crate) fn settings_for(dir: &Path) -> Settings {
    let server = Server::shared();
    server
        .create_database(DATABASE)
        .expect("create the conformance database");
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let schema: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Settings {
        url: server.url(DATABASE),
        schema: format!("t_{schema}"),
        pool_size: 8,
        statement_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(30),
    }
}

impl Opener for SchemaPerDir {
    type Opened = Postgres;

    fn open(&self, dir: &Path) -> Postgres {
        Postgres::open(&settings_for(dir), Sealer::new([7; 32]))
            .expect("open the PostgreSQL engine")
    }

    fn backs_up(&self) -> bool {
        false
    }

    fn shares(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keeps_the_storage_contract() {
    conformance::run(&SchemaPerDir).await;
}

#[test]
fn hosts_starting_together_migrate_once_and_all_open() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(dir.path());
    let opened: Vec<_> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| Postgres::open(&settings, Sealer::new([7; 32]))))
            .collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    for engine in &opened {
        assert!(engine.is_ok(), "{:?}", engine.as_ref().err());
    }
    let applied = Server::shared()
        .psql(
            DATABASE,
            &format!("SELECT count(*) FROM {}.migrations", settings.schema),
        )
        .unwrap();
    let ran = super::schema::MIGRATIONS.len();
    assert_eq!(applied.trim(), ran.to_string(), "each migration ran once");
}

#[test]
fn a_host_with_another_secrets_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(dir.path());
    drop(Postgres::open(&settings, Sealer::new([7; 32])).unwrap());
    let refused = Postgres::open(&settings, Sealer::new([8; 32]))
        .err()
        .unwrap();
    assert!(
        refused.to_string().contains("same secrets.key"),
        "{refused}"
    );
}
