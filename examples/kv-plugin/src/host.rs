//! What go-plugin's example hosts share, in Rust: `kv-host` (its
//! `examples/grpc` host) and `counter-host` (its `examples/bidirectional`
//! host) start their plugin and report errors the same way.

use std::process::{Command, ExitCode};
use std::time::Duration;

use goplugin::Client;
use goplugin::grpcio::CallOption;
use goplugin::log::LevelFilter;

use crate::HANDSHAKE;

/// An example host's `main`: logs on stderr at the level `$log_var` names
/// (`warn` by default), runs `run` with the arguments, and prints an error
/// on stdout as `{error_prefix} {message}` with exit code 1, as go-plugin's
/// hosts do.
pub fn main(
    log_var: &str,
    error_prefix: &str,
    run: impl FnOnce(Vec<String>) -> Result<(), String>,
) -> ExitCode {
    let level = std::env::var(log_var)
        .ok()
        .and_then(|level| level.parse().ok())
        .unwrap_or(LevelFilter::Warn);
    let _ = goplugin::logging::init(level);
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            println!("{error_prefix} {message}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the plugin whose command line is in `$plugin_var`, with `sh -c`
/// as go-plugin's example hosts do, under AutoMTLS when `$automtls_var` is
/// `1`.
pub fn start(plugin_var: &str, automtls_var: &str) -> Result<Client, String> {
    let command = std::env::var(plugin_var)
        .map_err(|_| format!("set {plugin_var} to the plugin's command line"))?;
    let mut shell = Command::new("sh");
    shell.arg("-c").arg(command);
    Client::builder(HANDSHAKE)
        .command(shell)
        .auto_mtls(std::env::var(automtls_var).as_deref() == Ok("1"))
        .start()
        .map_err(|err| err.to_string())
}

/// The options of each call: a deadline of `$timeout_var` seconds (default
/// 30), so that a plugin that never answers cannot hang the host; `0`
/// waits for ever.
pub fn call_options(timeout_var: &str) -> Result<CallOption, String> {
    let seconds = match std::env::var(timeout_var) {
        Ok(value) => value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or(format!(
                "{timeout_var}={value:?}: give seconds, such as 30 (0: no deadline)"
            ))?,
        Err(_) => 30.0,
    };
    Ok(if seconds == 0.0 {
        CallOption::default()
    } else {
        CallOption::default().timeout(Duration::from_secs_f64(seconds))
    })
}
