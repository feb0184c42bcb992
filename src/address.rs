//! Addresses from the other side (the handshake line's field 4, a
//! reattach configuration, a broker announcement), parsed here, never
//! handed to gRPC's target parser as they are: a plugin could otherwise
//! make its host dial another socket (`unix:/other.sock`), an abstract
//! socket, a list of addresses, or resolve a name through a DNS server of
//! its choosing (`dns://attacker/name:1`). As go-plugin does
//! (`net.ResolveTCPAddr`, a unix path), a `tcp` address is `IP:PORT` and a
//! `unix` address an absolute path; a TCP address off this machine is
//! refused unless the host allows it.

use std::net::{IpAddr, SocketAddr};

/// Whether a TCP address off this machine (not loopback) may be dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Loopback and unix sockets only: every plugin this host starts.
    Local,
    /// Any IP address: a plugin the host was told to reattach to elsewhere.
    Anywhere,
}

/// The gRPC target for `address` on `network` (`tcp` or `unix`):
/// `ipv4:IP:PORT`, `ipv6:[IP]:PORT` or `unix:/PATH`, or why it is refused.
pub(crate) fn dial_target(network: &str, address: &str, reach: Reach) -> Result<String, String> {
    if address.chars().any(char::is_control) {
        return Err(format!(
            "the address {} has control characters",
            escape(address)
        ));
    }
    match network {
        "tcp" => {
            let socket: SocketAddr = address.parse().map_err(|_| {
                format!(
                    "address {}: a tcp address is IP:PORT, such as 127.0.0.1:1234 or [::1]:1234 \
                     (no host name, no gRPC target scheme)",
                    escape(address)
                )
            })?;
            if socket.port() == 0 {
                return Err(format!("address {}: port 0", escape(address)));
            }
            if reach == Reach::Local && !socket.ip().is_loopback() {
                return Err(format!(
                    "address {}: not on this machine (a loopback address): refused; a host \
                     that reattaches to a plugin elsewhere allows it with \
                     ClientBuilder::allow_remote(true)",
                    escape(address)
                ));
            }
            Ok(match socket.ip() {
                IpAddr::V4(ip) => format!("ipv4:{ip}:{}", socket.port()),
                IpAddr::V6(ip) => format!("ipv6:[{ip}]:{}", socket.port()),
            })
        }
        "unix" => {
            if !address.starts_with('/') {
                return Err(format!(
                    "address {}: a unix address is an absolute path, such as /tmp/plugin123",
                    escape(address)
                ));
            }
            Ok(format!("unix:{address}"))
        }
        other => Err(format!(
            "Unknown address type: {} (for address {}): a plugin listens on \"unix\" or \"tcp\"",
            escape(other),
            escape(address)
        )),
    }
}

/// `text` quoted, with control characters and other non-printing ones
/// escaped (`\u{1b}`): what the other side sent, safe to show in an error,
/// a log or a terminal.
pub(crate) fn escape(text: &str) -> String {
    format!("{text:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_and_absolute_paths_are_dialled_as_themselves() {
        assert_eq!(
            dial_target("tcp", "127.0.0.1:1234", Reach::Local),
            Ok("ipv4:127.0.0.1:1234".into())
        );
        assert_eq!(
            dial_target("tcp", "[::1]:1234", Reach::Local),
            Ok("ipv6:[::1]:1234".into())
        );
        assert_eq!(
            dial_target("unix", "/tmp/plugin123", Reach::Local),
            Ok("unix:/tmp/plugin123".into())
        );
        assert_eq!(
            dial_target("tcp", "10.1.2.3:80", Reach::Anywhere),
            Ok("ipv4:10.1.2.3:80".into())
        );
    }

    #[test]
    fn targets_of_grpcs_own_syntax_are_refused() {
        for (network, address) in [
            ("tcp", "unix:/some/other.sock"),
            ("tcp", "unix-abstract:x"),
            ("tcp", "ipv4:127.0.0.1:1,127.0.0.1:2"),
            ("tcp", "dns://127.0.0.1:5353/attacker-chosen.test:1234"),
            ("tcp", "localhost:1234"),
            ("tcp", "127.0.0.1"),
            ("tcp", "127.0.0.1:0"),
            ("unix", "unix:/tmp/x"),
            ("unix", "relative/path"),
            ("unix", "/tmp/a\u{1b}[31m"),
            ("udp", "127.0.0.1:1"),
        ] {
            let refused = dial_target(network, address, Reach::Local);
            assert!(refused.is_err(), "{network}|{address}: {refused:?}");
            assert!(
                !refused.unwrap_err().contains('\u{1b}'),
                "control characters are escaped"
            );
        }
    }

    #[test]
    fn addresses_off_this_machine_need_the_hosts_consent() {
        let refused = dial_target("tcp", "192.0.2.1:1234", Reach::Local).unwrap_err();
        assert!(refused.contains("allow_remote"), "{refused}");
        assert!(dial_target("tcp", "[2001:db8::1]:1234", Reach::Local).is_err());
    }
}
