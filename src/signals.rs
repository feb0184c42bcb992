//! SIGTERM and SIGHUP (and SIGINT, in debug mode) stop the plugin as the
//! host's `Kill()` does: calls in progress are cancelled, the socket file
//! is removed, `serve` returns. (A Go plugin dies of them at once and
//! leaves its socket file behind.) And SIGINT is ignored while serving, as
//! go-plugin's `Serve` does.
//!
//! One process-wide pipe and thread: the signal handler writes the signal
//! to the pipe ([`sys::catch_as_stop`]), the thread reads it and stops
//! every server that is serving at the time.
//!
//! Every disposition is taken for as long as some server serves, and given
//! back as it was when the last one stops ([`Taken`]): an application that
//! embeds a plugin, stops it and goes on has its own Ctrl-C, SIGTERM and
//! SIGHUP back. A signal that arrives as the last server stops does what
//! the process had it do.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, OnceLock};
use std::thread;

use crate::locks::lock;
use crate::shutdown::ShutdownHandle;
use crate::sys::{self, Disposition};

/// Servers that are serving, with the id they registered under.
static SERVING: Mutex<Vec<(u64, ShutdownHandle)>> = Mutex::new(Vec::new());

/// Set up once per process: `Ok` when the pipe and the thread run.
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// The signals taken: how many hold each, and what it did before.
static TAKEN: Mutex<Option<HashMap<libc::c_int, (usize, Disposition)>>> = Mutex::new(None);

/// Stops `handle`'s server on SIGTERM or SIGHUP until the returned guard
/// is dropped. Sets up the pipe and the thread on first use.
///
/// # Errors
/// The pipe, the handlers or the thread could not be set up (the message
/// says which); nothing is registered then.
pub(crate) fn stop_on_signals(handle: ShutdownHandle) -> Result<Registration, String> {
    INSTALLED.get_or_init(install).clone()?;
    let taken = vec![
        take(libc::SIGTERM, sys::catch_as_stop)?,
        take(libc::SIGHUP, sys::catch_as_stop)?,
    ];
    Ok(register(handle, taken))
}

/// [`stop_on_signals`], and SIGINT too: for a plugin in debug mode, which
/// a person stops with Ctrl-C.
pub(crate) fn stop_on_signals_and_sigint(handle: ShutdownHandle) -> Result<Registration, String> {
    INSTALLED.get_or_init(install).clone()?;
    let taken = vec![
        take(libc::SIGTERM, sys::catch_as_stop)?,
        take(libc::SIGHUP, sys::catch_as_stop)?,
        take(libc::SIGINT, sys::catch_as_stop)?,
    ];
    Ok(register(handle, taken))
}

/// Ignores SIGINT until the returned guard is dropped (go-plugin's
/// `Serve` ignores it: the host owns shutdown).
pub(crate) fn ignore_sigint() -> Result<Taken, String> {
    take(libc::SIGINT, |_| sys::ignore_sigint())
}

/// Installs `install`'s handler for `signal`, keeping what the signal did
/// before the first holder took it.
fn take(
    signal: libc::c_int,
    install: impl FnOnce(libc::c_int) -> std::io::Result<Disposition>,
) -> Result<Taken, String> {
    let mut taken = lock(&TAKEN);
    let taken = taken.get_or_insert_with(HashMap::new);
    let before = install(signal).map_err(|err| format!("cannot catch signal {signal}: {err}"))?;
    taken
        .entry(signal)
        .and_modify(|(holders, _)| *holders += 1)
        .or_insert((1, before));
    Ok(Taken(signal))
}

/// A signal taken by [`take`]: given back as it was once the last holder
/// is dropped.
#[derive(Debug)]
pub(crate) struct Taken(libc::c_int);

impl Drop for Taken {
    fn drop(&mut self) {
        let mut taken = lock(&TAKEN);
        let Some(taken) = taken.as_mut() else { return };
        if let Some((holders, before)) = taken.get_mut(&self.0) {
            *holders -= 1;
            if *holders == 0 {
                sys::restore(self.0, before);
                taken.remove(&self.0);
            }
        }
    }
}

fn register(handle: ShutdownHandle, taken: Vec<Taken>) -> Registration {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    lock(&SERVING).push((id, handle));
    Registration { id, taken }
}

/// Unregisters a server from [`stop_on_signals`] when dropped, and gives
/// the signals back if it was the last.
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
    taken: Vec<Taken>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Under the lock the signal thread checks: once it sees nobody
        // serving, the signals are given back, and raising one again does
        // what the process had it do.
        let mut serving = lock(&SERVING);
        serving.retain(|(id, _)| *id != self.id);
        self.taken.clear();
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
                    sys::raise(signal);
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
    sys::set_stop_pipe(writer.as_raw_fd());
    // The handler writes to it for the rest of the process.
    std::mem::forget(writer);
    Ok(())
}
