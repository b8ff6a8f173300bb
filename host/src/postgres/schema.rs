//! The tables, as numbered migrations: each runs once, in its own transaction, in order; the
//! `migrations` table records which ran. Hosts starting together take turns under an
//! advisory lock, so each migration runs exactly once.
//!
//! A delivery's row carries what routes it beside its JSON record:
//! - `due`: its place in the due queue while it is unfinished (`NULL` otherwise); the queue
//!   is the index on `(due, id)`.
//! - `claim_holder`, `claim_due`, `claim_until`: the lease of the host working on it.
//! - `collecting`: the debounce (`d…`) or batch (`b…`) key while it takes newer events; one
//!   delivery per key.
//! - `line`, `line_position`: an in-order delivery's entity line and place in it, until it
//!   finishes.
//! - `finished_class`, `finished_at`: how and when it finished, for retention.
//!
//! `hosts` holds each host's last sign of life (`peers`), for the shares of cluster-wide
//! limits.

use deadpool_postgres::Pool;

use super::db_error;
use crate::storage::StorageError;

/// The advisory lock key migrations are run under ("wasmhook" in ASCII).
const MIGRATION_LOCK: i64 = 0x7761_736d_686f_6f6b;

/// The migrations, in order; a migration's number is its place here, from 1. Never edit one
/// that has shipped: add another.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key text PRIMARY KEY,
    value bytea NOT NULL
);
CREATE TABLE modules (
    id text PRIMARY KEY,
    info bytea NOT NULL,
    bytes bytea NOT NULL
);
CREATE TABLE webhooks (
    id text PRIMARY KEY,
    version bigint NOT NULL,
    tenant text,
    record bytea NOT NULL
);
CREATE TABLE connections (
    id text PRIMARY KEY,
    version bigint NOT NULL,
    record bytea NOT NULL
);
CREATE TABLE api_keys (
    id text PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE signing_keys (
    webhook_id text PRIMARY KEY,
    record bytea NOT NULL
);
CREATE SEQUENCE definition_feed;
CREATE TABLE definition_changes (
    position bigint PRIMARY KEY,
    kind text NOT NULL,
    id text NOT NULL
);
CREATE TABLE plugin_state (
    webhook_id text NOT NULL,
    key text NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (webhook_id, key)
);
CREATE TABLE events (
    tenant text NOT NULL,
    id text NOT NULL,
    received_at bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX events_by_receipt ON events (received_at);
CREATE SEQUENCE line_positions;
CREATE TABLE deliveries (
    id text PRIMARY KEY,
    webhook_id text NOT NULL,
    events_tenant text NOT NULL,
    event_id text NOT NULL,
    tenant text,
    status text NOT NULL,
    replay boolean NOT NULL,
    created_at bigint NOT NULL,
    due bigint,
    claim_holder bigint,
    claim_due bigint,
    claim_until bigint,
    collecting text,
    line text,
    line_position bigint,
    finished_class smallint,
    finished_at bigint,
    version bigint NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX deliveries_queue ON deliveries (due, id) WHERE due IS NOT NULL;
CREATE INDEX deliveries_claimed ON deliveries (claim_until) WHERE claim_holder IS NOT NULL;
CREATE UNIQUE INDEX deliveries_collecting ON deliveries (collecting) WHERE collecting IS NOT NULL;
CREATE INDEX deliveries_line ON deliveries (line, line_position) WHERE line IS NOT NULL;
CREATE INDEX deliveries_pending_event ON deliveries (events_tenant, event_id)
    WHERE status = 'pending';
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, id);
CREATE INDEX deliveries_finished ON deliveries (webhook_id, finished_class, finished_at)
    WHERE finished_at IS NOT NULL;
CREATE TABLE pins (
    events_tenant text NOT NULL,
    event_id text NOT NULL,
    delivery_id text NOT NULL,
    pinned_at bigint NOT NULL,
    PRIMARY KEY (events_tenant, event_id, delivery_id)
);
CREATE INDEX pins_by_delivery ON pins (delivery_id);
CREATE TABLE hosts (
    holder bigint PRIMARY KEY,
    seen_at bigint NOT NULL
);
"#,
    // The event walk of retention goes on from where it got to: receipt order, ties by key.
    r#"
CREATE INDEX events_by_receipt_key ON events (received_at, tenant, id);
DROP INDEX events_by_receipt;
"#,
];

/// Makes the schema when missing and runs the migrations it has not had.
pub(super) async fn migrate(pool: &Pool, schema: &str) -> Result<(), StorageError> {
    let mut client = pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(e),
        other => super::unavailable(other),
    })?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_error)?;
    let migrated = run_missing(&mut client, schema).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_error);
    migrated.and(unlocked.map(drop))
}

async fn run_missing(
    client: &mut deadpool_postgres::Object,
    schema: &str,
) -> Result<(), StorageError> {
    // The name was checked to be a plain identifier: it can stand in the statement.
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(db_error)?;
    let applied: i32 = client
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.migrations"),
            &[],
        )
        .await
        .map_err(db_error)?
        .get(0);
    if applied as usize > MIGRATIONS.len() {
        return Err(StorageError::Unavailable {
            source: format!(
                "schema {schema} is at migration {applied}, newer than this host knows ({}): \
                 a newer wasmhooks wrote it; run that version",
                MIGRATIONS.len()
            )
            .into(),
            out_of_space: false,
        });
    }
    for (number, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let version = number as i32 + 1;
        let transaction = client.transaction().await.map_err(db_error)?;
        transaction
            .batch_execute(&format!("SET LOCAL search_path = {schema};\n{migration}"))
            .await
            .map_err(db_error)?;
        transaction
            .execute(
                &format!("INSERT INTO {schema}.migrations (version) VALUES ($1)"),
                &[&version],
            )
            .await
            .map_err(db_error)?;
        transaction.commit().await.map_err(db_error)?;
        tracing::info!(schema, version, "applied a PostgreSQL migration");
    }
    Ok(())
}
