//! go-plugin's `ReattachConfig`: where a running plugin listens, and its
//! JSON form (Terraform's `TF_REATTACH_PROVIDERS`). A plugin in debug mode
//! says it ([`PluginServer::reattach_config`](crate::PluginServer::reattach_config)),
//! a host attaches with it ([`ClientBuilder::reattach`](crate::ClientBuilder::reattach)).

use crate::error::{Error, Result};
use crate::handshake::Network;
use crate::listener::Listener;

/// Where to find a plugin that is already running (go-plugin's
/// `ReattachConfig`; Terraform's `TF_REATTACH_PROVIDERS` holds these as
/// JSON, see [`to_json`](Self::to_json)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReattachConfig {
    /// The plugin protocol: `grpc` (the only one goplugin speaks).
    pub protocol: String,
    /// The app protocol version the plugin serves.
    pub protocol_version: u32,
    /// Where it listens.
    pub addr: Listener,
    /// Its process id (0 when unknown).
    pub pid: u32,
    /// Test (debug) mode: the host that attaches never stops the plugin.
    pub test: bool,
}

impl ReattachConfig {
    /// go-plugin's JSON form: `{"Protocol":"grpc","ProtocolVersion":6,
    /// "Addr":{"Network":"unix","String":"/tmp/plugin123"},"Pid":42,
    /// "Test":true}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "Protocol": self.protocol,
            "ProtocolVersion": self.protocol_version,
            "Addr": {"Network": self.addr.network.as_str(), "String": self.addr.address},
            "Pid": self.pid,
            "Test": self.test,
        })
        .to_string()
    }

    /// Reads go-plugin's JSON form (see [`to_json`](Self::to_json)).
    ///
    /// ```
    /// let config = goplugin::ReattachConfig::from_json(
    ///     r#"{"Protocol":"grpc","ProtocolVersion":1,"Addr":{"Network":"tcp","String":"127.0.0.1:1234"},"Pid":42,"Test":true}"#,
    /// )?;
    /// assert_eq!(config.addr.address, "127.0.0.1:1234");
    /// assert_eq!(goplugin::ReattachConfig::from_json(&config.to_json())?, config);
    /// # Ok::<(), goplugin::Error>(())
    /// ```
    pub fn from_json(json: &str) -> Result<ReattachConfig> {
        let invalid =
            |reason: String| Error::client("reattach", "read the reattach configuration", reason);
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let text = |value: &serde_json::Value, key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| invalid(format!("{key} is missing or not a string")))
        };
        let number = |key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        let addr = value
            .get("Addr")
            .ok_or_else(|| invalid("Addr is missing".into()))?;
        let network = match text(addr, "Network")?.as_str() {
            "unix" => Network::Unix,
            "tcp" => Network::Tcp,
            other => {
                return Err(invalid(format!(
                    "Addr.Network {other:?} is not unix or tcp"
                )));
            }
        };
        Ok(ReattachConfig {
            protocol: text(&value, "Protocol").unwrap_or_else(|_| "grpc".into()),
            protocol_version: number("ProtocolVersion")
                .ok_or_else(|| invalid("ProtocolVersion is missing".into()))?,
            addr: Listener {
                network,
                address: text(addr, "String")?,
            },
            pid: number("Pid").unwrap_or(0),
            test: value
                .get("Test")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reattach_json_is_go_plugins() {
        let json = r#"{"Protocol":"grpc","ProtocolVersion":6,"Addr":{"Network":"unix","String":"/tmp/plugin1"},"Pid":42,"Test":true}"#;
        let config = ReattachConfig::from_json(json).unwrap();
        assert_eq!(config.protocol_version, 6);
        assert_eq!(config.addr.network, Network::Unix);
        assert_eq!(config.pid, 42);
        assert!(config.test);
        assert_eq!(
            ReattachConfig::from_json(&config.to_json()).unwrap(),
            config
        );
        for bad in [
            "",
            "{}",
            r#"{"ProtocolVersion":1,"Addr":{"Network":"udp","String":"x"}}"#,
        ] {
            assert!(ReattachConfig::from_json(bad).is_err(), "{bad}");
        }
    }
}
