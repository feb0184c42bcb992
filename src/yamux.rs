//! hashicorp/yamux, server side: the stream multiplexer go-plugin hosts
//! run on their one connection when they multiplex
//! (`PLUGIN_MULTIPLEX_GRPC=true`, go-plugin 1.6+). The host is the yamux
//! client (hashicorp/yamux's default configuration).
//!
//! The wire protocol only: 12-byte frame headers (version 0, type, flags,
//! stream id, length), data and window-update frames with SYN/ACK/FIN/RST
//! flags, a 256 KiB window per stream and direction, pings answered,
//! go-away on protocol errors. Which gRPC server a stream belongs to is
//! go-plugin's business, in [`mux`](crate::mux).
//!
//! gRPC C-core cannot take a yamux stream as a connection, so each stream is
//! bridged to a local socket: a stream the host opens is connected to the
//! local listener its [`Router`] names, and a stream the plugin opens
//! ([`Session::open`]) carries a connection a local listener accepted. Two
//! threads pump each stream's bytes, honouring yamux flow control; TLS, when
//! the host runs AutoMTLS, stays end to end inside each stream.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;

use crate::listener::{Addr, Conn};
use crate::locks::{lock, wait};

/// yamux's only protocol version.
const VERSION: u8 = 0;
const HEADER_LEN: usize = 12;

const TYPE_DATA: u8 = 0;
const TYPE_WINDOW_UPDATE: u8 = 1;
const TYPE_PING: u8 = 2;
const TYPE_GO_AWAY: u8 = 3;

const FLAG_SYN: u16 = 1;
const FLAG_ACK: u16 = 2;
const FLAG_FIN: u16 = 4;
const FLAG_RST: u16 = 8;

const GO_AWAY_NORMAL: u32 = 0;
const GO_AWAY_PROTOCOL_ERROR: u32 = 1;

/// Each stream's initial window, both ways (hashicorp/yamux's default).
const INITIAL_WINDOW: u32 = 256 * 1024;
/// Bytes delivered before the window is re-opened by that much.
const WINDOW_CREDIT: u32 = INITIAL_WINDOW / 4;
/// Largest chunk read from a local socket into one data frame.
const CHUNK: usize = 32 * 1024;

fn header(kind: u8, flags: u16, stream: u32, length: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = VERSION;
    h[1] = kind;
    h[2..4].copy_from_slice(&flags.to_be_bytes());
    h[4..8].copy_from_slice(&stream.to_be_bytes());
    h[8..12].copy_from_slice(&length.to_be_bytes());
    h
}

/// Which local listener a stream the host opens goes to. Called on the
/// session's reading thread, in the order the streams arrive.
pub(crate) type Router = dyn Fn() -> Option<Addr> + Send + Sync;

/// A yamux session, server side. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Session {
    shared: Arc<Shared>,
}

struct Shared {
    /// The physical connection's writing half; one frame at a time.
    writer: Mutex<Conn>,
    /// Another handle on it, to shut it down while a writer blocks.
    control: Conn,
    streams: Mutex<HashMap<u32, Arc<Stream>>>,
    /// Ids of streams this side opens: even, from 2.
    next_id: AtomicU32,
    closed: AtomicBool,
    router: Box<Router>,
    on_close: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

struct Stream {
    id: u32,
    state: Mutex<StreamState>,
    changed: Condvar,
    /// The bridged local socket, to unblock its reader on a reset.
    local: OnceLock<Conn>,
}

struct StreamState {
    /// Bytes the peer still accepts.
    send_window: u32,
    /// Bytes the peer may still send.
    recv_window: u32,
    inbound: VecDeque<Vec<u8>>,
    /// The in-pump is writing a chunk it took from `inbound`.
    writing: bool,
    /// Bytes delivered to the local socket, not yet given back to the host
    /// as window.
    credit: u32,
    remote_fin: bool,
    reset: bool,
    /// Pumps still running; the last one out removes the stream.
    pumps: u8,
}

impl Stream {
    fn new(id: u32) -> Arc<Stream> {
        Arc::new(Stream {
            id,
            state: Mutex::new(StreamState {
                send_window: INITIAL_WINDOW,
                recv_window: INITIAL_WINDOW,
                inbound: VecDeque::new(),
                writing: false,
                credit: 0,
                remote_fin: false,
                reset: false,
                pumps: 2,
            }),
            changed: Condvar::new(),
            local: OnceLock::new(),
        })
    }

    fn reset(&self) {
        lock(&self.state).reset = true;
        self.changed.notify_all();
        if let Some(local) = self.local.get() {
            local.shutdown(Shutdown::Both);
        }
    }
}

impl Session {
    /// Runs the server side of a session on `conn`. Streams the host opens
    /// are bridged to what `router` connects; `on_close` runs once when the
    /// session ends (the host closed the connection, or [`close`](Self::close)),
    /// or at once when it cannot start.
    pub(crate) fn serve(
        conn: Conn,
        router: Box<Router>,
        on_close: Box<dyn FnOnce() + Send>,
    ) -> io::Result<Session> {
        let handles = match &conn {
            Conn::Tcp(stream) => stream.set_nodelay(true),
            Conn::Unix(_) => Ok(()),
        }
        .and_then(|()| Ok((conn.try_clone()?, conn.try_clone()?)));
        let (reader, control) = match handles {
            Ok(handles) => handles,
            Err(err) => {
                on_close();
                return Err(err);
            }
        };
        let session = Session {
            shared: Arc::new(Shared {
                writer: Mutex::new(conn),
                control,
                streams: Mutex::new(HashMap::new()),
                next_id: AtomicU32::new(2),
                closed: AtomicBool::new(false),
                router,
                on_close: Mutex::new(Some(on_close)),
            }),
        };
        let reading = session.clone();
        let started = thread::Builder::new()
            .name("goplugin-mux".into())
            .spawn(move || {
                if let Err(err) = reading.read_frames(reader)
                    && !reading.shared.closed.load(Ordering::Relaxed)
                {
                    log::warn!("multiplexed connection to the host failed: {err}");
                }
                reading.close();
            });
        if let Err(err) = started {
            session.close();
            return Err(err);
        }
        Ok(session)
    }

    /// Opens a stream to the host and bridges `local` to it; `on_end` runs
    /// when the stream is finished.
    pub(crate) fn open(&self, local: Conn, on_end: Box<dyn FnOnce() + Send>) -> io::Result<()> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the multiplexed connection to the host is closed",
            ));
        }
        let id = self.shared.next_id.fetch_add(2, Ordering::Relaxed);
        let stream = Stream::new(id);
        lock(&self.shared.streams).insert(id, Arc::clone(&stream));
        if let Err(err) = self.send(TYPE_WINDOW_UPDATE, FLAG_SYN, id, 0, &[]) {
            lock(&self.shared.streams).remove(&id);
            return Err(err);
        }
        self.bridge(stream, local, on_end)
    }

    /// Ends the session: tells the host, resets every stream.
    pub(crate) fn close(&self) {
        if self.shared.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        // Skipped when a pump is stuck writing to a host that stopped
        // reading: closing must not wait for it.
        if let Ok(mut writer) = self.shared.writer.try_lock() {
            let _ = writer.write_all(&header(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL));
        }
        self.shared.control.shutdown(Shutdown::Both);
        let streams: Vec<_> = lock(&self.shared.streams).drain().map(|(_, s)| s).collect();
        for stream in streams {
            stream.reset();
        }
        if let Some(on_close) = lock(&self.shared.on_close).take() {
            on_close();
        }
    }

    fn send(&self, kind: u8, flags: u16, id: u32, length: u32, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(&header(kind, flags, id, length));
        frame.extend_from_slice(payload);
        lock(&self.shared.writer).write_all(&frame)
    }

    fn protocol_error(&self, what: String) -> io::Error {
        let _ = self.send(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR, &[]);
        io::Error::new(io::ErrorKind::InvalidData, what)
    }

    /// The session's reading loop: until the connection ends or breaks
    /// the protocol.
    fn read_frames(&self, mut reader: Conn) -> io::Result<()> {
        let mut head = [0u8; HEADER_LEN];
        loop {
            if let Err(err) = reader.read_exact(&mut head) {
                return match err.kind() {
                    io::ErrorKind::UnexpectedEof => Ok(()),
                    _ => Err(err),
                };
            }
            let kind = head[1];
            let flags = u16::from_be_bytes([head[2], head[3]]);
            let id = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            let length = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
            if head[0] != VERSION {
                return Err(self.protocol_error(format!("yamux version {} (want 0)", head[0])));
            }
            match kind {
                TYPE_DATA | TYPE_WINDOW_UPDATE => {
                    let data = (kind == TYPE_DATA).then_some(&mut reader);
                    self.on_stream_frame(flags, id, length, data)?;
                }
                TYPE_PING if flags & FLAG_SYN != 0 => {
                    self.send(TYPE_PING, FLAG_ACK, 0, length, &[])?;
                }
                TYPE_PING => {}
                TYPE_GO_AWAY => return Ok(()),
                other => {
                    return Err(self.protocol_error(format!("unknown yamux frame type {other}")));
                }
            }
        }
    }

    /// A data or window-update frame for stream `id`; `data` is the
    /// connection to read a data frame's payload from.
    fn on_stream_frame(
        &self,
        flags: u16,
        id: u32,
        length: u32,
        data: Option<&mut Conn>,
    ) -> io::Result<()> {
        let stream = if flags & FLAG_SYN != 0 {
            Some(self.accept(id)?)
        } else {
            lock(&self.shared.streams).get(&id).cloned()
        };
        let Some(stream) = stream else {
            // Late frames of a finished stream: their payload is dropped.
            if let Some(reader) = data {
                io::copy(&mut reader.take(u64::from(length)), &mut io::sink())?;
            }
            return Ok(());
        };
        match data {
            Some(reader) => {
                // Checked before reading: the length comes from the host.
                let window = lock(&stream.state).recv_window;
                if length > window {
                    return Err(self.protocol_error(format!(
                        "stream {id}: {length} bytes sent into a window of {window}"
                    )));
                }
                let mut payload = vec![0u8; length as usize];
                reader.read_exact(&mut payload)?;
                let mut state = lock(&stream.state);
                state.recv_window -= length;
                // Straight to the local socket when nothing is ahead of it
                // and it takes the bytes without blocking: saves waking the
                // in-pump (a thread hop per message); the rest queues.
                let mut direct = 0;
                if state.inbound.is_empty()
                    && !state.writing
                    && !state.reset
                    && let Some(local) = stream.local.get()
                {
                    direct = local.try_send(&payload).unwrap_or(0);
                }
                if direct < payload.len() {
                    payload.drain(..direct);
                    state.inbound.push_back(payload);
                }
                drop(state);
                if direct > 0 {
                    self.delivered(&stream, direct as u32)?;
                }
            }
            None => {
                let mut state = lock(&stream.state);
                state.send_window = state.send_window.saturating_add(length);
            }
        }
        if flags & FLAG_FIN != 0 {
            lock(&stream.state).remote_fin = true;
        }
        stream.changed.notify_all();
        if flags & FLAG_RST != 0 {
            stream.reset();
        }
        Ok(())
    }

    /// A stream the host opens: acknowledge it, then connect its local end
    /// on a thread of its own.
    fn accept(&self, id: u32) -> io::Result<Arc<Stream>> {
        if id.is_multiple_of(2) || lock(&self.shared.streams).contains_key(&id) {
            return Err(self.protocol_error(format!(
                "the host opened stream {id} twice or with an even id"
            )));
        }
        let stream = Stream::new(id);
        lock(&self.shared.streams).insert(id, Arc::clone(&stream));
        self.send(TYPE_WINDOW_UPDATE, FLAG_ACK, id, 0, &[])?;
        let target = (self.shared.router)();
        let session = self.clone();
        let opened = Arc::clone(&stream);
        let connect = move || match target {
            Some(target) => Conn::connect(&target),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the plugin is stopping",
            )),
        };
        thread::Builder::new()
            .name("goplugin-mux-stream".into())
            .spawn(move || match connect() {
                Ok(local) => {
                    if let Err(err) = session.bridge(Arc::clone(&opened), local, Box::new(|| {})) {
                        log::warn!("multiplexed stream {id}: cannot bridge it: {err}");
                        session.abort(&opened);
                    }
                }
                Err(err) => {
                    log::warn!("multiplexed stream {id}: no local server to take it: {err}");
                    session.abort(&opened);
                }
            })?;
        Ok(stream)
    }

    /// Resets a stream that never got going.
    fn abort(&self, stream: &Stream) {
        let _ = self.send(TYPE_WINDOW_UPDATE, FLAG_RST, stream.id, 0, &[]);
        lock(&self.shared.streams).remove(&stream.id);
        stream.reset();
    }

    /// Pumps bytes between `stream` and `local`, one thread each way.
    fn bridge(
        &self,
        stream: Arc<Stream>,
        local: Conn,
        on_end: Box<dyn FnOnce() + Send>,
    ) -> io::Result<()> {
        let reading = local.try_clone()?;
        let control = local.try_clone()?;
        let _ = stream.local.set(control);
        if lock(&stream.state).reset {
            local.shutdown(Shutdown::Both);
        }
        let on_end = Arc::new(Mutex::new(Some(on_end)));
        let (session, out) = (self.clone(), Arc::clone(&stream));
        let out_end = Arc::clone(&on_end);
        thread::Builder::new()
            .name("goplugin-mux-out".into())
            .spawn(move || {
                session.pump_out(&out, reading);
                session.pump_done(&out, &out_end);
            })?;
        let session = self.clone();
        thread::Builder::new()
            .name("goplugin-mux-in".into())
            .spawn(move || {
                session.pump_in(&stream, local);
                session.pump_done(&stream, &on_end);
            })?;
        Ok(())
    }

    fn pump_done(&self, stream: &Stream, on_end: &Mutex<Option<Box<dyn FnOnce() + Send>>>) {
        let last = {
            let mut state = lock(&stream.state);
            state.pumps -= 1;
            state.pumps == 0
        };
        if last {
            lock(&self.shared.streams).remove(&stream.id);
            if let Some(on_end) = lock(on_end).take() {
                on_end();
            }
        }
    }

    /// Local socket → host, within the host's window.
    fn pump_out(&self, stream: &Stream, mut local: Conn) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match local.read(&mut buf) {
                Ok(0) => {
                    if !lock(&stream.state).reset {
                        let _ = self.send(TYPE_WINDOW_UPDATE, FLAG_FIN, stream.id, 0, &[]);
                    }
                    return;
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    if !lock(&stream.state).reset {
                        let _ = self.send(TYPE_WINDOW_UPDATE, FLAG_RST, stream.id, 0, &[]);
                        stream.reset();
                    }
                    return;
                }
            };
            let mut sent = 0;
            while sent < n {
                let take = {
                    let mut state = lock(&stream.state);
                    while state.send_window == 0 && !state.reset {
                        state = wait(&stream.changed, state);
                    }
                    if state.reset {
                        return;
                    }
                    let take = (n - sent).min(state.send_window as usize);
                    state.send_window -= take as u32;
                    take
                };
                let chunk = &buf[sent..sent + take];
                if self
                    .send(TYPE_DATA, 0, stream.id, take as u32, chunk)
                    .is_err()
                {
                    stream.reset();
                    return;
                }
                sent += take;
            }
        }
    }

    /// Host → local socket, for what could not be written at once.
    fn pump_in(&self, stream: &Stream, mut local: Conn) {
        loop {
            let chunk = {
                let mut state = lock(&stream.state);
                loop {
                    if state.reset {
                        return;
                    }
                    if let Some(chunk) = state.inbound.pop_front() {
                        state.writing = true;
                        break chunk;
                    }
                    if state.remote_fin {
                        drop(state);
                        local.shutdown(Shutdown::Write);
                        return;
                    }
                    state = wait(&stream.changed, state);
                }
            };
            let written = local.write_all(&chunk);
            lock(&stream.state).writing = false;
            if written.is_err() {
                let _ = self.send(TYPE_WINDOW_UPDATE, FLAG_RST, stream.id, 0, &[]);
                stream.reset();
                return;
            }
            if self.delivered(stream, chunk.len() as u32).is_err() {
                stream.reset();
                return;
            }
        }
    }

    /// `n` more bytes reached the local socket: once enough have, the host
    /// may send that many more.
    fn delivered(&self, stream: &Stream, n: u32) -> io::Result<()> {
        let credit = {
            let mut state = lock(&stream.state);
            state.credit += n;
            if state.credit < WINDOW_CREDIT {
                return Ok(());
            }
            let credit = std::mem::take(&mut state.credit);
            state.recv_window += credit;
            credit
        };
        self.send(TYPE_WINDOW_UPDATE, 0, stream.id, credit, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_big_endian_in_yamux_order() {
        assert_eq!(
            header(
                TYPE_WINDOW_UPDATE,
                FLAG_SYN | FLAG_FIN,
                0x0102_0304,
                0x0a0b_0c0d
            ),
            [0, 1, 0, 5, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d]
        );
    }
}
