//! The crate's error type.

use std::io;

/// Everything that can stop a plugin from starting or serving, or a host
/// from starting or using a plugin.
///
/// Messages name the environment variable and the value at fault, so the
/// person reading them knows what to change. The wrapped [`grpcio::Error`]
/// belongs to grpcio 0.x and is not covered by this crate's semver promise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The magic cookie environment variable is missing or has another
    /// value: the binary was not started by its go-plugin host.
    ///
    /// The message is go-plugin's own text, so users recognise it.
    #[error(
        "This binary is a plugin. These are not meant to be executed directly.\n\
         Please execute the program that consumes these plugins, which will\n\
         load any plugins automatically"
    )]
    NotLaunchedByHost {
        /// The name of the cookie variable that was checked.
        cookie_key: String,
    },

    /// The plugin's own [`HandshakeConfig`](crate::HandshakeConfig) is unusable.
    #[error("misconfigured handshake: {reason}")]
    InvalidHandshakeConfig {
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// A Terraform provider address (for `TF_REATTACH_PROVIDERS`) that
    /// Terraform and OpenTofu would refuse.
    #[error(
        "provider address {address:?}: {reason}; give \"namespace/type\", such as \"goplugin/kv\" \
         (keyed under registry.terraform.io and registry.opentofu.org), or \
         \"hostname/namespace/type\""
    )]
    InvalidProviderAddress {
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An environment variable set by the host has a value the plugin cannot use.
    #[error("{var}={value:?}: {reason}")]
    InvalidEnv {
        /// The variable's name, e.g. `PLUGIN_MIN_PORT`.
        var: &'static str,
        /// The value found.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No port in `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT` could be bound on 127.0.0.1.
    #[error(
        "couldn't bind plugin TCP listener: no free port on 127.0.0.1 in {min}..={max} \
         (PLUGIN_MIN_PORT={min}, PLUGIN_MAX_PORT={max}); widen the host's port range \
         or free a port in it"
    )]
    NoPortAvailable {
        /// First port tried.
        min: u16,
        /// Last port tried.
        max: u16,
    },

    /// AutoMTLS could not be set up.
    #[error("AutoMTLS: {reason}")]
    Tls {
        /// What failed.
        reason: String,
    },

    /// A brokered connection could not be made.
    #[error("broker: {reason}")]
    Broker {
        /// What failed.
        reason: String,
    },

    /// The process lacks what the plugin needs to start (file
    /// descriptors, threads): a limit of the OS, not of the plugin.
    #[error("not enough {what} to start: {reason}")]
    OutOfResources {
        /// What ran out, e.g. "file descriptors".
        what: &'static str,
        /// What failed and which limit to raise.
        reason: String,
    },

    /// The listener could not be opened.
    #[error("cannot listen on {address}: {reason}")]
    Bind {
        /// The socket path or address.
        address: String,
        /// What failed and what to check.
        reason: String,
    },

    /// [`logging::init`](crate::logging::init) found another logger installed.
    #[error(
        "a logger is already installed; call goplugin::logging::init once, before any other logger"
    )]
    LoggerAlreadySet,

    /// The host side ([`Client`](crate::Client)): a plugin could not be
    /// started, reached or used. Says which plugin, at which step, and what
    /// it last printed on stderr.
    #[error("plugin {plugin}: {step}: {reason}{}", printed_tail(.printed))]
    Client {
        /// The plugin's name (its command's file name) or address.
        plugin: String,
        /// What the host was doing.
        step: Step,
        /// What went wrong, in go-plugin's words where it has some.
        reason: String,
        /// The last lines the plugin wrote on stderr, if any.
        printed: String,
    },

    /// A reattach configuration (go-plugin's `ReattachConfig` JSON, or a
    /// map of them such as `TF_REATTACH_PROVIDERS`) that cannot be read.
    #[error("cannot read the reattach configuration: {reason}")]
    InvalidReattachConfig {
        /// What is wrong with it.
        reason: String,
    },

    /// gRPC failed to build or start the server.
    #[error("gRPC server error: {0}")]
    Grpc(grpcio::Error),

    /// Writing the handshake line failed (for example, stdout is closed).
    #[error("cannot write the handshake line: {0}")]
    Handshake(io::Error),
}

/// What a host was doing when an [`Error::Client`] stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// Starting the plugin's command and waiting for its handshake line.
    Start,
    /// Checking the plugin's binary against a [`SecureConfig`](crate::SecureConfig).
    SecureConfig,
    /// Reading the handshake line: versions, address, certificate.
    Handshake,
    /// Connecting to the address the plugin gave.
    Connect,
    /// The first health check of a connected plugin.
    HealthCheck,
    /// Attaching to a running plugin with a [`ReattachConfig`](crate::ReattachConfig).
    Reattach,
    /// [`Client::ping`](crate::Client::ping).
    Ping,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Start => "start",
            Step::SecureConfig => "secure config",
            Step::Handshake => "handshake",
            Step::Connect => "connect",
            Step::HealthCheck => "health check",
            Step::Reattach => "reattach",
            Step::Ping => "ping",
        })
    }
}

impl Error {
    /// An [`Error::Client`] that carries nothing the plugin printed.
    pub(crate) fn client(plugin: impl Into<String>, step: Step, reason: String) -> Error {
        Error::Client {
            plugin: plugin.into(),
            step,
            reason,
            printed: String::new(),
        }
    }
}

fn printed_tail(printed: &str) -> String {
    if printed.is_empty() {
        String::new()
    } else {
        format!(
            "\n--- the plugin's last stderr lines:\n{}",
            printable(printed)
        )
    }
}

/// `text` from the other side (a plugin's line, its stderr), safe to show:
/// control characters other than newline and tab are written as escapes
/// (`\u{1b}`), so that nothing it sends reaches a terminal as a command.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

// The wrapped errors are written into the messages above, so they are not
// also returned from `source()`: error reporters would print them twice.
impl From<grpcio::Error> for Error {
    fn from(err: grpcio::Error) -> Self {
        Error::Grpc(err)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_plugin_printed_is_shown_without_its_control_characters() {
        assert_eq!(printable("a\u{1b}[31mb\r\n\tc"), "a\\u{1b}[31mb\\u{d}\n\tc");
        let err = Error::Client {
            plugin: "p".into(),
            step: Step::Start,
            reason: "r".into(),
            printed: "\u{7}bell".into(),
        };
        assert!(err.to_string().ends_with("\\u{7}bell"), "{err}");
    }
}
