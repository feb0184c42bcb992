//! go-plugin's gRPC muxer, plugin side (go-plugin's `internal/grpcmux`):
//! when the host multiplexes (`PLUGIN_MULTIPLEX_GRPC=true`, go-plugin 1.6+)
//! every gRPC connection between host and plugin, the main one and the
//! brokered ones, is a [`yamux`](crate::yamux) stream over the one
//! connection the host opens, and a *knock* on the broker stream says which
//! brokered server the next stream is for.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;

use crate::listener::{Addr, RawListener};
use crate::locks::{lock, wait_for};
use crate::yamux::Session;

/// The plugin side of go-plugin's gRPC muxer: which local gRPC server each
/// stream the host opens belongs to.
///
/// The first stream, and any stream without a knock before it, goes to the
/// main server (the host's main connection and its reconnects). A host that
/// dials a brokered id first knocks on the broker stream; the plugin
/// acknowledges with [`accept_knock`](Self::accept_knock), and the next
/// stream the host opens goes to that id's server.
pub(crate) struct Muxer {
    main: Addr,
    brokered: Mutex<HashMap<u32, Addr>>,
    registered: Condvar,
    knocks: Mutex<VecDeque<u32>>,
    session: OnceLock<Session>,
    accepting: Mutex<Accepting>,
}

/// The wait for the host's connection.
#[derive(Default)]
struct Accepting {
    /// The public listener's descriptor while a thread waits on it.
    fd: Option<i32>,
    closed: bool,
}

impl Muxer {
    /// A muxer whose default server listens at `main`.
    pub(crate) fn new(main: Addr) -> Arc<Muxer> {
        Arc::new(Muxer {
            main,
            brokered: Mutex::new(HashMap::new()),
            registered: Condvar::new(),
            knocks: Mutex::new(VecDeque::new()),
            session: OnceLock::new(),
            accepting: Mutex::new(Accepting::default()),
        })
    }

    /// Waits on a thread for the host's one connection on `public`, then
    /// serves the session on it; `on_close` runs when the session ends.
    pub(crate) fn start(
        self: &Arc<Muxer>,
        public: RawListener,
        on_close: Box<dyn FnOnce() + Send>,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        lock(&self.accepting).fd = Some(public.as_raw_fd());
        let muxer = Arc::clone(self);
        thread::Builder::new()
            .name("goplugin-mux-accept".into())
            .spawn(move || muxer.accept_host(public, on_close))?;
        Ok(())
    }

    fn accept_host(self: Arc<Muxer>, public: RawListener, on_close: Box<dyn FnOnce() + Send>) {
        let accepted = public.accept();
        let mut accepting = lock(&self.accepting);
        accepting.fd = None;
        // Only the first connection is the host's; later ones are refused
        // from here on.
        drop(public);
        let conn = match accepted {
            Ok(conn) if !accepting.closed => conn,
            Ok(_) => return on_close(),
            Err(err) => {
                log::debug!("no multiplexed connection from the host: {err}");
                return on_close();
            }
        };
        // The session holds the router, the router only a weak muxer: no
        // cycle keeps the connection alive after both are dropped.
        let muxer = Arc::downgrade(&self);
        let router = Box::new(move || muxer.upgrade().map(|muxer| muxer.route()));
        match Session::serve(conn, router, on_close) {
            // Set under `accepting`: a `close` from now on finds it.
            Ok(session) => {
                let _ = self.session.set(session);
            }
            Err(err) => log::error!("cannot serve the multiplexed connection: {err}"),
        }
    }

    /// The session, once the host has connected.
    pub(crate) fn session(&self) -> Option<&Session> {
        self.session.get()
    }

    /// Makes `listener` the server for brokered `id`.
    pub(crate) fn register(&self, id: u32, listener: Addr) {
        lock(&self.brokered).insert(id, listener);
        self.registered.notify_all();
    }

    /// The host knocked for `id`: its next stream goes to that id's server.
    /// Like a Go plugin, a knock for an id not served yet waits up to
    /// `patience` for it (hosts send an id while they start serving it).
    /// The error is what the acknowledgement tells the host.
    pub(crate) fn accept_knock(
        &self,
        id: u32,
        patience: std::time::Duration,
    ) -> Result<(), String> {
        let deadline = std::time::Instant::now() + patience;
        wait_for(&self.brokered, &self.registered, deadline, |brokered| {
            brokered.contains_key(&id).then_some(())
        })
        .ok_or_else(|| format!("the plugin serves nothing on broker id {id}"))?;
        lock(&self.knocks).push_back(id);
        Ok(())
    }

    fn route(&self) -> Addr {
        let knocked = lock(&self.knocks).pop_front();
        knocked
            .and_then(|id| lock(&self.brokered).get(&id).cloned())
            .unwrap_or_else(|| self.main.clone())
    }

    /// Stops waiting for the host and ends the session.
    pub(crate) fn close(&self) {
        let mut accepting = lock(&self.accepting);
        accepting.closed = true;
        if let Some(fd) = accepting.fd.take() {
            // The public listener's descriptor is open while `accepting.fd`
            // holds it (the accepting thread clears it, under this lock,
            // before closing it); shutdown wakes the blocked accept.
            crate::sys::shutdown_socket(fd);
        }
        drop(accepting);
        self.registered.notify_all();
        if let Some(session) = self.session.get() {
            session.close();
        }
    }
}
