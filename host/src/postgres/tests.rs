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
