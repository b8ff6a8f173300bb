//! What the storage engine reports: how long its calls take (by call), and for a networked
//! engine its connections. An embedded engine reports no connections and times nothing: its
//! calls are the host's own work, measured by the delivery figures.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Labels;

/// A database's connections, as its pool sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connections {
    /// The most the pool opens.
    pub max: usize,
    /// Open now.
    pub open: usize,
    /// Open and free.
    pub idle: usize,
    /// Callers waiting for one.
    pub waiting: usize,
}

/// The durations of storage calls by call: a handle the engine keeps and fills.
#[derive(Clone)]
pub struct StorageCalls {
    durations: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for StorageCalls {
    fn default() -> Self {
        // 50 µs to about 26 seconds.
        fn buckets() -> Histogram {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        }
        StorageCalls {
            durations: Family::new_with_constructor(buckets),
        }
    }
}

impl StorageCalls {
    /// One call named `call` took `seconds`.
    pub fn observe(&self, call: &'static str, seconds: f64) {
        self.durations
            .get_or_create(&vec![("call", call.to_string())])
            .observe(seconds);
    }
}

/// The storage's metrics.
#[derive(Default)]
pub(super) struct StorageMetrics {
    pub(super) calls: StorageCalls,
    connections: Family<Labels, Gauge>,
}

impl StorageMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "storage_call_seconds",
            "Time storage calls took, by call (a networked engine's round trips included)",
            self.calls.durations.clone(),
        );
        registry.register(
            "storage_connections",
            "The database's connections by state (open, idle, waiting callers, max)",
            self.connections.clone(),
        );
    }

    /// Sets the connection gauges (none for an engine without connections).
    pub(super) fn set(&self, connections: Option<Connections>) {
        self.connections.clear();
        if let Some(c) = connections {
            for (state, value) in [
                ("max", c.max),
                ("open", c.open),
                ("idle", c.idle),
                ("waiting", c.waiting),
            ] {
                self.connections
                    .get_or_create(&vec![("state", state.to_string())])
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }
}
