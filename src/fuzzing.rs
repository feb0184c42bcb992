//! The parsers of a host's input that the fuzz targets (`fuzz/`) reach:
//! not API, only with the `fuzzing` feature.

use std::collections::BTreeSet;

use crate::env::PluginEnv;
use crate::error::Result;
use crate::handshake::{HandshakeConfig, HostVersions};

/// `PLUGIN_PROTOCOL_VERSIONS` parsed: the versions in the host's order,
/// and the entries that are not versions.
pub fn host_versions(value: &str) -> (Vec<u32>, Vec<String>) {
    let HostVersions { versions, invalid } = HostVersions::parse(value);
    (versions, invalid)
}

/// [`host_versions`] of what `env` holds.
pub fn env_versions(env: &PluginEnv) -> (Vec<u32>, Vec<String>) {
    let HostVersions { versions, invalid } = env.protocol_versions();
    (versions, invalid)
}

/// The version a plugin serving `plugin` picks from the host's `host`.
pub fn negotiate_version(plugin: &BTreeSet<u32>, host: &[u32]) -> Option<u32> {
    crate::handshake::negotiate_version(plugin, host)
}

/// Whether `env` holds `handshake`'s magic cookie.
pub fn verify_cookie<S: AsRef<str>>(env: &PluginEnv, handshake: &HandshakeConfig<S>) -> Result<()> {
    env.verify_cookie(handshake)
}

/// `PLUGIN_MIN_PORT` and `PLUGIN_MAX_PORT`: (min, max).
pub fn port_range(env: &PluginEnv) -> Result<(u16, u16)> {
    env.port_range().map(|range| (range.min, range.max))
}

/// `PLUGIN_MULTIPLEX_GRPC` as a plugin reads it.
pub fn multiplex_grpc(env: &PluginEnv) -> Option<bool> {
    env.multiplex_grpc()
}
