//! The handshake: the plugin's half of go-plugin's start-up contract.
//!
//! A host starts the plugin with a magic cookie and the app protocol versions
//! it speaks in the environment, then reads exactly one line from the
//! plugin's stdout:
//!
//! ```text
//! CORE|APP|NETWORK|ADDRESS|PROTOCOL[|SERVERCERT[|MUX]]
//! 1|1|tcp|127.0.0.1:10000|grpc
//! ```
//!
//! [`HandshakeLine`] is the only code that writes that line. Mirrors
//! go-plugin's `server.go` (`Serve`, `protocolVersion`).

use std::collections::BTreeSet;
use std::fmt;

/// go-plugin's core protocol version: field 1 of every handshake line.
///
/// A host refuses any other value ("incompatible core API version").
pub const CORE_PROTOCOL_VERSION: u32 = 1;

/// What the plugin and its host agree on at compile time, as go-plugin's
/// `plugin.HandshakeConfig`.
///
/// Declare it as a `const` next to the service definition; the host uses
/// the same three values.
///
/// ```
/// use goplugin::HandshakeConfig;
///
/// /// go-plugin's KV example.
/// const HANDSHAKE: HandshakeConfig = HandshakeConfig {
///     protocol_version: 1,
///     magic_cookie_key: "BASIC_PLUGIN",
///     magic_cookie_value: "hello",
/// };
/// # let _ = HANDSHAKE;
/// ```
///
/// The strings are `&'static str` by default, for the `const` above; a
/// host or plugin that reads its cookie at run time gives owned ones
/// (`HandshakeConfig<String>`, made the same way), and every builder takes
/// either:
///
/// ```
/// use goplugin::HandshakeConfig;
///
/// let cookie = std::env::var("MY_COOKIE").unwrap_or_else(|_| "hello".to_string());
/// let handshake = HandshakeConfig {
///     protocol_version: 1,
///     magic_cookie_key: "BASIC_PLUGIN".to_string(),
///     magic_cookie_value: cookie,
/// };
/// let _builder = goplugin::Client::builder(handshake);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeConfig<S = &'static str> {
    /// The application protocol version the plugin's services implement
    /// (field 2 of the handshake line). Services added with
    /// [`PluginServerBuilder::service`](crate::PluginServerBuilder::service)
    /// serve this version.
    pub protocol_version: u32,
    /// Name of the environment variable the host sets to prove it started
    /// the plugin.
    pub magic_cookie_key: S,
    /// The value the host puts in `magic_cookie_key`.
    pub magic_cookie_value: S,
}

impl<S: AsRef<str>> HandshakeConfig<S> {
    /// The same configuration with owned strings: what the builders keep.
    pub(crate) fn owned(&self) -> HandshakeConfig<String> {
        HandshakeConfig {
            protocol_version: self.protocol_version,
            magic_cookie_key: self.magic_cookie_key.as_ref().to_string(),
            magic_cookie_value: self.magic_cookie_value.as_ref().to_string(),
        }
    }
}

/// How the host reaches the plugin (field 3 of the handshake line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// A TCP address such as `127.0.0.1:10000`.
    Tcp,
    /// A unix socket path.
    Unix,
}

impl Network {
    /// The word go-plugin uses for this network: `tcp` or `unix`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Network::Tcp => "tcp",
            Network::Unix => "unix",
        }
    }
}

/// The single line a plugin prints on stdout once it is listening.
///
/// Its [`Display`](fmt::Display) output is the exact line, without the
/// trailing newline.
///
/// The optional fields follow go-plugin's compatibility rules:
/// - field 6 (the server certificate) is written only when the host sent
///   `PLUGIN_CLIENT_CERT`: a host that did not ask for TLS panics on a
///   certificate;
/// - field 7 (multiplexing) is written only when the host set
///   `PLUGIN_MULTIPLEX_GRPC`: go-plugin 1.0.1 splits the line into at most
///   six fields and would glue a seventh onto the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeLine {
    /// Negotiated app protocol version (field 2).
    pub app_protocol_version: u32,
    /// Network of the listener (field 3).
    pub network: Network,
    /// Address of the listener: `host:port` or a socket path (field 4).
    pub address: String,
    /// Base64 (standard alphabet, no padding) DER of the plugin's TLS
    /// certificate (field 6), only under AutoMTLS.
    pub server_cert: Option<String>,
    /// Whether the plugin supports multiplexing (field 7), only when the
    /// host set `PLUGIN_MULTIPLEX_GRPC`; goplugin always says `true`, as Go
    /// plugins built on go-plugin 1.6+ do.
    pub multiplex: Option<bool>,
}

impl fmt::Display for HandshakeLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{CORE_PROTOCOL_VERSION}|{}|{}|{}|grpc",
            self.app_protocol_version,
            self.network.as_str(),
            self.address
        )?;
        if self.server_cert.is_some() || self.multiplex.is_some() {
            write!(f, "|{}", self.server_cert.as_deref().unwrap_or(""))?;
        }
        if let Some(multiplex) = self.multiplex {
            write!(f, "|{multiplex}")?;
        }
        Ok(())
    }
}

/// Why a host refuses a plugin's handshake line
/// ([`HandshakeLine::parse`]). The message is go-plugin's own wording where
/// go-plugin has one, followed by what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseHandshakeError(String);

impl fmt::Display for ParseHandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseHandshakeError {}

impl HandshakeLine {
    /// Parses the first line a plugin printed, as a go-plugin host does
    /// (`client.go` `Start`): white space around the line is trimmed, the
    /// fields are split on every `|`, field 6 is a certificate only when
    /// longer than 50 characters, and field 7 is `true` or not. The app
    /// protocol version is not checked here: that takes the host's
    /// versions.
    ///
    /// ```
    /// use goplugin::{HandshakeLine, Network};
    ///
    /// let line = HandshakeLine::parse("1|1|unix|/tmp/plugin42|grpc|\n")?;
    /// assert_eq!(line.network, Network::Unix);
    /// assert_eq!(line.address, "/tmp/plugin42");
    /// assert_eq!(line.server_cert, None);
    /// assert!(HandshakeLine::parse("listening on port 1234").is_err());
    /// # Ok::<(), goplugin::ParseHandshakeError>(())
    /// ```
    pub fn parse(line: &str) -> Result<HandshakeLine, ParseHandshakeError> {
        let line = line.trim();
        let fail = |message: String| Err(ParseHandshakeError(message));
        let fields: Vec<&str> = line.split('|').collect();
        if fields.len() < 4 {
            return fail(format!(
                "Unrecognized remote plugin message: {}\nThis usually means that the \
                 plugin is not a go-plugin plugin for this host, or that it printed \
                 something on stdout before its handshake line (logs belong on stderr)",
                crate::error::printable(line)
            ));
        }
        match fields[0].parse::<u32>() {
            Ok(CORE_PROTOCOL_VERSION) => {}
            Ok(other) => {
                return fail(format!(
                    "incompatible core API version with plugin. Plugin version: {other}, \
                     Core version: {CORE_PROTOCOL_VERSION}\nTo fix this, the plugin usually \
                     only needs to be recompiled with a current go-plugin library"
                ));
            }
            Err(err) => {
                return fail(format!(
                    "error parsing core protocol version {:?}: {err}",
                    fields[0]
                ));
            }
        }
        let app_protocol_version = match fields[1].parse::<u32>() {
            Ok(version) => version,
            Err(err) => {
                return fail(format!(
                    "error parsing protocol version {:?}: {err}",
                    fields[1]
                ));
            }
        };
        let network = match fields[2] {
            "unix" => Network::Unix,
            "tcp" => Network::Tcp,
            other => {
                return fail(format!(
                    "unknown address type: {other:?} (for address {:?}); a plugin listens on \
                     \"unix\" or \"tcp\"",
                    fields[3]
                ));
            }
        };
        let address = fields[3].to_string();
        if address.is_empty() {
            return fail("the plugin advertised an empty address".to_string());
        }
        if address.chars().any(char::is_control) {
            return fail(format!(
                "the plugin advertised an address with control characters: {address:?}"
            ));
        }
        // go-plugin: no fifth field means net/rpc.
        match fields.get(4).copied().unwrap_or("netrpc") {
            "grpc" => {}
            "netrpc" => {
                return fail(
                    "unsupported plugin protocol \"netrpc\". Supported: [grpc]: the plugin \
                     serves go-plugin's net/rpc protocol, and goplugin's host speaks gRPC only"
                        .to_string(),
                );
            }
            other => {
                return fail(format!(
                    "unsupported plugin protocol {other:?}. Supported: [grpc]"
                ));
            }
        }
        let server_cert = match fields.get(5) {
            Some(cert) if cert.len() > 50 => {
                use base64::Engine as _;
                if let Err(err) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(cert) {
                    return fail(format!(
                        "error parsing server cert: {err} (field 6 must be the certificate's \
                         DER in standard base64 without padding)"
                    ));
                }
                Some((*cert).to_string())
            }
            _ => None,
        };
        Ok(HandshakeLine {
            app_protocol_version,
            network,
            address,
            server_cert,
            multiplex: fields.get(6).map(|field| *field == "true"),
        })
    }
}

/// The app protocol versions a host offered in `PLUGIN_PROTOCOL_VERSIONS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HostVersions {
    /// Versions that parsed, in the host's order.
    pub(crate) versions: Vec<u32>,
    /// Entries that are not versions; go-plugin skips them with a warning.
    pub(crate) invalid: Vec<String>,
}

impl HostVersions {
    /// Parses the value of `PLUGIN_PROTOCOL_VERSIONS`: versions joined by
    /// `,`. Whitespace around an entry is tolerated; empty entries are
    /// ignored; anything else that is not a number is kept in
    /// [`invalid`](Self::invalid).
    pub(crate) fn parse(value: &str) -> HostVersions {
        let mut parsed = HostVersions::default();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry.parse::<u32>() {
                Ok(v) => parsed.versions.push(v),
                Err(_) => parsed.invalid.push(entry.to_string()),
            }
        }
        parsed
    }
}

/// Picks the app protocol version to serve, as go-plugin's `Serve` does.
///
/// Returns the highest version in both sets. Without a common version (or
/// without any host versions) it returns the plugin's lowest version, so
/// that the host can report the mismatch itself ("incompatible API version
/// with plugin"). Returns `None` only when `plugin` is empty.
pub(crate) fn negotiate_version(plugin: &BTreeSet<u32>, host: &[u32]) -> Option<u32> {
    plugin
        .iter()
        .rev()
        .find(|v| host.contains(v))
        .or_else(|| plugin.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(network: Network, address: &str) -> HandshakeLine {
        HandshakeLine {
            app_protocol_version: 1,
            network,
            address: address.to_string(),
            server_cert: None,
            multiplex: None,
        }
    }

    #[test]
    fn handshake_line_fields() {
        let cases: &[(HandshakeLine, &str)] = &[
            (
                line(Network::Tcp, "127.0.0.1:1234"),
                "1|1|tcp|127.0.0.1:1234|grpc",
            ),
            (
                line(Network::Unix, "/tmp/plugin42"),
                "1|1|unix|/tmp/plugin42|grpc",
            ),
            (
                HandshakeLine {
                    app_protocol_version: 7,
                    ..line(Network::Tcp, "127.0.0.1:9")
                },
                "1|7|tcp|127.0.0.1:9|grpc",
            ),
            (
                HandshakeLine {
                    server_cert: Some("MIIB".into()),
                    ..line(Network::Tcp, "127.0.0.1:9")
                },
                "1|1|tcp|127.0.0.1:9|grpc|MIIB",
            ),
            (
                HandshakeLine {
                    multiplex: Some(false),
                    ..line(Network::Tcp, "127.0.0.1:9")
                },
                "1|1|tcp|127.0.0.1:9|grpc||false",
            ),
            (
                HandshakeLine {
                    server_cert: Some("MIIB".into()),
                    multiplex: Some(true),
                    ..line(Network::Unix, "/s")
                },
                "1|1|unix|/s|grpc|MIIB|true",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(line.to_string(), *want, "{line:?}");
        }
    }

    #[test]
    fn lines_parse_as_a_go_plugin_host_reads_them() {
        let cert = "A".repeat(64);
        for (text, want) in [
            (
                "1|1|unix|/tmp/plugin1|grpc|",
                line(Network::Unix, "/tmp/plugin1"),
            ),
            (
                "1|1|tcp|127.0.0.1:1234|grpc\r\n",
                line(Network::Tcp, "127.0.0.1:1234"),
            ),
            (
                "  1|1|tcp|127.0.0.1:1|grpc|short  ",
                line(Network::Tcp, "127.0.0.1:1"),
            ),
            (
                &*format!("1|3|unix|/s|grpc|{cert}"),
                HandshakeLine {
                    app_protocol_version: 3,
                    server_cert: Some(cert.clone()),
                    ..line(Network::Unix, "/s")
                },
            ),
            (
                "1|1|unix|/s|grpc||false",
                HandshakeLine {
                    multiplex: Some(false),
                    ..line(Network::Unix, "/s")
                },
            ),
        ] {
            assert_eq!(HandshakeLine::parse(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        for (text, says) in [
            ("", "Unrecognized remote plugin message"),
            (
                "Starting plugin on :1234",
                "Unrecognized remote plugin message",
            ),
            ("2|1|unix|/s|grpc", "incompatible core API version"),
            ("x|1|unix|/s|grpc", "error parsing core protocol version"),
            ("1|one|unix|/s|grpc", "error parsing protocol version"),
            ("1|1|udp|/s|grpc", "unknown address type"),
            ("1|1|unix||grpc", "empty address"),
            ("1|1|unix|/s\0x|grpc", "control characters"),
            ("1|1|unix|/s", "gRPC only"),
            ("1|1|unix|/s|netrpc", "gRPC only"),
            ("1|1|unix|/s|", "unsupported plugin protocol \"\""),
            (
                &*format!("1|1|unix|/s|grpc|{}==", "A".repeat(60)),
                "error parsing server cert",
            ),
        ] {
            let err = HandshakeLine::parse(text).expect_err(text).to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn printed_lines_parse_back(
            version in proptest::prelude::any::<u32>(),
            tcp in proptest::prelude::any::<bool>(),
            address in "[a-zA-Z0-9/._:-]{1,40}",
            cert in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 40..80)),
            multiplex in proptest::option::of(proptest::prelude::any::<bool>()),
        ) {
            use base64::Engine as _;
            let cert = cert.map(|der| base64::engine::general_purpose::STANDARD_NO_PAD.encode(der));
            let printed = HandshakeLine {
                app_protocol_version: version,
                network: if tcp { Network::Tcp } else { Network::Unix },
                address,
                server_cert: cert,
                multiplex,
            };
            proptest::prop_assert_eq!(HandshakeLine::parse(&printed.to_string()), Ok(printed));
        }

        #[test]
        fn any_line_parses_or_fails_without_panicking(text in "\\PC*") {
            let _ = HandshakeLine::parse(&text);
        }
    }

    #[test]
    fn host_versions_parse() {
        let cases: &[(&str, &[u32], &[&str])] = &[
            ("1", &[1], &[]),
            ("1,2,3", &[1, 2, 3], &[]),
            ("3,1,2", &[3, 1, 2], &[]),
            ("", &[], &[]),
            ("1,,2", &[1, 2], &[]),
            (" 2 , 4", &[2, 4], &[]),
            ("1,x,2", &[1, 2], &["x"]),
            ("-1,2", &[2], &["-1"]),
            ("1.5,99999999999", &[], &["1.5", "99999999999"]),
        ];
        for (value, versions, invalid) in cases {
            let parsed = HostVersions::parse(value);
            assert_eq!(parsed.versions, *versions, "{value:?}");
            assert_eq!(parsed.invalid, *invalid, "{value:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn joined_versions_parse_back(versions in proptest::collection::vec(proptest::prelude::any::<u32>(), 0..8)) {
            let joined = versions.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let parsed = HostVersions::parse(&joined);
            proptest::prop_assert_eq!(parsed.versions, versions);
            proptest::prop_assert!(parsed.invalid.is_empty());
        }

        #[test]
        fn any_text_parses_without_panicking(value in "\\PC*") {
            let parsed = HostVersions::parse(&value);
            let entries = value.split(',').filter(|e| !e.trim().is_empty()).count();
            proptest::prop_assert_eq!(parsed.versions.len() + parsed.invalid.len(), entries);
        }

        #[test]
        fn negotiation_picks_the_highest_common_or_the_lowest(
            plugin in proptest::collection::btree_set(0u32..20, 1..6),
            host in proptest::collection::vec(0u32..20, 0..6),
        ) {
            let picked = negotiate_version(&plugin, &host).expect("plugin set is not empty");
            proptest::prop_assert!(plugin.contains(&picked));
            match plugin.iter().filter(|v| host.contains(v)).max() {
                Some(best) => proptest::prop_assert_eq!(picked, *best),
                None => proptest::prop_assert_eq!(Some(&picked), plugin.first()),
            }
        }
    }

    #[test]
    fn negotiation() {
        let cases: &[(&[u32], &[u32], Option<u32>)] = &[
            (&[1], &[1], Some(1)),
            (&[1, 2, 3], &[2, 1], Some(2)),
            (&[1, 2, 3], &[3, 1, 2], Some(3)),
            (&[1, 2], &[5, 6], Some(1)),
            (&[4, 2], &[], Some(2)),
            (&[2, 5], &[1, 5, 2], Some(5)),
            (&[], &[1], None),
        ];
        for (plugin, host, want) in cases {
            let plugin: BTreeSet<u32> = plugin.iter().copied().collect();
            assert_eq!(
                negotiate_version(&plugin, host),
                *want,
                "plugin {plugin:?} host {host:?}"
            );
        }
    }
}
