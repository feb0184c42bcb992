//! Feeds arbitrary environments to the parsers a host's input reaches:
//! `PLUGIN_PROTOCOL_VERSIONS`, `PLUGIN_MIN_PORT`/`PLUGIN_MAX_PORT`, the
//! magic cookie, version negotiation and the handshake line. None of them
//! may panic, and their results must keep their invariants.
#![no_main]

use std::collections::BTreeSet;

use goplugin::env::{PLUGIN_MAX_PORT, PLUGIN_MIN_PORT, PLUGIN_PROTOCOL_VERSIONS};
use goplugin::fuzzing::{
    env_versions, host_versions, multiplex_grpc, negotiate_version, port_range, verify_cookie,
};
use goplugin::{HandshakeConfig, HandshakeLine, Network, PluginEnv};
use libfuzzer_sys::fuzz_target;

const HANDSHAKE: HandshakeConfig = HandshakeConfig {
    protocol_version: 1,
    magic_cookie_key: "BASIC_PLUGIN",
    magic_cookie_value: "hello",
};

fuzz_target!(|data: &[u8]| {
    // Three values separated by NUL: versions, min port, max port; a fourth
    // part is the cookie value.
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let versions = parts.next().unwrap_or("");
    let min = parts.next().unwrap_or("");
    let max = parts.next().unwrap_or("");
    let cookie = parts.next().unwrap_or("hello");
    let env = PluginEnv::from_vars([
        (PLUGIN_PROTOCOL_VERSIONS, versions),
        (PLUGIN_MIN_PORT, min),
        (PLUGIN_MAX_PORT, max),
        ("BASIC_PLUGIN", cookie),
    ]);

    assert_eq!(verify_cookie(&env, &HANDSHAKE).is_ok(), cookie == "hello");
    if let Ok((min, max)) = port_range(&env) {
        assert!(min <= max);
    }
    let offered = env_versions(&env);
    assert_eq!(offered, host_versions(versions));
    let plugin: BTreeSet<u32> = offered.0.iter().map(|v| v % 4).chain([1]).collect();
    let picked = negotiate_version(&plugin, &offered.0).expect("plugin set is not empty");
    assert!(plugin.contains(&picked));

    let line = HandshakeLine {
        app_protocol_version: picked,
        network: Network::Tcp,
        address: "127.0.0.1:1".to_string(),
        server_cert: None,
        multiplex: multiplex_grpc(&env).map(|_| true),
    }
    .to_string();
    assert!(!line.contains('\n'));
    assert_eq!(line.split('|').count(), 5);
});
