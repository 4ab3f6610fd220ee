//! Hotplug and the start of an outgoing migration exclude each other, as
//! QEMU's big lock makes them: a `device_add`/`device_del` holds the
//! gate's shared side from its refusal check (`refuse_hotplug_while_migrating`)
//! to its end, and `migrate` takes the exclusive side from its run-state
//! checks until the migration is in `setup`. So a `migrate` from another
//! QMP session waits for the hotplugs in progress to end (as QEMU's
//! `migrate` waits for the lock), and a hotplug that comes after it is
//! refused; no hotplug can slip between the check and the change.
//! Hotplugs do not wait for each other.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The gate (one per machine, in `MigrationState`).
#[derive(Debug, Default)]
pub struct DeviceSetGate(RwLock<()>);

/// Held by a hotplug for its whole run.
#[must_use = "the gate is open again once the guard is dropped"]
pub struct HotplugGuard<'a> {
    _held: RwLockReadGuard<'a, ()>,
}

/// Held by `migrate` until the migration is in `setup`.
#[must_use = "the gate is open again once the guard is dropped"]
pub struct MigrationStartGuard<'a> {
    _held: RwLockWriteGuard<'a, ()>,
}

impl DeviceSetGate {
    /// Enters a hotplug; waits while a `migrate` is starting.
    pub fn hotplug(&self) -> HotplugGuard<'_> {
        // The guarded data is `()`: a panic elsewhere left nothing
        // half-done in it.
        HotplugGuard {
            _held: self.0.read().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Enters the start of a migration; waits for the hotplugs in progress.
    pub fn migration_start(&self) -> MigrationStartGuard<'_> {
        MigrationStartGuard {
            _held: self.0.write().unwrap_or_else(|p| p.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// The broker's use of the gate, reduced to its state: a hotplug is
    /// refused once a migration runs, else it changes the device set.
    #[derive(Default)]
    struct Vm {
        gate: DeviceSetGate,
        migrating: AtomicBool,
        log: Mutex<Vec<&'static str>>,
    }

    impl Vm {
        fn note(&self, what: &'static str) {
            self.log.lock().unwrap().push(what);
        }

        /// `device_add`: the check, then (slowly) the change.
        fn device_add(&self, pause: Duration) -> Result<(), &'static str> {
            let _g = self.gate.hotplug();
            if self.migrating.load(Ordering::SeqCst) {
                return Err("device_add not allowed while migrating");
            }
            self.note("hotplug checked");
            std::thread::sleep(pause);
            self.note("hotplug done");
            Ok(())
        }

        /// `migrate`: the checks and the move to `setup`.
        fn migrate(&self) {
            let _g = self.gate.migration_start();
            self.migrating.store(true, Ordering::SeqCst);
            self.note("migration setup");
        }
    }

    #[test]
    fn a_migrate_during_a_hotplug_waits_for_it_to_end() {
        let vm = Arc::new(Vm::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let h = {
            let vm = vm.clone();
            std::thread::spawn(move || {
                let _g = vm.gate.hotplug();
                tx.send(()).unwrap();
                // The hotplug's own work, done under its guard.
                vm.note("hotplug checked");
                std::thread::sleep(Duration::from_millis(200));
                vm.note("hotplug done");
            })
        };
        rx.recv().unwrap();
        vm.migrate();
        h.join().unwrap();
        assert_eq!(
            *vm.log.lock().unwrap(),
            ["hotplug checked", "hotplug done", "migration setup"],
            "the migration started inside the hotplug"
        );
    }

    #[test]
    fn a_hotplug_after_the_migration_started_is_refused_and_changes_nothing() {
        let vm = Vm::default();
        vm.migrate();
        assert_eq!(
            vm.device_add(Duration::ZERO),
            Err("device_add not allowed while migrating")
        );
        assert_eq!(*vm.log.lock().unwrap(), ["migration setup"]);
    }

    #[test]
    fn hotplugs_do_not_wait_for_each_other() {
        let gate = DeviceSetGate::default();
        let _a = gate.hotplug();
        // A second one enters at once (a deadlock here would hang the test).
        let _b = gate.hotplug();
    }

    #[test]
    fn racing_hotplugs_and_a_migrate_never_interleave() {
        for _ in 0..20 {
            let vm = Arc::new(Vm::default());
            let hotplugs: Vec<_> = (0..3)
                .map(|_| {
                    let vm = vm.clone();
                    std::thread::spawn(move || vm.device_add(Duration::from_millis(5)))
                })
                .collect();
            vm.migrate();
            let results: Vec<_> = hotplugs.into_iter().map(|h| h.join().unwrap()).collect();
            let log = vm.log.lock().unwrap().clone();
            let setup = log.iter().position(|e| *e == "migration setup").unwrap();
            // Every hotplug that got through ended before the migration
            // started; none began after it.
            let done = log[..setup]
                .iter()
                .filter(|e| **e == "hotplug done")
                .count();
            let checked = log[..setup]
                .iter()
                .filter(|e| **e == "hotplug checked")
                .count();
            assert_eq!(done, checked, "{log:?}");
            assert_eq!(log.len(), setup + 1, "a hotplug after the start: {log:?}");
            assert_eq!(results.iter().filter(|r| r.is_ok()).count(), done);
        }
    }
}
