//! Slots for evaluations: a counting semaphore, so a flood of events queues for the CPU
//! instead of turning into time-limit errors.

use super::*;

/// A counting semaphore for evaluations (they run on blocking threads).
pub(super) struct Slots {
    pub(super) free: Mutex<usize>,
    pub(super) freed: Condvar,
}

pub(super) struct Slot<'a>(pub(super) &'a Slots);

/// A slot for a quick evaluation on an async thread ([`Runtime::quick_slot`]).
pub struct QuickSlot<'a>(pub(super) Slot<'a>);

impl Slots {
    pub(super) fn try_take(&self) -> Option<Slot<'_>> {
        let mut free = self.free.lock().unwrap();
        if *free == 0 {
            return None;
        }
        *free -= 1;
        Some(Slot(self))
    }

    pub(super) fn take(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap();
        while *free == 0 {
            free = self.freed.wait(free).unwrap();
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap() += 1;
        self.0.freed.notify_one();
    }
}

/// Slots for evaluations on async threads: one per core (the async runtime's thread count).
pub(super) fn inline_slot_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
