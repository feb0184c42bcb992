//! The plugin's process, host side: starting it so that it cannot outlive
//! the host, and knowing when it has exited (go-plugin's `cmdrunner`).
//!
//! - Every plugin runs in a process group of its own, led by its
//!   supervisor (a forked copy of the host that only waits on a socket,
//!   see [`sys::supervise`]): the supervisor exists first, the plugin joins
//!   its group as it starts (`posix_spawn`, no `fork` of the host), and
//!   when the host dies, even by SIGKILL, the supervisor kills the whole
//!   group, what the plugin started included (the plugin behind `sh -c`).
//!   What escapes: a descendant that leaves the group (`setsid`,
//!   `setpgid`). Go's host leaves its plugins running.
//! - A kill reaches the whole group: a plugin started through `sh -c`
//!   (Debian's dash does not `exec` the last command) is killed with the
//!   shell. When the plugin exits, whatever is left of the group is killed
//!   too.
//! - One thread per plugin waits for its exit without reaping it, so the
//!   pid stays the plugin's until the exit is recorded, and the group's id
//!   (the supervisor's pid) until the supervisor is reaped after it: a kill
//!   never reaches a recycled pid.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

use crate::locks::{lock, wait_for};
use crate::sys;

/// A started plugin process.
#[derive(Debug, Clone)]
pub(crate) struct Process {
    pid: u32,
    /// Its process group: its supervisor's, or its own without one.
    pgid: u32,
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    exit: Mutex<Exit>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Exit {
    /// Until the exit is recorded.
    child: Option<Child>,
    status: Option<ExitStatus>,
    /// Leads the process group and kills it if the host dies; released
    /// once the exit is recorded.
    supervisor: Option<sys::Supervisor>,
}

/// A process and the pipes of its output.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) process: Process,
    pub(crate) stdout: ChildStdout,
    pub(crate) stderr: ChildStderr,
}

/// Starts `command` (stdout and stderr piped) in its supervisor's process
/// group; `on_exit` runs on the waiting thread once it has exited.
pub(crate) fn start(
    mut command: Command,
    on_exit: impl FnOnce(ExitStatus) + Send + 'static,
) -> io::Result<Started> {
    let supervisor = match sys::supervise() {
        Ok(supervisor) => Some(supervisor),
        Err(err) => {
            log::warn!(
                "goplugin: cannot fork a plugin's supervisor ({err}): if the host dies, the \
                 plugin is not killed"
            );
            None
        }
    };
    // Joins the group as it starts, before it runs a single instruction of
    // its own; without a supervisor, leads a group of its own.
    command.process_group(
        supervisor
            .as_ref()
            .and_then(|s| i32::try_from(s.pgid()).ok())
            .unwrap_or(0),
    );
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            if let Some(supervisor) = supervisor {
                supervisor.release();
            }
            return Err(err);
        }
    };
    let pid = child.id();
    let pgid = supervisor.as_ref().map_or(pid, sys::Supervisor::pgid);
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = sys::signal_group(pgid, libc::SIGKILL);
        let _ = child.wait();
        if let Some(supervisor) = supervisor {
            supervisor.release();
        }
        return Err(io::Error::other(
            "the plugin's stdout or stderr is not a pipe",
        ));
    };
    let state = Arc::new(State {
        exit: Mutex::new(Exit {
            child: Some(child),
            status: None,
            supervisor,
        }),
        changed: Condvar::new(),
    });
    let process = Process { pid, pgid, state };
    let watched = process.clone();
    let waiting = thread::Builder::new()
        .name("goplugin-wait".into())
        .spawn(move || {
            let status = watched.wait_and_reap();
            if let Some(status) = status {
                on_exit(status);
            }
        });
    if let Err(err) = waiting {
        process.kill();
        let _ = process.wait_and_reap();
        return Err(err);
    }
    Ok(Started {
        process,
        stdout,
        stderr,
    })
}

fn child_status(mut child: Child) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt as _;
    child.wait().unwrap_or_else(|_| ExitStatus::from_raw(0))
}

impl Process {
    /// The plugin's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// How it exited, once it has.
    pub(crate) fn status(&self) -> Option<ExitStatus> {
        lock(&self.state.exit).status
    }

    /// Waits until it has exited or `deadline` passes.
    pub(crate) fn wait_until(&self, deadline: Instant) -> Option<ExitStatus> {
        wait_for(&self.state.exit, &self.state.changed, deadline, |exit| {
            exit.status
        })
    }

    /// SIGKILL to the plugin's process group, unless it has exited.
    pub(crate) fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// SIGTERM to the plugin's process group, then SIGKILL if it has not
    /// exited within `grace`: a plugin that failed to start gets the chance
    /// to remove its socket file (goplugin's plugins stop on SIGTERM as on
    /// `Kill()`; Go's die of it).
    pub(crate) fn terminate(&self, grace: std::time::Duration) {
        self.signal(libc::SIGTERM);
        if self.wait_until(Instant::now() + grace).is_none() {
            self.kill();
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let exit = lock(&self.state.exit);
        if exit.status.is_none() {
            // Not reaped yet (that happens under this lock), nor its
            // supervisor: the group id is still the plugin's.
            if sys::signal_group(self.pgid, signal).is_err()
                && let Some(child) = &exit.child
            {
                let _ = sys::signal_process(child.id(), signal);
            }
        }
    }

    /// The waiting thread: once the plugin has exited, kills what is left
    /// of its group and reaps it.
    fn wait_and_reap(&self) -> Option<ExitStatus> {
        let waited = sys::wait_exited(self.pid);
        let mut exit = lock(&self.state.exit);
        if waited.is_ok() {
            // Neither the plugin nor the group's leader is reaped yet: the
            // group id is still theirs. What is left of the group goes, the
            // supervisor with it.
            let _ = sys::signal_group(self.pgid, libc::SIGKILL);
        }
        let child = exit.child.take()?;
        // Reaped after the group was killed, never before: its pid is the
        // group's id.
        if let Some(supervisor) = exit.supervisor.take() {
            supervisor.release();
        }
        // An error here means the exit status is lost: the process ignores
        // SIGCHLD, so the kernel reaped the plugin already. It has exited
        // all the same.
        let status = child_status(child);
        exit.status = Some(status);
        self.state.changed.notify_all();
        Some(status)
    }
}
