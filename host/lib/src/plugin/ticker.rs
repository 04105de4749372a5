//! The epoch ticker: one thread per runtime that advances the engine's
//! epoch every tick while calls run, which is what interrupts guests (each
//! tick a guest yields its thread; at its deadline it traps).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use wasmtime::Engine;

/// Idle ticks after which the epoch ticker parks until the next call.
const PARK_AFTER_TICKS: u32 = 200;

/// The epoch ticker's state. Epochs only matter while guest code runs, so
/// the ticker parks after [`PARK_AFTER_TICKS`] ticks without a call in
/// progress (an idle host does not wake up every tick), and the first call
/// wakes it. Under load it never parks, and a call costs one atomic add.
pub(super) struct Ticker {
    stop: AtomicBool,
    /// Calls in progress.
    pub(super) active: AtomicUsize,
    /// Set while the ticker waits on `wake`.
    pub(super) parked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Ticker {
    pub(super) fn new() -> Self {
        Ticker {
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Runs on the `cb-epoch` thread until [`Ticker::stop`].
    pub(super) fn run(&self, engine: &Engine, tick: Duration) {
        let mut idle = 0;
        while !self.stop.load(Ordering::SeqCst) {
            if self.active.load(Ordering::SeqCst) > 0 {
                idle = 0;
            } else if idle < PARK_AFTER_TICKS {
                idle += 1;
            } else {
                // `parked` is set before `active` is read again (SeqCst on
                // both sides): a call either sees it and wakes the ticker
                // under the lock, or is seen here and the ticker stays up.
                let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.parked.store(true, Ordering::SeqCst);
                let guard = self
                    .wake
                    .wait_while(guard, |_| {
                        self.active.load(Ordering::SeqCst) == 0 && !self.stop.load(Ordering::SeqCst)
                    })
                    .unwrap_or_else(|e| e.into_inner());
                self.parked.store(false, Ordering::SeqCst);
                drop(guard);
                idle = 0;
            }
            std::thread::sleep(tick);
            engine.increment_epoch();
        }
    }

    /// Marks a call in progress until the guard drops, waking the ticker if
    /// it parked.
    pub(super) fn enter(self: &Arc<Self>) -> Ticking {
        self.active.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_one();
        }
        Ticking(self.clone())
    }

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_one();
    }
}

/// A call in progress, for the ticker.
pub(super) struct Ticking(Arc<Ticker>);

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}
