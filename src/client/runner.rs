//! The plugin's process, host side: starting it so that it cannot outlive
//! the host, and knowing when it has exited (go-plugin's `cmdrunner`).
//!
//! - Every plugin is forked by one launcher thread that lives as long as
//!   the host process, and gets `PR_SET_PDEATHSIG` (SIGKILL): the kernel
//!   sends it when the thread that forked the child ends, so a plugin
//!   started from a short-lived thread would otherwise die with that
//!   thread. A host killed with SIGKILL takes its plugins with it, where
//!   go-plugin leaves them running.
//! - The plugin leads a process group of its own, and a kill reaches the
//!   whole group: a plugin started through `sh -c` (Debian's dash does not
//!   `exec` the last command) is killed with the shell. When the group's
//!   leader exits, whatever is left of the group is killed too.
//! - A supervisor per plugin (a forked copy of the host that only waits on
//!   a socket, see [`sys::supervise`]) kills the plugin's whole process
//!   group when the host dies, even by SIGKILL: `PR_SET_PDEATHSIG` reaches
//!   the plugin's first process only, not what it starts (the plugin
//!   behind `sh -c`). What escapes: a descendant that leaves the group
//!   (`setsid`, `setpgid`).
//! - One thread per plugin waits for its exit without reaping it, so the
//!   pid (and the process group id) stays the plugin's until the exit is
//!   recorded: a kill never reaches a recycled pid.

use std::io;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::Instant;

use crate::locks::{lock, wait_for};
use crate::sys;

/// A started plugin process.
#[derive(Debug, Clone)]
pub(crate) struct Process {
    pid: u32,
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
    /// Kills the process group if the host dies; released once the exit
    /// is recorded.
    supervisor: Option<sys::Supervisor>,
}

/// A process and the pipes of its output.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) process: Process,
    pub(crate) stdout: ChildStdout,
    pub(crate) stderr: ChildStderr,
}

type Launch = (Command, mpsc::Sender<io::Result<Child>>);

/// Starts `command` (stdout and stderr piped) on the launcher thread;
/// `on_exit` runs on the waiting thread once it has exited.
pub(crate) fn start(
    mut command: Command,
    on_exit: impl FnOnce(ExitStatus) + Send + 'static,
) -> io::Result<Started> {
    sys::die_with_host(&mut command);
    let mut child = launch(command)?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(io::Error::other(
            "the plugin's stdout or stderr is not a pipe",
        ));
    };
    let pid = child.id();
    let supervisor = match sys::supervise(pid) {
        Ok(supervisor) => Some(supervisor),
        Err(err) => {
            log::warn!(
                "goplugin: cannot fork the supervisor of plugin process {pid} ({err}): if the \
                 host dies, only the plugin's first process is killed, not what it started"
            );
            None
        }
    };
    let state = Arc::new(State {
        exit: Mutex::new(Exit {
            child: Some(child),
            status: None,
            supervisor,
        }),
        changed: Condvar::new(),
    });
    let process = Process { pid, state };
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

/// Forks on the launcher thread, or here if it cannot run (the plugin then
/// dies with this thread rather than with the process: said once).
fn launch(command: Command) -> io::Result<Child> {
    static LAUNCHER: OnceLock<Option<Mutex<mpsc::Sender<Launch>>>> = OnceLock::new();
    let launcher = LAUNCHER.get_or_init(|| {
        let (sender, jobs) = mpsc::channel::<Launch>();
        let started = thread::Builder::new()
            .name("goplugin-launcher".into())
            .spawn(move || {
                for (mut command, reply) in jobs {
                    let _ = reply.send(command.spawn());
                }
            });
        match started {
            Ok(_) => Some(Mutex::new(sender)),
            Err(err) => {
                log::warn!(
                    "goplugin: cannot start the launcher thread ({err}): plugins are started \
                     from the calling thread, and die when it ends"
                );
                None
            }
        }
    });
    let Some(launcher) = launcher else {
        let mut command = command;
        return command.spawn();
    };
    let (reply, started) = mpsc::channel();
    lock(launcher)
        .send((command, reply))
        .map_err(|_| io::Error::other("the launcher thread has stopped"))?;
    started
        .recv()
        .map_err(|_| io::Error::other("the launcher thread has stopped"))?
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
            // Not reaped yet (that happens under this lock): the group id
            // is still the plugin's.
            if sys::signal_group(self.pid, signal).is_err()
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
            // The leader is a zombie until reaped below: the group id is
            // still its own.
            let _ = sys::signal_group(self.pid, libc::SIGKILL);
        }
        let child = exit.child.take()?;
        // Released before the leader is reaped, while the group id is still
        // the plugin's: a supervisor never outlives it to kill a reused id.
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
