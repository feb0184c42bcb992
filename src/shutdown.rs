//! How a plugin is asked to stop: [`ShutdownHandle`], shared by the
//! server that waits for it and by everything that may ask (the host's
//! `GRPCController/Shutdown`, the watchdog, a multiplexed connection that
//! ends, the embedding program).

use std::sync::{Arc, Condvar, Mutex};

use crate::locks::{lock, wait_until};

/// Stops a [`PluginServer`](crate::PluginServer)'s
/// [`serve`](crate::PluginServer::serve) from any thread. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ShutdownHandle {
    state: Arc<(Mutex<Option<Stop>>, Condvar)>,
}

/// How a stop was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Calls in progress get the grace period.
    Graceful,
    /// The host is gone or has said it is done with the plugin (its
    /// `Kill()` closes the connection as soon as `Shutdown` is answered):
    /// nobody waits for the answers of calls still in progress, so they are
    /// cancelled at once, as go-plugin's own `Shutdown` does with `Stop()`.
    Now,
}

impl ShutdownHandle {
    pub(crate) fn new() -> ShutdownHandle {
        ShutdownHandle::default()
    }

    /// Asks the server to stop; calls in progress get the grace period
    /// ([`PluginServerBuilder::shutdown_grace`](crate::PluginServerBuilder::shutdown_grace)). Idempotent; returns at
    /// once.
    pub fn shutdown(&self) {
        self.stop(Stop::Graceful);
    }

    /// Asks the server to stop without a grace period (see [`Stop::Now`]).
    pub(crate) fn shutdown_now(&self) {
        self.stop(Stop::Now);
    }

    fn stop(&self, how: Stop) {
        let (requested, changed) = &*self.state;
        let mut requested = lock(requested);
        // A stop without grace wins over a graceful one not yet carried out.
        if *requested != Some(Stop::Now) {
            *requested = Some(how);
        }
        changed.notify_all();
    }

    /// Whether a shutdown was asked for.
    pub fn is_shutdown(&self) -> bool {
        lock(&self.state.0).is_some()
    }

    /// Blocks until a stop is asked for, and says how.
    pub(crate) fn wait(&self) -> Stop {
        let (requested, changed) = &*self.state;
        wait_until(requested, changed, |requested| *requested)
    }
}
