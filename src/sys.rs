//! Calls into the C library for what std has no way to do. Every `unsafe`
//! block of the crate is here, each with the reason it is sound; the rest
//! of the crate is `#![deny(unsafe_code)]`.
//!
//! Descriptors are passed as `RawFd` where the caller keeps them open for
//! the call (a stale number is an error from the kernel, never undefined
//! behaviour: these calls do not take ownership or touch memory through
//! the descriptor).

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;

/// `poll(2)` on `fds` for up to `timeout_ms` (-1: no limit): how many
/// entries have events (0 on time-out).
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    let count = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"))?;
    // SAFETY: `fds` is a live, exclusively borrowed slice of `count`
    // pollfd entries; poll writes only their `revents`.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout_ms) };
    usize::try_from(ready).map_err(|_| io::Error::last_os_error())
}

/// `read(2)` into `buf`: the byte count, 0 at end of file.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `write(2)` from `buf`: the byte count written.
pub(crate) fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `send(2)` on a socket without blocking and without SIGPIPE: the byte
/// count, which may be less than `buf.len()`.
pub(crate) fn send_nonblocking(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `shutdown(2)` both ways on a socket another thread may be blocked on
/// (std's `shutdown` needs an owning `UnixStream`/`TcpListener` value,
/// which the blocked thread holds). Errors (already closed) are moot.
pub(crate) fn shutdown_socket(fd: RawFd) {
    // SAFETY: shutdown takes no memory; a descriptor that is no socket
    // only fails.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Bytes waiting to be read on a pipe or socket (`FIONREAD`), 0 when the
/// kernel cannot tell.
pub(crate) fn unread_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int, to `n`.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

/// `dup2(2)`: makes `to` (fd 1 or 2) refer to what `from` refers to.
pub(crate) fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes no memory. It closes `to` first, which std cannot
    // express: fds 1 and 2 are never owned by a std value, they are the
    // process's standard streams, and replacing them is the point.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`): the byte
/// count written.
pub(crate) fn getrandom(buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// The id of the group named `name`, if there is one (`getgrnam_r(3)`).
pub(crate) fn group_id(name: &CStr) -> Option<libc::gid_t> {
    // SAFETY: an all-zero `group` is a valid value of this plain C struct
    // (null pointers, zero id); getgrnam_r overwrites it.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: `name` is NUL-terminated; `entry`, `buf` (with its length)
    // and `found` are live storage owned here, which getgrnam_r fills.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(entry.gr_gid)
}

/// What a signal did before a handler of this crate replaced it, to give
/// back with [`restore`].
#[derive(Clone, Copy)]
pub(crate) struct Disposition(libc::sigaction);

impl std::fmt::Debug for Disposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disposition").finish_non_exhaustive()
    }
}

/// Catches SIGINT with a handler that does nothing (go-plugin's `Serve`
/// ignores the signal). A handler, unlike `SIG_IGN`, is reset to the
/// default in child processes at `exec`. Returns what SIGINT did before.
pub(crate) fn ignore_sigint() -> io::Result<Disposition> {
    extern "C" fn on_sigint(_: libc::c_int) {}
    set_handler(libc::SIGINT, on_sigint)
}

/// Catches `signal` with `handler` (`SA_RESTART`, no signal masked), and
/// returns what it did before. The handler must do only
/// async-signal-safe work.
fn set_handler(
    signal: libc::c_int,
    handler: extern "C" fn(libc::c_int),
) -> io::Result<Disposition> {
    // SAFETY: zeroed, then fully initialised, structs; sigaction writes the
    // old one into `old`; the handler's async-signal safety is the
    // caller's promise.
    let (installed, old) = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(signal, &action, &mut old), old)
    };
    if installed != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Disposition(old))
}

/// Gives `signal` back what it did before ([`Disposition`]).
pub(crate) fn restore(signal: libc::c_int, disposition: &Disposition) {
    // SAFETY: `disposition` holds a sigaction the kernel filled in.
    unsafe { libc::sigaction(signal, &disposition.0, std::ptr::null_mut()) };
}

/// abseil's CPU-frequency measurement, now (`abseil-cpufreq` feature,
/// csrc/absl_cpufreq.c): whether abseil's function was found and called.
#[cfg(feature = "abseil-cpufreq")]
pub(crate) fn measure_cpu_frequency() -> bool {
    unsafe extern "C" {
        fn goplugin_measure_cpu_frequency() -> libc::c_int;
    }
    // SAFETY: a C function without arguments; it calls abseil's
    // NominalCPUFrequency (no arguments, returns a double, does not throw)
    // only when the weak reference to it resolved.
    unsafe { goplugin_measure_cpu_frequency() != 0 }
}

/// Raises `signal` again: once this crate's handler is gone, it does what
/// the process had it do (by default, SIGTERM and SIGHUP end it).
pub(crate) fn raise(signal: libc::c_int) {
    // SAFETY: raise(3) takes no memory.
    unsafe { libc::raise(signal) };
}

/// Where the stop-signal handler writes: the write end of a pipe, or -1.
static STOP_SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Writes the signal's number, as one byte, to [`STOP_SIGNAL_PIPE`].
extern "C" fn on_stop_signal(signal: libc::c_int) {
    let fd = STOP_SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        let byte = [signal as u8];
        // SAFETY: errno is read and restored around write(2), all
        // async-signal-safe; one byte from a local buffer.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, byte.as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Where [`catch_as_stop`]'s handler writes: the write end of a pipe the
/// caller keeps open for the rest of the process, whose other end a thread
/// reads to stop the plugin.
pub(crate) fn set_stop_pipe(pipe: RawFd) {
    STOP_SIGNAL_PIPE.store(pipe, std::sync::atomic::Ordering::Relaxed);
}

/// Catches `signal` (SIGTERM, SIGHUP, or SIGINT in debug mode) with a
/// handler that writes its number, as one byte, to the stop pipe
/// ([`set_stop_pipe`]). Handlers are reset to the default in child
/// processes at `exec`. Returns what the signal did before.
pub(crate) fn catch_as_stop(signal: libc::c_int) -> io::Result<Disposition> {
    set_handler(signal, on_stop_signal)
}

/// A plugin's supervisor: a forked copy of this process that leads the
/// process group the plugin is started in, does nothing but wait on one end
/// of a socket pair, and kills its whole group (the plugin, what the plugin
/// started, and itself) when the other end, held by the host, closes
/// without a word: the host died, even by SIGKILL. It exists before the
/// plugin does, so no moment of the plugin's life is uncovered, and the
/// plugin is started without a `fork` of the host (`posix_spawn`).
#[derive(Debug)]
pub(crate) struct Supervisor {
    pid: libc::pid_t,
    host_end: std::os::fd::OwnedFd,
}

/// Forks a supervisor, leader of a new process group (see [`Supervisor`]).
pub(crate) fn supervise() -> io::Result<Supervisor> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut fds: [libc::c_int; 2] = [-1; 2];
    // SAFETY: socketpair writes two new descriptors into `fds`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    let (host_end, watched) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let watched_fd = watched.as_raw_fd();
    // SAFETY: fork in a multi-threaded process. The child runs
    // `supervisor_child` only, which makes async-signal-safe calls alone,
    // allocates nothing, takes no lock and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the forked child, as said above.
        unsafe { supervisor_child(watched_fd) }
    }
    drop(watched);
    // The child makes itself the leader of its group too; whichever runs
    // first, the group exists when this returns (the plugin joins it).
    // SAFETY: setpgid on our own child, which has not called exec.
    if unsafe { libc::setpgid(pid, pid) } != 0 {
        let err = io::Error::last_os_error();
        let supervisor = Supervisor { pid, host_end };
        supervisor.release();
        return Err(err);
    }
    Ok(Supervisor { pid, host_end })
}

/// The supervisor's whole life, in the forked child.
///
/// # Safety
/// Only in a child just forked by [`supervise`]: it closes every
/// descriptor it inherited but `watched`, and exits the process.
unsafe fn supervisor_child(watched: RawFd) -> ! {
    // SAFETY (of every call below): setpgid, sigaction, dup2, the
    // close_range system call, close, read, kill and _exit are
    // async-signal-safe; the sigaction value and the byte live on this
    // stack.
    unsafe {
        // Leader of the plugin's group, out of the host's, deaf to what is
        // sent to the group (the host's SIGTERM to the plugin) or to the
        // host's (a Ctrl-C at its terminal): it ends when the host does,
        // or by SIGKILL with the rest of the group.
        libc::setpgid(0, 0);
        let mut ignore: libc::sigaction = std::mem::zeroed();
        ignore.sa_sigaction = libc::SIG_IGN;
        for signal in [
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGTERM,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::sigaction(signal, &ignore, std::ptr::null_mut());
        }
        // Nothing else of the host's stays open here: a copy of its
        // sockets would keep them open after the host closes them.
        if watched != 0 {
            libc::dup2(watched, 0);
        }
        if libc::syscall(
            libc::SYS_close_range,
            1 as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        ) != 0
        {
            for fd in 1..65_536 {
                libc::close(fd);
            }
        }
        let mut byte = 0u8;
        loop {
            let n = libc::read(0, (&raw mut byte).cast(), 1);
            if n == 1 {
                // The host is done with the plugin, which is gone.
                libc::_exit(0);
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break;
        }
        // The host is gone: the whole group, this process included.
        libc::kill(0, libc::SIGKILL);
        libc::_exit(0)
    }
}

impl Supervisor {
    /// The process group it leads, which the plugin joins.
    pub(crate) fn pgid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// The plugin has exited and its group was killed (this supervisor
    /// with it), or never started: the supervisor is told so, exits, and
    /// is reaped. Until then its pid, the group's id, is not reused.
    pub(crate) fn release(self) {
        use std::os::fd::AsRawFd;
        // A supervisor already gone (killed with its group) cannot read
        // it: no SIGPIPE for that.
        let _ = send_nonblocking(self.host_end.as_raw_fd(), b"d");
        drop(self.host_end);
        let mut status = 0;
        // SAFETY: waitpid on our own child; `status` is a live c_int.
        while unsafe { libc::waitpid(self.pid, &mut status, 0) } < 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
}

/// A unix stream socket connected to `path` at once, without blocking:
/// `None` when the connection cannot be made right away (nobody listens,
/// the listener's backlog is full, the path is too long), for the caller to
/// fall back to gRPC's own connect with its deadline and its errors.
pub(crate) fn connect_unix_now(path: &str) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    // One byte is left for the terminating NUL.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return None;
    }
    for (slot, byte) in addr.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: socket(2) returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is new and owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a live sockaddr_un of `len` bytes.
    let rc = unsafe { libc::connect(fd, (&raw const addr).cast(), len) };
    (rc == 0).then_some(socket)
}

/// A gRPC channel over `socket`, a connected stream socket, which it takes
/// over (and closes when the connection ends). Such a channel has no
/// resolver and never reconnects: what goplugin dials is a plugin's (or
/// host's) own listener, whose end is the peer's end.
pub(crate) fn channel_over(
    builder: grpcio::ChannelBuilder,
    target: &str,
    socket: std::os::fd::OwnedFd,
) -> grpcio::Channel {
    use std::os::fd::IntoRawFd;
    // SAFETY: `socket` is a connected stream socket, given away here:
    // nothing else reads, writes or closes it.
    unsafe { builder.connect_from_fd(target, socket.into_raw_fd()) }
}

/// Waits until the child `pid` has exited, without reaping it: its pid
/// (and process group) stays taken until the caller reaps it.
pub(crate) fn wait_exited(pid: u32) -> io::Result<()> {
    let pid = libc::id_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    loop {
        // SAFETY: `info` is a zeroed siginfo_t that waitid fills in.
        let done = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if done == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Sends `signal` to the process group `pgid` (`kill(-pgid, signal)`).
/// The caller keeps the group's leader unreaped, so the id is still its.
pub(crate) fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes no memory.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether no process `pid` exists any more (a plugin the host reattached
/// to, which it does not own).
pub(crate) fn process_gone(pid: u32) -> bool {
    signal_process(pid, 0).is_err_and(|e| e.raw_os_error() == Some(libc::ESRCH))
}

/// Sends `signal` (0: none, a check) to the process `pid`, which the caller
/// does not own (a plugin the host reattached to).
pub(crate) fn signal_process(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes no memory.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(all(test, feature = "abseil-cpufreq"))]
mod tests {
    /// The abseil that grpcio-sys builds is the one the shim names: with
    /// another, the feature would silently do nothing.
    #[test]
    fn abseils_frequency_measurement_is_found() {
        assert!(
            super::measure_cpu_frequency(),
            "abseil's NominalCPUFrequency is not linked: grpcio-sys builds another \
             abseil than csrc/absl_cpufreq.c names"
        );
    }
}
