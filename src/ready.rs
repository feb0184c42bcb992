//! When a serving plugin's handshake line is out: [`ReadyHandle`], for an
//! application that embeds a plugin and must not touch stdout before then.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::locks::{lock, wait_for, wait_until};

/// Says when [`PluginServer::serve`](crate::PluginServer::serve) has
/// written and flushed the handshake line (from then on the process's
/// stdout is no longer the host's to parse), or that it never will. Cheap
/// to clone; take it with
/// [`PluginServer::ready_handle`](crate::PluginServer::ready_handle) before
/// `serve`.
///
/// An application that embeds a plugin and prints on stdout waits for it
/// before printing: a line printed earlier reaches the host before the
/// handshake, and the host refuses the plugin ("Unrecognized remote plugin
/// message"). After it, what the application prints is forwarded to the
/// host as the plugin's stdout (with
/// [`forward_stdio`](crate::PluginServerBuilder::forward_stdio), the
/// default), or follows the handshake line on the real stdout, which
/// go-plugin hosts read and drop.
///
/// ```no_run
/// use std::io::Write;
///
/// # const HANDSHAKE: goplugin::HandshakeConfig = goplugin::HandshakeConfig {
/// #     protocol_version: 1, magic_cookie_key: "BASIC_PLUGIN", magic_cookie_value: "hello" };
/// let server = goplugin::PluginServer::builder(HANDSHAKE).build()?;
/// let ready = server.ready_handle();
/// let serving = std::thread::spawn(move || server.serve());
/// if ready.wait() {
///     // The host has its line: the application may print.
///     let _ = writeln!(std::io::stdout(), "app: started");
/// }
/// serving.join().expect("the serving thread")?;
/// # Ok::<(), goplugin::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct ReadyHandle {
    state: Arc<(Mutex<Option<bool>>, Condvar)>,
}

impl ReadyHandle {
    pub(crate) fn new() -> ReadyHandle {
        ReadyHandle::default()
    }

    /// The handshake line is out (in debug mode: the server accepts calls).
    pub(crate) fn ready(&self) {
        self.settle(true);
    }

    /// `serve` has returned or will never run: if the line was not written
    /// by then, it never will be.
    pub(crate) fn ended(&self) {
        self.settle(false);
    }

    fn settle(&self, ready: bool) {
        let (state, changed) = &*self.state;
        let mut state = lock(state);
        if state.is_none() {
            *state = Some(ready);
            changed.notify_all();
        }
    }

    /// Blocks until the handshake line has been flushed (`true`) or
    /// `serve` has failed or the server was dropped before writing it
    /// (`false`).
    pub fn wait(&self) -> bool {
        let (state, changed) = &*self.state;
        wait_until(state, changed, |state| *state)
    }

    /// [`wait`](Self::wait), for at most `timeout`: `None` when the server
    /// is still starting then.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<bool> {
        let (state, changed) = &*self.state;
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        wait_for(state, changed, deadline, |state| *state)
    }

    /// Whether the handshake line has been written, without waiting.
    pub fn is_ready(&self) -> bool {
        lock(&self.state.0).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_outcome_sticks_and_wakes_every_waiter() {
        let ready = ReadyHandle::new();
        assert_eq!(ready.wait_timeout(Duration::from_millis(10)), None);
        assert!(!ready.is_ready());
        let waiter = {
            let ready = ready.clone();
            std::thread::spawn(move || ready.wait())
        };
        ready.ready();
        ready.ended();
        assert!(waiter.join().unwrap());
        assert!(ready.wait());
        assert!(ready.is_ready());

        let never = ReadyHandle::new();
        never.ended();
        never.ready();
        assert!(!never.wait());
        assert_eq!(never.wait_timeout(Duration::MAX), Some(false));
    }
}
