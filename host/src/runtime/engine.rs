//! The wasmtime engine as the sandbox sets it up: per-evaluation store data, the memory
//! limiter, the allocator choice, and the engine's configuration.

use super::*;

/// Per-evaluation store data.
pub(super) struct StoreData {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: Limiter,
    pub(super) host: host_impl::HostState,
    /// The cpu limit, for the error that names it.
    pub(super) cpu_ms: u64,
    /// The time limit's watch, ended with the store.
    pub(super) _deadline: Option<watchdog::Armed>,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Bounds the memory of all of a plugin's memories together, and remembers the peak.
pub(super) struct Limiter {
    pub(super) limit: usize,
    pub(super) total: usize,
    pub(super) peak: usize,
    pub(super) hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total - current.min(self.total) + desired;
        if total > self.limit {
            // Trapping (rather than failing the grow) ends a memory bomb at once, with a
            // named error instead of whatever the guest's allocator does on failure.
            self.hit = true;
            return Err(wasmtime::Error::msg("memory limit"));
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// How instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// wasmtime's pooling allocator.
    Pooling,
    /// Allocated on demand (the address space was too small for the pool, or it was off).
    OnDemand,
}

/// How to build a [`Runtime`].
pub struct RuntimeOptions {
    /// Limits for evaluations that have no webhook (probing a module at load).
    pub limits: PluginLimits,
    /// The most memory any evaluation may have: the size of a pool slot.
    pub max_memory_bytes: usize,
    /// The engine's wasm stack limit.
    pub stack_bytes: usize,
    /// Evaluations at once.
    pub concurrency: usize,
    /// Try the pooling allocator.
    pub pooling: bool,
    /// Where compiled artifacts are kept.
    pub cache: Option<ArtifactCache>,
    /// Count fuel (for `plugin run`'s cost report; costs time, so off for serving).
    pub fuel: bool,
    /// Interrupt evaluations at their time limit. Off only in benchmarks that measure what
    /// it costs.
    pub epoch: bool,
}

impl RuntimeOptions {
    /// Options from the host's settings, without an artifact cache.
    pub fn new(config: &PluginConfig) -> RuntimeOptions {
        RuntimeOptions {
            limits: config.limits.clone(),
            max_memory_bytes: config.max_limits.memory_bytes,
            stack_bytes: config.stack_bytes,
            concurrency: config.concurrency(),
            pooling: config.pooling,
            cache: None,
            fuel: false,
            epoch: true,
        }
    }
}

/// The CPU time the calling thread has used, where the platform tells.
pub(super) fn thread_cpu_time() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable timespec for the call's duration.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        (rc == 0).then(|| {
            Duration::new(
                u64::try_from(now.tv_sec).unwrap_or(0),
                u32::try_from(now.tv_nsec).unwrap_or(0),
            )
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

pub(super) fn engine_config(options: &RuntimeOptions) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(options.epoch);
    config.consume_fuel(options.fuel);
    config.max_wasm_stack(options.stack_bytes);
    config
}

/// The engine: pooled when asked and possible, otherwise on demand with memories reserved
/// only as large as the memory ceiling (bounds-checked, so a small address space suffices).
pub(super) fn build_engine(options: &RuntimeOptions) -> Result<(Engine, Allocator), SandboxError> {
    if options.pooling {
        let slots =
            u32::try_from(options.concurrency + inline_slot_count() + 2).unwrap_or(u32::MAX);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 32)
            .total_memories(slots * 4)
            .total_tables(slots * 16)
            .total_stacks(0)
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_memory_size(options.max_memory_bytes)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);
        let mut config = engine_config(options);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&config) {
            Ok(engine) => return Ok((engine, Allocator::Pooling)),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "the pooling allocator is unavailable (is the address space limited?); \
                 allocating plugin instances on demand"
            ),
        }
    }
    let mut config = engine_config(options);
    let reservation = options.max_memory_bytes.next_multiple_of(64 << 10) as u64;
    config
        .memory_reservation(reservation)
        .memory_reservation_for_growth(0)
        .memory_guard_size(64 << 10);
    let engine = Engine::new(&config).map_err(SandboxError::of)?;
    Ok((engine, Allocator::OnDemand))
}
