//! Where the plugin listens: an address the host can dial, bound before the
//! handshake line is printed. Mirrors go-plugin's `serverListener`.
//!
//! - **Unix socket** (go-plugin's choice on Linux, and the default here):
//!   `plugin<random digits>` in `PLUGIN_UNIX_SOCKET_DIR`, else `$TMPDIR`,
//!   else `/tmp`; readable and writable by the owner only, or by the group
//!   `PLUGIN_UNIX_SOCKET_GROUP` names (mode 0660). The file is removed when
//!   the server is dropped. When the path would not fit a socket address
//!   (108 bytes on Linux) or the system has no unix sockets, the plugin
//!   falls back to TCP with a warning, where Go plugins fail.
//! - **TCP** on 127.0.0.1 (never 0.0.0.0): the first free port of
//!   `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT`.

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::env::{PLUGIN_UNIX_SOCKET_DIR, PLUGIN_UNIX_SOCKET_GROUP, PluginEnv, PortRange};
use crate::error::{Error, Result};
use crate::handshake::Network;
use crate::sys;

/// Longest unix socket path Linux accepts (`sun_path` is 108 bytes, NUL included).
const MAX_SOCKET_PATH: usize = 107;

/// Where a plugin (or a brokered server) listens: go-plugin's `net.Addr`,
/// as the handshake line's fields 3 and 4 and `ReattachConfig.Addr` give
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    /// `tcp` or `unix`.
    pub network: Network,
    /// What goes into field 4 of the handshake line: `127.0.0.1:PORT` or
    /// the socket's path.
    pub address: String,
}

impl Addr {
    /// The target a grpcio client dials to reach it:
    /// `unix:/path` or `127.0.0.1:port`.
    pub fn dial_target(&self) -> String {
        match self.network {
            Network::Unix => format!("unix:{}", self.address),
            Network::Tcp => self.address.clone(),
        }
    }
}

/// Which listener to open for what the host dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefer {
    /// A unix socket, falling back to TCP where that cannot work.
    Unix,
    /// TCP only.
    Tcp,
}

/// Removes a unix socket file when dropped.
#[derive(Debug)]
pub(crate) struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Something that can listen on a unix socket path or a TCP address: a
/// gRPC server, or a plain socket ([`RawBind`]) for multiplexing and
/// brokered-dial bridges.
pub(crate) trait Bind {
    /// Listens on the unix socket `path`.
    fn bind_unix(&mut self, path: &Path) -> std::result::Result<(), String>;
    /// Listens on `addr` (port 0: any); the port bound, or `None` when taken.
    fn bind_tcp(&mut self, addr: SocketAddrV4) -> Option<u16>;
}

/// A gRPC server and the AutoMTLS its listeners use (none: plain).
pub(crate) struct GrpcBind<'a> {
    pub(crate) server: &'a mut grpcio::Server,
    pub(crate) tls: Option<&'a crate::tls::AutoMtls>,
}

impl Bind for GrpcBind<'_> {
    fn bind_unix(&mut self, path: &Path) -> std::result::Result<(), String> {
        let target = format!("unix:{}", path.display());
        self.server
            .add_listening_port(target, crate::tls::listener_credentials(self.tls))
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn bind_tcp(&mut self, addr: SocketAddrV4) -> Option<u16> {
        self.server
            .add_listening_port(addr.to_string(), crate::tls::listener_credentials(self.tls))
            .ok()
    }
}

/// A plain listening socket, bound by [`bind`] through [`RawBind`].
#[derive(Debug)]
pub(crate) enum RawListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl RawListener {
    /// Waits for the next connection.
    pub(crate) fn accept(&self) -> io::Result<Conn> {
        Ok(match self {
            RawListener::Unix(l) => Conn::Unix(l.accept()?.0),
            RawListener::Tcp(l) => Conn::Tcp(l.accept()?.0),
        })
    }
}

impl AsRawFd for RawListener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            RawListener::Unix(l) => l.as_raw_fd(),
            RawListener::Tcp(l) => l.as_raw_fd(),
        }
    }
}

/// Collects the plain socket [`bind`] opens.
#[derive(Debug, Default)]
pub(crate) struct RawBind(pub(crate) Option<RawListener>);

impl Bind for RawBind {
    fn bind_unix(&mut self, path: &Path) -> std::result::Result<(), String> {
        self.0 = Some(RawListener::Unix(
            UnixListener::bind(path).map_err(|e| e.to_string())?,
        ));
        Ok(())
    }

    fn bind_tcp(&mut self, addr: SocketAddrV4) -> Option<u16> {
        let listener = TcpListener::bind(addr).ok()?;
        let port = listener.local_addr().ok()?.port();
        self.0 = Some(RawListener::Tcp(listener));
        Some(port)
    }
}

/// A connected stream socket: unix or TCP.
#[derive(Debug)]
pub(crate) enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    /// Connects to `listener`.
    pub(crate) fn connect(listener: &Addr) -> io::Result<Conn> {
        Ok(match listener.network {
            Network::Unix => Conn::Unix(UnixStream::connect(&listener.address)?),
            Network::Tcp => {
                let stream = TcpStream::connect(&listener.address)?;
                stream.set_nodelay(true)?;
                Conn::Tcp(stream)
            }
        })
    }

    /// Another handle on the same socket.
    pub(crate) fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }

    /// Writes what the socket takes without blocking: the count, 0 when
    /// it is full (or an error the next blocking write will report).
    pub(crate) fn try_send(&self, buf: &[u8]) -> io::Result<usize> {
        match sys::send_nonblocking(self.as_raw_fd(), buf) {
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            sent => sent,
        }
    }

    /// Shuts down one or both directions; errors (already closed) are moot.
    pub(crate) fn shutdown(&self, how: std::net::Shutdown) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(how),
            Conn::Tcp(s) => s.shutdown(how),
        };
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
        }
    }
}

impl io::Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl io::Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Binds `binder` as `prefer` asks: a unix socket, or TCP.
pub(crate) fn bind(
    binder: &mut dyn Bind,
    prefer: Prefer,
    env: &PluginEnv,
) -> Result<(Addr, Option<SocketFile>)> {
    if prefer == Prefer::Unix {
        match unix_socket_path(env)? {
            Ok(path) => {
                let (listener, socket) = bind_unix(binder, &path, env)?;
                return Ok((listener, Some(socket)));
            }
            Err(why) => log::warn!("{why}; listening on TCP 127.0.0.1 instead"),
        }
    }
    Ok((bind_tcp(binder, env.port_range()?)?, None))
}

/// Binds `binder` where only the plugin itself connects (the gRPC servers
/// behind multiplexing, brokered-dial bridges): a unix socket when
/// possible, else any free port on 127.0.0.1. `PLUGIN_MIN_PORT` and
/// `PLUGIN_MAX_PORT` are for what the host dials, so they do not apply.
pub(crate) fn bind_local(
    binder: &mut dyn Bind,
    env: &PluginEnv,
) -> Result<(Addr, Option<SocketFile>)> {
    if let Ok(path) = unix_socket_path(env)? {
        let (listener, socket) = bind_unix(binder, &path, env)?;
        return Ok((listener, Some(socket)));
    }
    Ok((bind_tcp(binder, PortRange { min: 0, max: 0 })?, None))
}

/// A fresh socket path, or why a unix socket cannot be used here (then
/// TCP is the fallback).
fn unix_socket_path(env: &PluginEnv) -> Result<std::result::Result<PathBuf, String>> {
    if !unix_sockets_available()? {
        return Ok(Err("this system does not support unix sockets".to_string()));
    }
    let (dir, source) = match (env.get(PLUGIN_UNIX_SOCKET_DIR), env.get("TMPDIR")) {
        (Some(dir), _) if !dir.is_empty() => (PathBuf::from(dir), PLUGIN_UNIX_SOCKET_DIR),
        (_, Some(dir)) if !dir.is_empty() => (PathBuf::from(dir), "TMPDIR"),
        _ => (PathBuf::from("/tmp"), "the default"),
    };
    let dir = if dir.is_relative() {
        std::env::current_dir()
            .map_err(|e| Error::InvalidEnv {
                var: PLUGIN_UNIX_SOCKET_DIR,
                value: dir.display().to_string(),
                reason: format!(
                    "a relative directory needs the working directory, which is unreadable: {e}"
                ),
            })?
            .join(dir)
    } else {
        dir
    };
    let path = dir.join(format!("plugin{}", random_u32()));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Ok(Err(format!(
            "unix socket path {} from {source} is {} bytes, over the limit of {MAX_SOCKET_PATH}",
            path.display(),
            path.as_os_str().len()
        )));
    }
    Ok(Ok(path))
}

fn bind_unix(binder: &mut dyn Bind, path: &Path, env: &PluginEnv) -> Result<(Addr, SocketFile)> {
    let address = path.to_string_lossy().into_owned();
    // Resolve the group first: an unknown group must not leave a socket behind.
    let group = match env.get(PLUGIN_UNIX_SOCKET_GROUP).filter(|g| !g.is_empty()) {
        Some(group) => Some(group_id(group)?),
        None => None,
    };
    binder.bind_unix(path).map_err(|e| Error::Bind {
        address: address.clone(),
        reason: format!("{e}; check that the directory exists and is writable (set by {PLUGIN_UNIX_SOCKET_DIR} or TMPDIR)"),
    })?;
    // Removes the file again if a step below fails.
    let socket = SocketFile(path.to_path_buf());
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| Error::Bind {
                address: address.clone(),
                reason: format!(
                    "cannot give the socket to group {gid} ({PLUGIN_UNIX_SOCKET_GROUP}): {e}"
                ),
            })?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        Error::Bind {
            address: address.clone(),
            reason: format!("cannot set the socket's mode to {mode:o}: {e}"),
        }
    })?;
    Ok((
        Addr {
            network: Network::Unix,
            address,
        },
        socket,
    ))
}

/// Binds the first free port of `range` on 127.0.0.1, as go-plugin does.
/// Port 0 means an OS-assigned port.
///
/// gRPC turns `SO_REUSEPORT` on by default; the server must be built with it
/// off (see `server.rs`), so that a successful bind means the port is ours
/// alone. Each port is first probed with a plain socket, which keeps gRPC
/// from logging an error for every busy port of a wide range.
fn bind_tcp(binder: &mut dyn Bind, range: PortRange) -> Result<Addr> {
    for port in range.min..=range.max {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        match TcpListener::bind(addr) {
            Err(err) => {
                if let Some(err) = out_of_descriptors(&addr.to_string(), &err) {
                    return Err(err);
                }
                if port != 0 {
                    continue;
                }
            }
            Ok(probe) => drop(probe),
        }
        // The probe is closed again; gRPC can still lose a race for the
        // port to another process, and then the next port is tried.
        if let Some(bound) = binder.bind_tcp(addr) {
            return Ok(Addr {
                network: Network::Tcp,
                address: SocketAddrV4::new(Ipv4Addr::LOCALHOST, bound).to_string(),
            });
        }
    }
    Err(Error::NoPortAvailable {
        min: range.min,
        max: range.max,
    })
}

/// Whether the system has unix sockets: a socket of the family, opened and
/// closed again at once. Out of descriptors is an error, not a "no".
fn unix_sockets_available() -> Result<bool> {
    match std::os::unix::net::UnixDatagram::unbound() {
        Ok(_) => Ok(true),
        Err(err) => match out_of_descriptors("a unix socket", &err) {
            Some(err) => Err(err),
            None => Ok(false),
        },
    }
}

/// The error for `err` when it says the process (EMFILE) or the system
/// (ENFILE) has no file descriptor left: no other address would do better.
fn out_of_descriptors(address: &str, err: &io::Error) -> Option<Error> {
    let reason = match err.raw_os_error()? {
        libc::EMFILE => {
            "the plugin has no file descriptor left (EMFILE): raise its limit \
             (ulimit -n, RLIMIT_NOFILE) or close descriptors it inherits"
        }
        libc::ENFILE => {
            "the system has no file descriptor left (ENFILE): raise fs.file-max \
             or stop what holds them"
        }
        _ => return None,
    };
    Some(Error::Bind {
        address: address.to_string(),
        reason: reason.to_string(),
    })
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    crate::tls::fill_random(&mut bytes);
    u32::from_ne_bytes(bytes)
}

/// A group given by name or number, as go-plugin accepts it.
fn group_id(group: &str) -> Result<libc::gid_t> {
    if let Ok(gid) = group.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let unknown = |reason: String| Error::InvalidEnv {
        var: PLUGIN_UNIX_SOCKET_GROUP,
        value: group.to_string(),
        reason,
    };
    let name = CString::new(group).map_err(|_| unknown("contains a NUL byte".to_string()))?;
    sys::group_id(&name)
        .ok_or_else(|| unknown("no such group (give a group name or a numeric gid)".to_string()))
}
