//! Embedding: serve on one thread, stop from another.
//!
//! The application builds the server, looks at what it will announce, and
//! keeps a `ShutdownHandle`. Here a timer stops the plugin after the number
//! of seconds given as the first argument (default 30); the host's
//! `Kill()` would stop it the same way.
//!
//! ```text
//! BASIC_PLUGIN=hello cargo run --release --example shutdown_handle -- 5
//! ```

use std::time::Duration;

use goplugin::{HandshakeConfig, PluginServer};

const HANDSHAKE: HandshakeConfig = HandshakeConfig {
    protocol_version: 1,
    magic_cookie_key: "BASIC_PLUGIN",
    magic_cookie_value: "hello",
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|e| format!("seconds {arg:?}: {e}"))?,
        None => 30,
    };
    goplugin::logging::init(log::LevelFilter::Info)?;

    let server = PluginServer::builder(HANDSHAKE).threads(2).build()?;
    log::info!("will announce {:?}", server.handshake_line().to_string());
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(seconds));
        log::info!("{seconds} s are up: shutting down");
        stop.shutdown();
    });
    server.serve()?;
    log::info!("stopped");
    Ok(())
}
