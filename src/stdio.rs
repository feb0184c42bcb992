//! `plugin.GRPCStdio`: the plugin's stdout and stderr, forwarded to the host.
//!
//! After the handshake line, [`Capture::start`] points file descriptors 1
//! and 2 at pipes of its own (so `println!`, `eprintln!` and child
//! processes are all caught) and reads them on two threads:
//! - while a host is subscribed (`StreamStdio`, called by go-plugin ≥ 1.1
//!   right after connecting), every chunk goes to it, tagged STDOUT or
//!   STDERR, in chunks of at most 1 KiB as Go plugins send them;
//! - without a subscriber (go-plugin 1.0.1 never subscribes), stdout bytes
//!   are dropped, as the host would drop them, and stderr bytes pass through
//!   to the real stderr, where the host logs them.
//!
//! Writers never block on the host: the pipes are drained continuously, and
//! a subscriber that falls more than a few hundred chunks behind loses
//! chunks rather than stalling the plugin. Nothing reaches the real stdout
//! after the handshake line. Mirrors go-plugin's `grpc_stdio.go`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use grpcio::{RpcContext, RpcStatus, RpcStatusCode, ServerStreamingSink, WriteFlags};
use protobuf::well_known_types::Empty;

use crate::locks::lock;
use crate::logging;
use crate::proto::plugin::{GrpcStdio, StdioData, StdioData_Channel, create_grpc_stdio};

/// Chunks a subscriber may fall behind before new ones are dropped.
const QUEUE: usize = 256;

/// Largest chunk sent, as go-plugin's own plugins send them.
const CHUNK: usize = 1024;

/// State shared by the capture threads and the gRPC service.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    subscriber: Mutex<Subscriber>,
    /// Read ends of the capture pipes (none before capture), for `flush`.
    pipes: Mutex<Vec<Arc<OwnedFd>>>,
    /// Chunks read (or about to be) but not yet handed on.
    in_hand: AtomicUsize,
    /// Chunks handed to the subscriber's stream and not yet written to it.
    unsent: AtomicUsize,
}

#[derive(Debug, Default)]
struct Subscriber {
    sender: Option<mpsc::Sender<StdioData>>,
    /// The server is stopping: a new `StreamStdio` call ends at once.
    ended: bool,
}

impl Shared {
    fn forward(&self, channel: StdioData_Channel, data: &[u8], real_stderr: Option<&OwnedFd>) {
        let mut subscriber = lock(&self.subscriber);
        if let Some(sender) = subscriber.sender.as_mut() {
            let mut chunk = StdioData::new();
            chunk.set_channel(channel);
            chunk.set_data(data.to_vec());
            // Counted before the stream can write (and uncount) it.
            self.unsent.fetch_add(1, Ordering::AcqRel);
            match sender.try_send(chunk) {
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
        }
        drop(subscriber);
        if let Some(fd) = real_stderr {
            logging::write_fd(fd.as_raw_fd(), data);
        }
    }

    /// Waits (up to `limit`) until what the plugin wrote so far has been
    /// written to the subscriber's stream (or passed to the real stderr),
    /// so that it reaches the host before the plugin stops.
    ///
    /// Blocks: never call it on a completion-queue thread, which is the one
    /// that writes the stream.
    pub(crate) fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.pending() && Instant::now() < deadline {
            thread::sleep(Duration::from_micros(200));
        }
    }

    /// Whether some of what the plugin wrote is not yet written to the
    /// subscriber's stream (or to the real stderr).
    pub(crate) fn pending(&self) -> bool {
        self.in_hand.load(Ordering::Acquire) > 0
            || self.unsent.load(Ordering::Acquire) > 0
            || lock(&self.pipes)
                .iter()
                .any(|fd| unread_bytes(fd.as_raw_fd()) > 0)
    }

    /// Ends the subscriber's stream, and any that starts later.
    pub(crate) fn end_streams(&self) {
        let mut subscriber = lock(&self.subscriber);
        subscriber.sender = None;
        subscriber.ended = true;
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
        let (sender, receiver) = mpsc::channel(QUEUE);
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
    /// Shared with the stderr reader, which may outlive the capture (a
    /// child process can hold the pipe open).
    real_stderr: Arc<OwnedFd>,
    /// One message per reader thread when it has forwarded everything.
    readers_done: std::sync::mpsc::Receiver<()>,
}

impl Capture {
    /// Redirects fds 1 and 2. On error nothing has changed.
    pub(crate) fn start(shared: Arc<Shared>) -> io::Result<Capture> {
        let real_stdout = dup_cloexec(1)?;
        let real_stderr = Arc::new(dup_cloexec(2)?);
        let (out_read, out_write) = pipe_cloexec()?;
        let (err_read, err_write) = pipe_cloexec()?;
        // From here on the logger writes to the real stderr, past the capture.
        logging::set_stderr_fd(real_stderr.as_raw_fd());
        dup2(out_write.as_raw_fd(), 1)?;
        if let Err(err) = dup2(err_write.as_raw_fd(), 2) {
            let _ = dup2(real_stdout.as_raw_fd(), 1);
            logging::set_stderr_fd(2);
            return Err(err);
        }
        drop((out_write, err_write));
        let (out_read, err_read) = (Arc::new(out_read), Arc::new(err_read));
        *lock(&shared.pipes) = vec![Arc::clone(&out_read), Arc::clone(&err_read)];
        let (done, readers_done) = std::sync::mpsc::channel();
        reader(
            Arc::clone(&shared),
            out_read,
            StdioData_Channel::STDOUT,
            None,
            done.clone(),
        );
        reader(
            Arc::clone(&shared),
            err_read,
            StdioData_Channel::STDERR,
            Some(Arc::clone(&real_stderr)),
            done,
        );
        Ok(Capture {
            shared,
            real_stdout,
            real_stderr,
            readers_done,
        })
    }

    /// The real stdout and stderr, for watching whether the host still reads them.
    pub(crate) fn real_fds(&self) -> [RawFd; 2] {
        [self.real_stdout.as_raw_fd(), self.real_stderr.as_raw_fd()]
    }

    /// Puts fds 1 and 2 back and forwards what is still in the pipes. The
    /// server's stop then ends the subscriber's stream.
    pub(crate) fn finish(self) {
        let _ = dup2(self.real_stdout.as_raw_fd(), 1);
        let _ = dup2(self.real_stderr.as_raw_fd(), 2);
        logging::set_stderr_fd(2);
        // The readers end at EOF, once no process holds the pipes; a child
        // that still does must not hold up the plugin's exit.
        let deadline = Instant::now() + Duration::from_millis(200);
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.readers_done.recv_timeout(left).is_err() {
                break;
            }
        }
        lock(&self.shared.pipes).clear();
    }
}

/// Starts a thread that forwards `pipe` until EOF, then reports on `done`.
fn reader(
    shared: Arc<Shared>,
    pipe: Arc<OwnedFd>,
    channel: StdioData_Channel,
    real_stderr: Option<Arc<OwnedFd>>,
    done: std::sync::mpsc::Sender<()>,
) {
    let name = format!(
        "goplugin-{}",
        if real_stderr.is_some() {
            "stderr"
        } else {
            "stdout"
        }
    );
    let spawned = thread::Builder::new().name(name).spawn(move || {
        let mut buf = [0u8; CHUNK];
        loop {
            // Bytes are counted as in hand before `read` takes them out of
            // the pipe, so `flush` always sees them in one place or the
            // other: wait until there is something to read first.
            let mut readable = libc::pollfd {
                fd: pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd entry.
            if unsafe { libc::poll(&mut readable, 1, -1) } < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            shared.in_hand.fetch_add(1, Ordering::AcqRel);
            // SAFETY: reading into a buffer we own, at most its length.
            let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let error = (n < 0).then(io::Error::last_os_error);
            if n > 0 {
                shared.forward(channel, &buf[..n as usize], real_stderr.as_deref());
            }
            shared.in_hand.fetch_sub(1, Ordering::AcqRel);
            match error {
                Some(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Some(_) => break,
                None if n == 0 => break,
                None => {}
            }
        }
        let _ = done.send(());
    });
    if let Err(err) = spawned {
        // Out of threads: the pipe will fill up and block writers. Nothing
        // better can be done this late; say so.
        log::error!("cannot start the stdio reader: {err}");
    }
}

fn unread_bytes(fd: RawFd) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } == 0 {
        n
    } else {
        0
    }
}

fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that we then own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fresh descriptors that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on descriptors that are open; `to` is 1 or 2.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
