//! SIGTERM and SIGHUP (and SIGINT, in debug mode) stop the plugin as the
//! host's `Kill()` does: calls
//! in progress are cancelled, the socket file is removed, `serve` returns.
//! (A Go plugin dies of them at once and leaves its socket file behind.)
//!
//! One process-wide pipe and thread: the signal handler writes the signal
//! to the pipe ([`sys::catch_stop_signals`]), the thread reads it and stops
//! every server that is serving at the time. With none serving (before
//! `serve`, or after it returned) the signal does what it would have done
//! uncaught: the process ends.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, OnceLock};
use std::thread;

use crate::locks::lock;
use crate::shutdown::ShutdownHandle;
use crate::sys;

/// Servers that are serving, with the id they registered under.
static SERVING: Mutex<Vec<(u64, ShutdownHandle)>> = Mutex::new(Vec::new());

/// Set up once per process: `Ok` when the handlers and thread run.
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// Stops `handle`'s server on SIGTERM or SIGHUP until the returned guard
/// is dropped. Installs the handlers and the thread on first use.
///
/// # Errors
/// The pipe, the handlers or the thread could not be set up (the message
/// says which); nothing is registered then.
pub(crate) fn stop_on_signals(handle: ShutdownHandle) -> Result<Registration, String> {
    INSTALLED.get_or_init(install).clone()?;
    register(handle)
}

/// [`stop_on_signals`], and SIGINT too: for a plugin in debug mode, which
/// a person stops with Ctrl-C. The SIGINT handler stays for the process:
/// with no server serving, SIGINT ends it, as uncaught.
pub(crate) fn stop_on_signals_and_sigint(handle: ShutdownHandle) -> Result<Registration, String> {
    INSTALLED.get_or_init(install).clone()?;
    sys::catch_sigint_as_stop().map_err(|err| format!("cannot catch SIGINT: {err}"))?;
    register(handle)
}

fn register(handle: ShutdownHandle) -> Result<Registration, String> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    lock(&SERVING).push((id, handle));
    Ok(Registration(id))
}

/// Unregisters a server from [`stop_on_signals`] when dropped.
#[derive(Debug)]
pub(crate) struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&SERVING).retain(|(id, _)| *id != self.0);
    }
}

fn install() -> Result<(), String> {
    let (mut reader, writer) =
        std::io::pipe().map_err(|err| format!("cannot make a pipe for SIGTERM: {err}"))?;
    thread::Builder::new()
        .name("goplugin-signals".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            while matches!(reader.read(&mut byte), Ok(1..)) {
                let signal = libc::c_int::from(byte[0]);
                let serving = lock(&SERVING);
                if serving.is_empty() {
                    drop(serving);
                    sys::raise_with_default_action(signal);
                    continue;
                }
                log::warn!(
                    "signal {signal} (SIGTERM, SIGHUP, or SIGINT in debug mode): stopping, as \
                     on the host's Kill()"
                );
                for (_, handle) in serving.iter() {
                    handle.shutdown_now();
                }
            }
        })
        .map_err(|err| format!("cannot start the SIGTERM thread: {err}"))?;
    sys::catch_stop_signals(writer.as_raw_fd())
        .map_err(|err| format!("cannot catch SIGTERM and SIGHUP: {err}"))?;
    // The handler writes to it for the rest of the process.
    std::mem::forget(writer);
    Ok(())
}
