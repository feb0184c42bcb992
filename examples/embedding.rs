//! An application that embeds a plugin: it serves from a thread of its
//! own, stops the plugin with its `ShutdownHandle`, and goes on. While the
//! plugin serves, SIGINT is ignored and SIGTERM/SIGHUP stop it, as the
//! host expects; once it has stopped, the application's signals are its
//! own again (here: Ctrl-C ends it).
//!
//! stdout is the host's: nothing but the handshake line may be written
//! there, so this application writes to stderr.
//!
//! ```text
//! BASIC_PLUGIN=hello cargo run --release --example embedding -- 5 60
//! ```
//!
//! The plugin serves for the first argument's seconds (default 5), then the
//! application goes on for the second's (default 60).

use std::time::Duration;

use goplugin::{HandshakeConfig, PluginServer};

const HANDSHAKE: HandshakeConfig = HandshakeConfig {
    protocol_version: 1,
    magic_cookie_key: "BASIC_PLUGIN",
    magic_cookie_value: "hello",
};

fn seconds(arg: Option<String>, default: f64) -> Result<Duration, String> {
    match arg {
        Some(arg) => arg
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or(format!("seconds {arg:?}: give a number, such as 5")),
        None => Ok(Duration::from_secs_f64(default)),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let serve_for = seconds(args.next(), 5.0)?;
    let go_on_for = seconds(args.next(), 60.0)?;

    let server = PluginServer::builder(HANDSHAKE).build()?;
    let stop = server.shutdown_handle();
    let serving = std::thread::spawn(move || server.serve());
    std::thread::sleep(serve_for);
    stop.shutdown();
    serving
        .join()
        .map_err(|_| "the serving thread panicked")??;
    eprintln!("embedding: the plugin has stopped; the application goes on (Ctrl-C ends it)");
    std::thread::sleep(go_on_for);
    eprintln!("embedding: done");
    Ok(())
}
