//! No orphans: the plugin stops when its host is gone.
//!
//! go-plugin has no host-death detection: a Go plugin usually dies on its
//! next write to a broken pipe, a quiet one lingers (go-plugin issues #10,
//! #210). Here a thread notices within a few hundred milliseconds that
//! - the host no longer reads the plugin's stdout or stderr (`poll` reports
//!   an error on the pipe: its read end is closed), which also covers a host
//!   that ran the plugin through `sh -c`, or
//! - the parent process exited (the plugin was re-parented), which covers a
//!   host that killed its `sh -c` wrapper,
//!
//! and then shuts the server down cleanly, as the host's `Kill()` would.
//! The parent is polled rather than watched with `PR_SET_PDEATHSIG`: that
//! signal fires when the *thread* that forked the plugin exits, which a Go
//! host's runtime may do while the host lives on.

use std::os::fd::RawFd;
use std::thread;

use crate::shutdown::ShutdownHandle;
use crate::sys;

/// How often the watchdog looks, in milliseconds.
const INTERVAL_MS: libc::c_int = 100;

/// Watches `fds` (the real stdout and stderr) and the parent process on a
/// thread of its own until `shutdown` is triggered.
///
/// # Errors
/// The thread could not be started: without it a plugin would outlive a
/// host that dies, so the caller stops.
pub(crate) fn watch(fds: [RawFd; 2], shutdown: ShutdownHandle) -> std::io::Result<()> {
    let parent = std::os::unix::process::parent_id();
    let watcher = shutdown.clone();
    let spawned = thread::Builder::new()
        .name("goplugin-watchdog".into())
        .spawn(move || {
            let mut fds = fds;
            while !watcher.is_shutdown() {
                if let Some(why) = host_gone(&mut fds, parent) {
                    log::warn!("{why}: the host is gone; shutting down");
                    watcher.shutdown_now();
                    return;
                }
            }
        });
    spawned.map(drop)
}

/// Waits up to one interval and says why the host is gone, if it is. A
/// descriptor that is not open is dropped from `fds` (set to -1, which
/// `poll` skips): it would make every `poll` return at once.
fn host_gone(fds: &mut [RawFd; 2], parent: u32) -> Option<&'static str> {
    // Negative descriptors are skipped by poll.
    let mut polls = fds.map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    let ready = sys::poll(&mut polls, INTERVAL_MS);
    for (fd, p) in fds.iter_mut().zip(&polls) {
        if p.revents & libc::POLLNVAL != 0 {
            *fd = -1;
        }
    }
    match ready {
        Ok(1..)
            if polls
                .iter()
                .any(|p| p.revents & (libc::POLLERR | libc::POLLHUP) != 0) =>
        {
            return Some("nobody reads the plugin's stdout/stderr any more");
        }
        // Interrupted: wait out the interval, as poll would have.
        Err(_) => thread::sleep(std::time::Duration::from_millis(INTERVAL_MS as u64)),
        Ok(_) => {}
    }
    (std::os::unix::process::parent_id() != parent)
        .then_some("the process that started the plugin exited")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A descriptor that is not open is dropped, so the watchdog waits its
    /// interval instead of spinning on `POLLNVAL`.
    #[test]
    fn a_closed_descriptor_does_not_make_the_watchdog_spin() {
        let not_open: RawFd = 1 << 30;
        let mut fds = [not_open, not_open];
        let parent = std::os::unix::process::parent_id();
        assert_eq!(host_gone(&mut fds, parent), None);
        assert_eq!(fds, [-1, -1]);
        let start = Instant::now();
        assert_eq!(host_gone(&mut fds, parent), None);
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "returned after {:?}",
            start.elapsed()
        );
    }
}
