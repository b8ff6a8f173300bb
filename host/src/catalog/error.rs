//! The errors of pipeline operations, each with the HTTP status it maps to in the API.

use crate::runtime::ValidationError;
use crate::storage::StorageError;

/// Why an operation was refused or failed. Refusals change nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field broke a rule; the message names the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (dotted path), or `body`.
        field: String,
        /// The rule it broke.
        message: String,
    },
    /// The request body is not the JSON the endpoint takes.
    #[error("invalid JSON body: {0}")]
    Json(String),
    /// A referenced object does not exist.
    #[error("{kind} `{id}` does not exist")]
    NotFound {
        /// What was looked for (`webhook`, `module`, …).
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// The request conflicts with the current state (e.g. deleting a module in use).
    #[error("{0}")]
    Conflict(String),
    /// The caller already has such work under way; it may try again once that has answered.
    #[error("{0}")]
    Busy(String),
    /// Too large.
    #[error("{what} is {size} {unit}; the limit is {limit}")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        size: usize,
        /// What the size counts (`bytes`, `events`).
        unit: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A module upload that is not a valid plugin.
    #[error(transparent)]
    Module(#[from] ValidationError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// Free space is under the floor: a write that would grow the store was refused.
    #[error(transparent)]
    LowSpace(#[from] crate::storage::LowSpace),
}

impl Error {
    /// An [`Error::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The plugin sandbox could not be built.
    #[error(transparent)]
    Sandbox(#[from] crate::runtime::SandboxError),
    /// The precompiled-artifact cache directory could not be made.
    #[error("creating {}: {source}", dir.display())]
    ArtifactCache {
        /// The directory.
        dir: std::path::PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// An allow-listed destination does not parse.
    #[error("delivery.allowed_destinations: {0}")]
    Destinations(crate::model::Invalid),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// Stored definitions could not be read.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
