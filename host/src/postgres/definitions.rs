//! Definitions on PostgreSQL: modules, webhooks, connections, API keys and signing secrets
//! (credentials sealed), the change feed, plugin state and the host's own secrets.
//!
//! The change feed: each write or delete of a webhook, connection or signing secret adds a
//! row to `definition_changes` in its own transaction, at a position taken from a sequence
//! under a transaction-scoped advisory lock, so positions commit in the order they are taken
//! and a reader that has seen a position has seen every one before it. The feed keeps the
//! last [`KEPT`] positions; a reader from before the last one dropped reads everything again.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{cached, db_error, decode, encode, record_error, seal_context, Postgres};
use crate::model::{
    ApiKey, ApiKeyId, Connection, ConnectionId, ModuleId, ModuleInfo, SigningKeys, Webhook,
    WebhookId,
};
use crate::storage::{
    Changed, Conflict, DefinitionChanges, Definitions, PluginStates, StorageError,
};

/// The advisory lock feed positions are taken under ("wh-feed!").
const FEED_LOCK: i64 = 0x7768_2d66_6565_6421;
/// Entries kept: those within this many positions of the newest.
const KEPT: i64 = 10_000;
/// Most entries one read returns.
const READ_AT_MOST: i64 = 1_000;
/// The `meta` key of the last position dropped from the feed.
const TRIMMED: &str = "definition_changes_trimmed";
/// The `meta` key of a value sealed under the secrets key, to tell a host started with
/// another key.
const SEAL_CHECK: &str = "sealed_with";

/// A record to write with its change-feed entry.
enum FedWrite<'a> {
    /// A webhook over the version read (its tenant kept beside it, for plugin state).
    Webhook(&'a Webhook, Vec<u8>),
    /// A connection over the version read.
    Connection(&'a Connection, Vec<u8>),
    /// A webhook's signing secrets.
    Signing(&'a WebhookId, Vec<u8>),
    /// A webhook removed, with its signing secrets and plugin state.
    DeleteWebhook(&'a WebhookId),
    /// A connection removed.
    DeleteConnection(&'a ConnectionId),
}

impl FedWrite<'_> {
    fn changed(&self) -> (&'static str, &str) {
        match self {
            FedWrite::Webhook(w, _) => ("w", w.id.as_str()),
            FedWrite::Signing(id, _) | FedWrite::DeleteWebhook(id) => ("w", id.as_str()),
            FedWrite::Connection(c, _) => ("c", c.id.as_str()),
            FedWrite::DeleteConnection(id) => ("c", id.as_str()),
        }
    }
}

impl Postgres {
    /// Checks that the records sealed in this database open with this host's key, noting
    /// the key's check value on the first start.
    pub(super) async fn check_sealer(&self) -> Result<(), StorageError> {
        let client = self.client().await?;
        let context = seal_context("meta", SEAL_CHECK);
        let fresh = self.sealer().seal(&context, b"wasmhooks");
        let row = client
            .query_one(
                &cached(
                    &client,
                    "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = meta.value
                 RETURNING value",
                )
                .await?,
                &[&SEAL_CHECK, &fresh],
            )
            .await
            .map_err(db_error)?;
        let stored: Vec<u8> = row.get(0);
        match self.sealer().open(&context, &stored) {
            Ok(Some(_)) => Ok(()),
            _ => Err(StorageError::Unavailable {
                source: "this database's credentials are sealed under another secrets key: \
                         every host of one database needs the same secrets.key"
                    .into(),
                out_of_space: false,
            }),
        }
    }

    /// A random 32-byte secret under `name`, made by whichever host asks first.
    pub(super) async fn stored_secret(&self, name: &str) -> Result<[u8; 32], StorageError> {
        let client = self.client().await?;
        let key = format!("secret:{name}");
        let fresh: [u8; 32] = rand::random();
        let row = client
            .query_one(
                &cached(
                    &client,
                    "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = meta.value
                 RETURNING value",
                )
                .await?,
                &[&key, &fresh.as_slice()],
            )
            .await
            .map_err(db_error)?;
        let stored: Vec<u8> = row.get(0);
        stored
            .try_into()
            .map_err(|_| record_error("meta", &key, "not 32 bytes"))
    }

    fn seal(&self, table: &str, key: &str, plain: &[u8]) -> Vec<u8> {
        self.sealer().seal(&seal_context(table, key), plain)
    }

    fn unseal<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
        stored: &[u8],
    ) -> Result<T, StorageError> {
        match self.sealer().open(&seal_context(table, key), stored) {
            Ok(Some(plain)) => decode(table, key, &plain),
            Ok(None) => decode(table, key, stored),
            Err(e) => Err(record_error(table, key, e)),
        }
    }

    /// Writes `write` with its change-feed entry, in one transaction; `false` when a
    /// versioned write found another version stored.
    async fn write_fed(&self, write: FedWrite<'_>) -> Result<bool, StorageError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(db_error)?;
        transaction
            .execute(
                &cached(&transaction, "SELECT pg_advisory_xact_lock($1)").await?,
                &[&FEED_LOCK],
            )
            .await
            .map_err(db_error)?;
        if !write_record(&transaction, &write).await? {
            return Ok(false);
        }
        let (kind, id) = write.changed();
        append_change(&transaction, kind, id).await?;
        // Heard by every host at commit: their catalogs read the feed at once.
        transaction
            .execute(
                &cached(&transaction, "SELECT pg_notify($1, '')").await?,
                &[&self.inner.channels.defined],
            )
            .await
            .map_err(db_error)?;
        transaction.commit().await.map_err(db_error)?;
        Ok(true)
    }

    async fn read_changes(&self, after: u64) -> Result<DefinitionChanges, StorageError> {
        let client = self.client().await?;
        let trimmed = client
            .query_opt(
                &cached(&client, "SELECT value FROM meta WHERE key = $1").await?,
                &[&TRIMMED],
            )
            .await
            .map_err(db_error)?
            .map_or(0, |row| {
                let bytes: Vec<u8> = row.get(0);
                <[u8; 8]>::try_from(bytes.as_slice()).map_or(0, u64::from_be_bytes)
            });
        let after_position = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &cached(
                    &client,
                    "SELECT position, kind, id FROM definition_changes
                 WHERE position > $1 ORDER BY position LIMIT $2",
                )
                .await?,
                &[&after_position, &READ_AT_MOST],
            )
            .await
            .map_err(db_error)?;
        let mut out = DefinitionChanges {
            position: after,
            reset: trimmed > after,
            ..DefinitionChanges::default()
        };
        for row in rows {
            let position: i64 = row.get(0);
            let kind: &str = row.get(1);
            let id: &str = row.get(2);
            out.position = position as u64;
            let changed = match kind {
                "w" => WebhookId::parse(id).ok().map(Changed::Webhook),
                "c" => ConnectionId::parse(id).ok().map(Changed::Connection),
                _ => None,
            };
            match changed {
                Some(changed) => out.changed.push(changed),
                None => tracing::warn!(position, kind, id, "skipping a malformed change entry"),
            }
        }
        Ok(out)
    }

    /// Rows of `statement` (one text key, one record column) decoded as `T`, unsealed when
    /// `sealed`.
    async fn records<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
        sealed: bool,
    ) -> Result<Vec<T>, StorageError> {
        let client = self.client().await?;
        let rows = client
            .query(&cached(&client, statement).await?, params)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let key: &str = row.get(0);
                let record: &[u8] = row.get(1);
                if sealed {
                    self.unseal(table, key, record)
                } else {
                    decode(table, key, record)
                }
            })
            .collect()
    }

    /// The one record `statement` finds by `key` (`$1`), read as [`Postgres::records`] does.
    async fn record<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        statement: &str,
        key: &str,
        sealed: bool,
    ) -> Result<Option<T>, StorageError> {
        let found = self.records(table, statement, &[&key], sealed).await?;
        Ok(found.into_iter().next())
    }

    async fn execute(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StorageError> {
        let client = self.client().await?;
        client
            .execute(&cached(&client, statement).await?, params)
            .await
            .map_err(db_error)
    }
}

/// Writes a versioned definition: counts `version` up, writes, and puts it back on failure.
fn versioned(
    version: &mut u64,
    write: impl FnOnce(&mut u64) -> Result<bool, StorageError>,
) -> Result<(), StorageError> {
    *version += 1;
    match write(version) {
        Ok(true) => Ok(()),
        Ok(false) => {
            *version -= 1;
            Err(StorageError::Conflict(Conflict::Changed))
        }
        Err(e) => {
            *version -= 1;
            Err(e)
        }
    }
}

/// Writes the record of `write` (not yet its feed entry); `false` when a versioned write
/// found another version stored.
async fn write_record(
    client: &impl GenericClient,
    write: &FedWrite<'_>,
) -> Result<bool, StorageError> {
    let written = match write {
        FedWrite::Webhook(webhook, sealed) => {
            let read = webhook.version as i64 - 1;
            let statement = if read == 0 {
                "INSERT INTO webhooks (id, version, tenant, record) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO NOTHING"
            } else {
                "UPDATE webhooks SET version = $2, tenant = $3, record = $4
                 WHERE id = $1 AND version = $2::int8 - 1"
            };
            let version = webhook.version as i64;
            let params: [&(dyn ToSql + Sync); 4] =
                [&webhook.id.as_str(), &version, &webhook.tenant, sealed];
            client
                .execute(&cached(client, statement).await?, &params)
                .await
                .map_err(db_error)?
                == 1
        }
        FedWrite::Connection(connection, sealed) => {
            let read = connection.version as i64 - 1;
            let statement = if read == 0 {
                "INSERT INTO connections (id, version, record) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO NOTHING"
            } else {
                "UPDATE connections SET version = $2, record = $3
                 WHERE id = $1 AND version = $2::int8 - 1"
            };
            let version = connection.version as i64;
            client
                .execute(
                    &cached(client, statement).await?,
                    &[&connection.id.as_str(), &version, sealed],
                )
                .await
                .map_err(db_error)?
                == 1
        }
        FedWrite::Signing(id, sealed) => {
            client
                .execute(
                    &cached(
                        client,
                        "INSERT INTO signing_keys (webhook_id, record) VALUES ($1, $2)
                     ON CONFLICT (webhook_id) DO UPDATE SET record = excluded.record",
                    )
                    .await?,
                    &[&id.as_str(), sealed],
                )
                .await
                .map_err(db_error)?;
            true
        }
        FedWrite::DeleteWebhook(id) => {
            client
                .execute(
                    &cached(
                        client,
                        "WITH gone AS (DELETE FROM webhooks WHERE id = $1),
                          secrets AS (DELETE FROM signing_keys WHERE webhook_id = $1)
                     DELETE FROM plugin_state WHERE webhook_id = $1",
                    )
                    .await?,
                    &[&id.as_str()],
                )
                .await
                .map_err(db_error)?;
            true
        }
        FedWrite::DeleteConnection(id) => {
            client
                .execute(
                    &cached(client, "DELETE FROM connections WHERE id = $1").await?,
                    &[&id.as_str()],
                )
                .await
                .map_err(db_error)?;
            true
        }
    };
    Ok(written)
}

/// Appends a change of `kind` to `id` to the feed, dropping what is past [`KEPT`] (usually
/// nothing or one entry; the last dropped is noted for readers).
async fn append_change(
    client: &impl GenericClient,
    kind: &str,
    id: &str,
) -> Result<(), StorageError> {
    let row = client
        .query_one(
            &cached(
                client,
                "INSERT INTO definition_changes (position, kind, id)
                 VALUES (nextval('definition_feed'), $1, $2) RETURNING position",
            )
            .await?,
            &[&kind, &id],
        )
        .await
        .map_err(db_error)?;
    let position: i64 = row.get(0);
    client
        .execute(
            &cached(
                client,
                "WITH dropped AS (
                     DELETE FROM definition_changes WHERE position <= $1 RETURNING position
                 )
                 INSERT INTO meta (key, value)
                 SELECT $2, int8send(max(position)) FROM dropped HAVING count(*) > 0
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .await?,
            &[&(position - KEPT), &TRIMMED],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

impl Definitions for Postgres {
    fn put_module(&self, info: &ModuleInfo, bytes: &[u8]) -> Result<(), StorageError> {
        let info_bytes = encode(info);
        self.call(
            "put_module",
            self.execute(
                "INSERT INTO modules (id, info, bytes) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET info = excluded.info, bytes = excluded.bytes",
                &[&info.id.as_str(), &info_bytes, &bytes],
            ),
        )
        .map(drop)
    }

    fn delete_module(&self, id: &ModuleId) -> Result<(), StorageError> {
        self.call(
            "delete_module",
            self.execute("DELETE FROM modules WHERE id = $1", &[&id.as_str()]),
        )
        .map(drop)
    }

    fn module_info(&self, id: &ModuleId) -> Result<Option<ModuleInfo>, StorageError> {
        self.call(
            "module_info",
            self.record(
                "modules",
                "SELECT id, info FROM modules WHERE id = $1",
                id.as_str(),
                false,
            ),
        )
    }

    fn module_bytes(&self, id: &ModuleId) -> Result<Option<Vec<u8>>, StorageError> {
        self.call("module_bytes", async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &cached(&client, "SELECT bytes FROM modules WHERE id = $1").await?,
                    &[&id.as_str()],
                )
                .await
                .map_err(db_error)?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn modules(&self) -> Result<Vec<ModuleInfo>, StorageError> {
        self.call(
            "modules",
            self.records(
                "modules",
                "SELECT id, info FROM modules ORDER BY id",
                &[],
                false,
            ),
        )
    }

    fn put_webhook(&self, webhook: &mut Webhook) -> Result<(), StorageError> {
        let id = webhook.id.clone();
        let mut copy = webhook.clone();
        versioned(&mut webhook.version, |version| {
            copy.version = *version;
            // Sealed: its headers and plugin config may hold tokens.
            let sealed = self.seal("webhooks", id.as_str(), &encode(&copy));
            self.call(
                "put_webhook",
                self.write_fed(FedWrite::Webhook(&copy, sealed)),
            )
        })
    }

    fn delete_webhook(&self, id: &WebhookId) -> Result<(), StorageError> {
        self.call(
            "delete_webhook",
            self.write_fed(FedWrite::DeleteWebhook(id)),
        )
        .map(drop)
    }

    fn webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StorageError> {
        self.call(
            "webhook",
            self.record(
                "webhooks",
                "SELECT id, record FROM webhooks WHERE id = $1",
                id.as_str(),
                true,
            ),
        )
    }

    fn webhooks(&self) -> Result<Vec<Webhook>, StorageError> {
        self.call(
            "webhooks",
            self.records(
                "webhooks",
                "SELECT id, record FROM webhooks ORDER BY id",
                &[],
                true,
            ),
        )
    }

    fn put_connection(&self, connection: &mut Connection) -> Result<(), StorageError> {
        let id = connection.id.clone();
        let mut copy = connection.clone();
        versioned(&mut connection.version, |version| {
            copy.version = *version;
            let sealed = self.seal("connections", id.as_str(), &encode(&copy));
            self.call(
                "put_connection",
                self.write_fed(FedWrite::Connection(&copy, sealed)),
            )
        })
    }

    fn connection(&self, id: &ConnectionId) -> Result<Option<Connection>, StorageError> {
        self.call(
            "connection",
            self.record(
                "connections",
                "SELECT id, record FROM connections WHERE id = $1",
                id.as_str(),
                true,
            ),
        )
    }

    fn delete_connection(&self, id: &ConnectionId) -> Result<(), StorageError> {
        self.call(
            "delete_connection",
            self.write_fed(FedWrite::DeleteConnection(id)),
        )
        .map(drop)
    }

    fn connections(&self) -> Result<Vec<Connection>, StorageError> {
        self.call(
            "connections",
            self.records(
                "connections",
                "SELECT id, record FROM connections ORDER BY id",
                &[],
                true,
            ),
        )
    }

    fn put_api_key(&self, key: &ApiKey) -> Result<(), StorageError> {
        let record = encode(key);
        self.call(
            "put_api_key",
            self.execute(
                "INSERT INTO api_keys (id, record) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                &[&key.id.as_str(), &record],
            ),
        )
        .map(drop)
    }

    fn api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKey>, StorageError> {
        self.call(
            "api_key",
            self.record(
                "api_keys",
                "SELECT id, record FROM api_keys WHERE id = $1",
                id.as_str(),
                false,
            ),
        )
    }

    fn api_keys(&self) -> Result<Vec<ApiKey>, StorageError> {
        self.call(
            "api_keys",
            self.records(
                "api_keys",
                "SELECT id, record FROM api_keys ORDER BY id",
                &[],
                false,
            ),
        )
    }

    fn signing_keys(&self, id: &WebhookId) -> Result<Option<SigningKeys>, StorageError> {
        self.call(
            "signing_keys",
            self.record(
                "signing",
                "SELECT webhook_id, record FROM signing_keys WHERE webhook_id = $1",
                id.as_str(),
                true,
            ),
        )
    }

    fn put_signing_keys(&self, id: &WebhookId, keys: &SigningKeys) -> Result<(), StorageError> {
        let sealed = self.seal("signing", id.as_str(), &encode(keys));
        self.call(
            "put_signing_keys",
            self.write_fed(FedWrite::Signing(id, sealed)),
        )
        .map(drop)
    }

    fn definition_changes(&self, after: u64) -> Result<DefinitionChanges, StorageError> {
        self.call("definition_changes", self.read_changes(after))
    }

    fn definition_announcements(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        Some(self.inner.channels.definitions.clone())
    }

    fn definition_feed_head(&self) -> Result<u64, StorageError> {
        self.call("definition_feed_head", async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    &cached(
                        &client,
                        "SELECT coalesce(max(position), 0) FROM definition_changes",
                    )
                    .await?,
                    &[],
                )
                .await
                .map_err(db_error)?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }
}

impl PluginStates for Postgres {
    fn state_get(&self, webhook: &WebhookId, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.call("state_get", async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &cached(
                        &client,
                        "SELECT value FROM plugin_state WHERE webhook_id = $1 AND key = $2",
                    )
                    .await?,
                    &[&webhook.as_str(), &key],
                )
                .await
                .map_err(db_error)?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn state_size(&self, webhook: &WebhookId) -> Result<usize, StorageError> {
        self.call("state_size", async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    &cached(
                        &client,
                        "SELECT coalesce(sum(octet_length(key) + octet_length(value)), 0)::bigint
                     FROM plugin_state WHERE webhook_id = $1",
                    )
                    .await?,
                    &[&webhook.as_str()],
                )
                .await
                .map_err(db_error)?;
            Ok(row.get::<_, i64>(0) as usize)
        })
    }

    fn state_clear(&self, webhook: &WebhookId) -> Result<(), StorageError> {
        self.call(
            "state_clear",
            self.execute(
                "DELETE FROM plugin_state WHERE webhook_id = $1",
                &[&webhook.as_str()],
            ),
        )
        .map(drop)
    }
}
