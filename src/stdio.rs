//! `plugin.GRPCStdio`: the plugin's stdout and stderr, forwarded to the host.
//!
//! Before the handshake line, [`Capture::redirect`] points file descriptors
//! 1 and 2 at pipes of its own (so `println!`, `eprintln!` and child
//! processes are all caught, even by a call that runs the moment the host
//! connects); the handshake line itself goes to the real stdout. Right
//! after it, [`Capture::start_readers`] reads the pipes on two threads:
//! - while a host is subscribed (`StreamStdio`, which go-plugin ≥ 1.1 calls
//!   right after connecting), every chunk goes to it, tagged STDOUT or
//!   STDERR, in chunks of at most 1 KiB as Go plugins send them;
//! - until the first subscription, for at most [`HOLD`], chunks are held for
//!   it: the host asks before its first call, but the plugin may run that
//!   call first;
//! - without a subscriber (go-plugin 1.0.1 never subscribes), stdout bytes
//!   are dropped, as the host would drop them, and stderr bytes pass through
//!   to the real stderr, where the host logs them.
//!
//! Writers never block on the host: the pipes are drained continuously, and
//! a subscriber that falls more than a few hundred chunks behind loses
//! chunks rather than stalling the plugin. Nothing reaches the real stdout
//! after the handshake line. Mirrors go-plugin's `grpc_stdio.go`, whose
//! writers instead block until the host reads.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use grpcio::{RpcContext, RpcStatus, RpcStatusCode, ServerStreamingSink, WriteFlags};
use protobuf::well_known_types::empty::Empty;

use crate::locks::lock;
use crate::logging;
use crate::proto::plugin::stdio_data::Channel;
use crate::proto::plugin::{GrpcStdio, StdioData, create_grpc_stdio};
use crate::sys;

/// Chunks a subscriber may fall behind before new ones are dropped; also
/// the most chunks held for the first subscriber.
const QUEUE: usize = 256;

/// Largest chunk sent, as go-plugin's own plugins send them.
const CHUNK: usize = 1024;

/// How long after the handshake output waits for the host to subscribe.
/// go-plugin ≥ 1.1 subscribes within milliseconds of connecting; 1.0.1
/// never does, and its host sees stderr this much later at the start.
const HOLD: Duration = Duration::from_millis(500);

/// State shared by the capture threads and the gRPC service.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    subscriber: Mutex<Subscriber>,
    /// Read ends of the capture pipes, stdout's then stderr's (none before
    /// capture): for `flush`, and for the readers.
    pipes: Mutex<Vec<Arc<OwnedFd>>>,
    /// Chunks read (or about to be) but not yet handed on.
    in_hand: AtomicUsize,
    /// Chunks handed to the subscriber's stream and not yet written to it.
    unsent: AtomicUsize,
}

#[derive(Debug, Default)]
struct Subscriber {
    sender: Option<mpsc::Sender<StdioData>>,
    /// Chunks kept for the first subscriber while `hold_until` lies ahead.
    held: Vec<StdioData>,
    /// Set when the readers start; cleared by the first subscription or
    /// once it has passed.
    hold_until: Option<Instant>,
    /// Where stderr goes without a subscriber (set by the capture).
    real_stderr: Option<Arc<OwnedFd>>,
    /// The server is stopping: a new `StreamStdio` call ends at once.
    ended: bool,
}

impl Subscriber {
    /// Stops holding. Returns the held stderr chunks, for the real stderr;
    /// held stdout is dropped, as it would have been without the hold.
    fn stop_holding(&mut self) -> Vec<StdioData> {
        self.hold_until = None;
        self.held
            .drain(..)
            .filter(|chunk| chunk.channel.enum_value() == Ok(Channel::STDERR))
            .collect()
    }
}

impl Shared {
    fn forward(&self, channel: Channel, data: &[u8]) {
        let chunk = || StdioData {
            channel: channel.into(),
            data: data.to_vec(),
            ..StdioData::default()
        };
        let mut subscriber = lock(&self.subscriber);
        if let Some(sender) = subscriber.sender.as_mut() {
            // Counted before the stream can write (and uncount) it.
            self.unsent.fetch_add(1, Ordering::AcqRel);
            match sender.try_send(chunk()) {
                Ok(()) => return,
                Err(err) => {
                    self.unsent.fetch_sub(1, Ordering::AcqRel);
                    // Too far behind: drop this chunk, keep the subscriber.
                    if err.is_full() {
                        return;
                    }
                    // The stream ended: behave as if nobody had subscribed.
                    subscriber.sender = None;
                }
            }
        } else if subscriber
            .hold_until
            .is_some_and(|until| Instant::now() < until)
            && subscriber.held.len() < QUEUE
        {
            subscriber.held.push(chunk());
            return;
        }
        let mut to_stderr = subscriber.stop_holding();
        if channel == Channel::STDERR {
            to_stderr.push(chunk());
        }
        let real_stderr = subscriber.real_stderr.clone();
        drop(subscriber);
        write_real_stderr(real_stderr.as_deref(), &to_stderr);
    }

    /// When the readers should next look at the hold: `None` while nothing
    /// is held.
    fn hold_deadline(&self) -> Option<Instant> {
        let subscriber = lock(&self.subscriber);
        subscriber
            .hold_until
            .filter(|_| !subscriber.held.is_empty())
    }

    /// Ends the hold once it has passed (or now, with `force`): held stderr
    /// goes to the real stderr.
    fn end_hold(&self, force: bool) {
        let mut subscriber = lock(&self.subscriber);
        let passed = subscriber
            .hold_until
            .is_some_and(|until| force || Instant::now() >= until);
        if !passed {
            return;
        }
        let to_stderr = subscriber.stop_holding();
        let real_stderr = subscriber.real_stderr.clone();
        drop(subscriber);
        write_real_stderr(real_stderr.as_deref(), &to_stderr);
    }

    /// Waits (up to `limit`) until what the plugin wrote so far has been
    /// written to the subscriber's stream (or passed to the real stderr),
    /// so that it reaches the host before the plugin stops.
    ///
    /// Blocks: never call it on a completion-queue thread, which is the one
    /// that writes the stream. Returns whether everything went out.
    pub(crate) fn flush(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.pending() {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Whether some of what the plugin wrote is not yet written to the
    /// subscriber's stream (or to the real stderr). Chunks held for a
    /// subscriber that has not come do not count: there is nobody to wait for.
    pub(crate) fn pending(&self) -> bool {
        self.in_hand.load(Ordering::Acquire) > 0
            || self.unsent.load(Ordering::Acquire) > 0
            || lock(&self.pipes)
                .iter()
                .any(|fd| sys::unread_bytes(fd.as_raw_fd()) > 0)
    }

    /// Ends the subscriber's stream, and any that starts later.
    pub(crate) fn end_streams(&self) {
        let mut subscriber = lock(&self.subscriber);
        subscriber.sender = None;
        subscriber.ended = true;
    }
}

fn write_real_stderr(fd: Option<&OwnedFd>, chunks: &[StdioData]) {
    if let Some(fd) = fd {
        for chunk in chunks {
            logging::write_fd(fd.as_raw_fd(), &chunk.data);
        }
    }
}

#[derive(Clone)]
struct StdioService {
    shared: Arc<Shared>,
}

impl GrpcStdio for StdioService {
    fn stream_stdio(
        &mut self,
        ctx: RpcContext<'_>,
        _req: Empty,
        mut sink: ServerStreamingSink<StdioData>,
    ) {
        let (mut sender, receiver) = mpsc::channel(QUEUE);
        {
            let mut subscriber = lock(&self.shared.subscriber);
            if subscriber.ended {
                let status = RpcStatus::with_message(
                    RpcStatusCode::UNAVAILABLE,
                    "the plugin is shutting down".to_string(),
                );
                ctx.spawn(async move {
                    let _ = sink.fail(status).await;
                });
                return;
            }
            // What was held for the first subscriber goes first; the
            // channel has room for all of it.
            subscriber.hold_until = None;
            for chunk in subscriber.held.drain(..) {
                self.shared.unsent.fetch_add(1, Ordering::AcqRel);
                if sender.try_send(chunk).is_err() {
                    self.shared.unsent.fetch_sub(1, Ordering::AcqRel);
                }
            }
            // One subscriber at a time, as data is consumed once: a newer
            // call replaces (and so ends) an older one.
            subscriber.sender = Some(sender);
        }
        let shared = Arc::clone(&self.shared);
        ctx.spawn(async move {
            let mut receiver = receiver;
            let mut open = true;
            // Chunk by chunk, so that `unsent` counts down as each is
            // written; once the stream fails the rest is only counted off.
            while let Some(chunk) = receiver.next().await {
                if open && sink.send((chunk, WriteFlags::default())).await.is_err() {
                    open = false;
                    receiver.close();
                }
                shared.unsent.fetch_sub(1, Ordering::AcqRel);
            }
            if open {
                let _ = sink.close().await;
            }
        });
    }
}

/// The `plugin.GRPCStdio` service over `shared`.
pub(crate) fn service(shared: Arc<Shared>) -> grpcio::Service {
    create_grpc_stdio(StdioService { shared })
}

/// fds 1 and 2 redirected into pipes that feed the stdio service.
#[derive(Debug)]
pub(crate) struct Capture {
    shared: Arc<Shared>,
    real_stdout: OwnedFd,
    /// Shared with the stderr reader and the hold, which may outlive the
    /// capture (a child process can hold the pipe open).
    real_stderr: Arc<OwnedFd>,
    /// Reader threads started.
    readers: usize,
    /// One message per reader thread when it has forwarded everything.
    readers_done: std::sync::mpsc::Receiver<()>,
    done: std::sync::mpsc::Sender<()>,
}

impl Capture {
    /// Redirects fds 1 and 2 into pipes, where output waits until
    /// [`start_readers`](Self::start_readers). Starts no thread. On error
    /// nothing has changed.
    pub(crate) fn redirect(shared: Arc<Shared>) -> io::Result<Capture> {
        // Duplicates above fd 2, closed at `exec`.
        let real_stdout = io::stdout().as_fd().try_clone_to_owned()?;
        let real_stderr = Arc::new(io::stderr().as_fd().try_clone_to_owned()?);
        let (out_read, out_write) = pipe_cloexec()?;
        let (err_read, err_write) = pipe_cloexec()?;
        // From here on the logger writes to the real stderr, past the capture.
        logging::set_stderr_fd(real_stderr.as_raw_fd());
        sys::dup2(out_write.as_raw_fd(), 1)?;
        if let Err(err) = sys::dup2(err_write.as_raw_fd(), 2) {
            let _ = sys::dup2(real_stdout.as_raw_fd(), 1);
            logging::set_stderr_fd(2);
            return Err(err);
        }
        drop((out_write, err_write));
        // Stdout's first, then stderr's, as `start_readers` reads them.
        *lock(&shared.pipes) = vec![Arc::new(out_read), Arc::new(err_read)];
        lock(&shared.subscriber).real_stderr = Some(Arc::clone(&real_stderr));
        let (done, readers_done) = std::sync::mpsc::channel();
        Ok(Capture {
            shared,
            real_stdout,
            real_stderr,
            readers: 0,
            readers_done,
            done,
        })
    }

    /// Writes `bytes` (the handshake line) to the real stdout.
    pub(crate) fn write_real_stdout(&self, bytes: &[u8]) -> io::Result<()> {
        std::fs::File::from(self.real_stdout.try_clone()?).write_all(bytes)
    }

    /// Starts reading the pipes, and holding output for the host's first
    /// subscription.
    ///
    /// # Errors
    /// A reader thread could not be started: the pipe would fill up and
    /// block every writer, so the plugin must not go on.
    pub(crate) fn start_readers(&mut self) -> io::Result<()> {
        lock(&self.shared.subscriber).hold_until = Some(Instant::now() + HOLD);
        let pipes = lock(&self.shared.pipes).clone();
        let channels = [Channel::STDOUT, Channel::STDERR];
        for (pipe, channel) in pipes.into_iter().zip(channels) {
            reader(Arc::clone(&self.shared), pipe, channel, self.done.clone())?;
            self.readers += 1;
        }
        Ok(())
    }

    /// The real stdout and stderr, for watching whether the host still reads them.
    pub(crate) fn real_fds(&self) -> [RawFd; 2] {
        [self.real_stdout.as_raw_fd(), self.real_stderr.as_raw_fd()]
    }

    /// Puts fds 1 and 2 back and forwards what is still in the pipes (held
    /// stderr to the real stderr). The server's stop then ends the
    /// subscriber's stream.
    pub(crate) fn finish(self) {
        let _ = sys::dup2(self.real_stdout.as_raw_fd(), 1);
        let _ = sys::dup2(self.real_stderr.as_raw_fd(), 2);
        logging::set_stderr_fd(2);
        // The readers end at EOF, once no process holds the pipes; a child
        // that still does must not hold up the plugin's exit.
        let deadline = Instant::now() + Duration::from_millis(200);
        for _ in 0..self.readers {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.readers_done.recv_timeout(left).is_err() {
                break;
            }
        }
        lock(&self.shared.pipes).clear();
        self.shared.end_hold(true);
    }
}

/// Starts a thread that forwards `pipe` until EOF, then reports on `done`.
/// Returns whether it started.
fn reader(
    shared: Arc<Shared>,
    pipe: Arc<OwnedFd>,
    channel: Channel,
    done: std::sync::mpsc::Sender<()>,
) -> io::Result<()> {
    let name = match channel {
        Channel::STDERR => "goplugin-stderr",
        _ => "goplugin-stdout",
    };
    let spawned = thread::Builder::new().name(name.into()).spawn(move || {
        let mut buf = [0u8; CHUNK];
        loop {
            // Bytes are counted as in hand before `read` takes them out of
            // the pipe, so `flush` always sees them in one place or the
            // other: wait until there is something to read first. While
            // output is held, wake up when the hold ends.
            let timeout = shared.hold_deadline().map_or(-1, |until| {
                let left = until.saturating_duration_since(Instant::now());
                libc::c_int::try_from(left.as_millis() + 1).unwrap_or(libc::c_int::MAX)
            });
            let mut readable = [libc::pollfd {
                fd: pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            match sys::poll(&mut readable, timeout) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
                Ok(0) => {
                    shared.end_hold(false);
                    continue;
                }
                Ok(_) => {}
            }
            shared.in_hand.fetch_add(1, Ordering::AcqRel);
            let read = sys::read(pipe.as_raw_fd(), &mut buf);
            if let Ok(n @ 1..) = read {
                shared.forward(channel, &buf[..n]);
            }
            shared.in_hand.fetch_sub(1, Ordering::AcqRel);
            match read {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) | Ok(0) => break,
                Ok(_) => {}
            }
        }
        let _ = done.send(());
    });
    spawned.map(drop)
}

/// A pipe whose ends are closed at `exec`.
fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = io::pipe()?;
    Ok((OwnedFd::from(read), OwnedFd::from(write)))
}
