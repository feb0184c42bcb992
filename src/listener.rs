//! Where the plugin listens: an address the host can dial, bound before the
//! handshake line is printed.
//!
//! Today this is TCP on 127.0.0.1 within `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT`,
//! as go-plugin's `serverListener_tcp`. A unix-socket listener (go-plugin's
//! default on Linux) slots in as another [`Listener`] kind.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

use crate::env::PortRange;
use crate::error::{Error, Result};
use crate::handshake::Network;

/// A listening address the gRPC server owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// `tcp` or `unix`.
    pub network: Network,
    /// What goes into field 4 of the handshake line.
    pub address: String,
}

/// Binds the server to the first free port of `range` on 127.0.0.1 (never
/// 0.0.0.0), as go-plugin does. Port 0 means an OS-assigned port.
///
/// gRPC turns `SO_REUSEPORT` on by default; the server must be built with it
/// off (see `server.rs`), so that a successful bind means the port is ours
/// alone. Each port is first probed with a plain socket, which keeps gRPC
/// from logging an error for every busy port of a wide range.
pub(crate) fn bind_tcp(server: &mut grpcio::Server, range: PortRange) -> Result<Listener> {
    for port in range.min..=range.max {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        if port != 0 && TcpListener::bind(addr).is_err() {
            continue;
        }
        // The probe is closed again; gRPC can still lose a race for the
        // port to another process, and then the next port is tried.
        if let Ok(bound) =
            server.add_listening_port(addr.to_string(), grpcio::ServerCredentials::insecure())
        {
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
