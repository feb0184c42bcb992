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
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::env::{PLUGIN_UNIX_SOCKET_DIR, PLUGIN_UNIX_SOCKET_GROUP, PluginEnv, PortRange};
use crate::error::{Error, Result};
use crate::handshake::Network;

/// Longest unix socket path Linux accepts (`sun_path` is 108 bytes, NUL included).
const MAX_SOCKET_PATH: usize = 107;

/// A listening address the gRPC server owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// `tcp` or `unix`.
    pub network: Network,
    /// What goes into field 4 of the handshake line: `127.0.0.1:PORT` or
    /// the socket's path.
    pub address: String,
}

impl Listener {
    /// The address a grpcio client dials to reach this listener:
    /// `unix:/path` or `127.0.0.1:port`.
    pub fn dial_target(&self) -> String {
        match self.network {
            Network::Unix => format!("unix:{}", self.address),
            Network::Tcp => self.address.clone(),
        }
    }
}

/// Which listener to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
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

/// Binds `server` as `transport` asks, with `creds` (plain or TLS).
pub(crate) fn bind(
    server: &mut grpcio::Server,
    transport: Transport,
    env: &PluginEnv,
    creds: &dyn Fn() -> grpcio::ServerCredentials,
) -> Result<(Listener, Option<SocketFile>)> {
    if transport == Transport::Unix {
        match unix_socket_path(env)? {
            Ok(path) => {
                let (listener, socket) = bind_unix(server, &path, env, creds)?;
                return Ok((listener, Some(socket)));
            }
            Err(why) => log::warn!("{why}; listening on TCP 127.0.0.1 instead"),
        }
    }
    Ok((bind_tcp(server, env.port_range()?, creds)?, None))
}

/// A fresh socket path, or why a unix socket cannot be used here (then
/// TCP is the fallback).
fn unix_socket_path(env: &PluginEnv) -> Result<std::result::Result<PathBuf, String>> {
    if !unix_sockets_available() {
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

fn bind_unix(
    server: &mut grpcio::Server,
    path: &Path,
    env: &PluginEnv,
    creds: &dyn Fn() -> grpcio::ServerCredentials,
) -> Result<(Listener, SocketFile)> {
    let address = path.to_string_lossy().into_owned();
    // Resolve the group first: an unknown group must not leave a socket behind.
    let group = match env.get(PLUGIN_UNIX_SOCKET_GROUP).filter(|g| !g.is_empty()) {
        Some(group) => Some(group_id(group)?),
        None => None,
    };
    server.add_listening_port(format!("unix:{address}"), creds()).map_err(|e| Error::Bind {
        address: address.clone(),
        reason: format!("{e}; check that the directory exists and is writable (set by {PLUGIN_UNIX_SOCKET_DIR} or TMPDIR)"),
    })?;
    // Removes the file again if a step below fails.
    let socket = SocketFile(path.to_path_buf());
    let mode = match group {
        Some(gid) => {
            chown_group(path, gid).map_err(|e| Error::Bind {
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
        Listener {
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
fn bind_tcp(
    server: &mut grpcio::Server,
    range: PortRange,
    creds: &dyn Fn() -> grpcio::ServerCredentials,
) -> Result<Listener> {
    for port in range.min..=range.max {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        if port != 0 && TcpListener::bind(addr).is_err() {
            continue;
        }
        // The probe is closed again; gRPC can still lose a race for the
        // port to another process, and then the next port is tried.
        if let Ok(bound) = server.add_listening_port(addr.to_string(), creds()) {
            return Ok(Listener {
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

fn unix_sockets_available() -> bool {
    // SAFETY: socket(2) with constant arguments; the descriptor is closed at once.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        libc::close(fd);
    }
    true
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
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer refers to live, correctly sized storage owned here.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(unknown(
            "no such group (give a group name or a numeric gid)".to_string(),
        ));
    }
    Ok(entry.gr_gid)
}

fn chown_group(path: &Path, gid: libc::gid_t) -> std::io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `path` is NUL-terminated; uid -1 leaves the owner unchanged.
    if unsafe { libc::chown(path.as_ptr(), libc::uid_t::MAX, gid) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
