//! The smallest useful go-plugin plugin: the handshake, health ("plugin"
//! SERVING) and the controller, with no application service yet.
//!
//! Run it the way a host would:
//!
//! ```text
//! BASIC_PLUGIN=hello PLUGIN_PROTOCOL_VERSIONS=1 cargo run --release --example minimal
//! 1|1|tcp|127.0.0.1:41027|grpc
//! ```
//!
//! Without `BASIC_PLUGIN=hello` it exits 1 with go-plugin's "This binary is
//! a plugin" message, as every plugin should.

use std::process::ExitCode;

use goplugin::{HandshakeConfig, PluginServer};

const HANDSHAKE: HandshakeConfig = HandshakeConfig {
    protocol_version: 1,
    magic_cookie_key: "BASIC_PLUGIN",
    magic_cookie_value: "hello",
};

fn main() -> ExitCode {
    let served = PluginServer::builder(HANDSHAKE)
        .build()
        .and_then(PluginServer::serve);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            use std::io::Write;
            // Never panic on a closed stderr.
            let _ = writeln!(std::io::stderr(), "{err}");
            ExitCode::FAILURE
        }
    }
}
