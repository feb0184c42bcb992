//! An application that embeds a plugin: it serves from a thread of its
//! own, prints on stdout once the plugin is ready, stops the plugin with
//! its `ShutdownHandle`, and goes on. While the plugin serves, SIGINT is
//! ignored and SIGTERM/SIGHUP stop it, as the host expects; once it has
//! stopped, the application's signals are its own again (here: Ctrl-C
//! ends it).
//!
//! **stdout belongs to the host until the handshake line is out**: a line
//! printed earlier reaches the host first, and the host refuses the plugin
//! ("Unrecognized remote plugin message"). `ReadyHandle::wait` returns once
//! the line is flushed; from then on what the application prints goes to
//! the host as the plugin's stdout (go-plugin's `SyncStdout`; goplugin's
//! `ClientBuilder::sync_stdout`). Logs go to stderr at any time.
//!
//! ```text
//! BASIC_PLUGIN=hello cargo run --release --example embedding -- 5 60
//! ```
//!
//! The plugin serves for the first argument's seconds (default 5) or until
//! its host stops it, printing `app: tick N` on stdout every 100 ms; then
//! the application goes on for the second argument's seconds (default 60).

use std::io::Write;
use std::time::{Duration, Instant};

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

    let server = PluginServer::builder(HANDSHAKE)
        // The default, spelled out: `io::stdout()` means the real stdout,
        // even though forwarding stdio makes fd 1 a pipe to the host.
        .handshake_output(std::io::stdout())
        .build()?;
    let stop = server.shutdown_handle();
    let ready = server.ready_handle();
    let serving = std::thread::spawn(move || server.serve());
    // Nothing on stdout before this: the handshake line is the host's.
    if ready.wait() {
        let began = Instant::now();
        let mut tick = 0;
        while began.elapsed() < serve_for && !serving.is_finished() {
            tick += 1;
            // An error (the host closed the pipe) is not the app's end.
            let _ = writeln!(std::io::stdout(), "app: tick {tick}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    stop.shutdown();
    serving
        .join()
        .map_err(|_| "the serving thread panicked")??;
    eprintln!("embedding: the plugin has stopped; the application goes on (Ctrl-C ends it)");
    std::thread::sleep(go_on_for);
    eprintln!("embedding: done");
    Ok(())
}
