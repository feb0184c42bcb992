//! The smallest useful go-plugin plugin: the handshake, health ("plugin"
//! SERVING) and the controller, with no application service yet.
//!
//! Run it the way a host would:
//!
//! ```text
//! BASIC_PLUGIN=hello PLUGIN_PROTOCOL_VERSIONS=1 cargo run --release --example minimal
//! 1|1|unix|/tmp/plugin1804289383|grpc
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
    goplugin::plugin_main(HANDSHAKE, "minimal", |env| {
        PluginServer::builder(HANDSHAKE).env(env).build()?.serve()
    })
}
