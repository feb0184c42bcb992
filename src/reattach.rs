//! go-plugin's `ReattachConfig`: where a running plugin listens, and its
//! JSON form (Terraform's `TF_REATTACH_PROVIDERS`). A plugin in debug mode
//! says it ([`PluginServer::reattach_config`](crate::PluginServer::reattach_config)),
//! a host attaches with it ([`ClientBuilder::reattach`](crate::ClientBuilder::reattach)).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::handshake::Network;
use crate::listener::Addr;

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
    pub addr: Addr,
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
        self.to_value().to_string()
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
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| invalid(format!("not JSON: {e}")))?;
        ReattachConfig::from_value(&value).map_err(invalid)
    }

    /// A map of reattach configurations by key, as Terraform's and
    /// OpenTofu's `TF_REATTACH_PROVIDERS` holds them (keyed by provider
    /// address, such as `registry.terraform.io/goplugin/kv`): read from
    /// its JSON.
    ///
    /// ```
    /// use goplugin::ReattachConfig;
    /// let providers = ReattachConfig::map_from_json(
    ///     r#"{"registry.terraform.io/goplugin/kv":{"Protocol":"grpc","ProtocolVersion":6,"Addr":{"Network":"unix","String":"/tmp/plugin1"},"Pid":42,"Test":true}}"#,
    /// )?;
    /// let kv = &providers["registry.terraform.io/goplugin/kv"];
    /// assert_eq!(kv.protocol_version, 6);
    /// assert_eq!(ReattachConfig::map_from_json(&ReattachConfig::map_to_json(&providers))?, providers);
    /// # Ok::<(), goplugin::Error>(())
    /// ```
    pub fn map_from_json(json: &str) -> Result<BTreeMap<String, ReattachConfig>> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| invalid("not a JSON object of reattach configurations".into()))?;
        object
            .iter()
            .map(|(key, config)| {
                ReattachConfig::from_value(config)
                    .map(|config| (key.clone(), config))
                    .map_err(|reason| invalid(format!("{key:?}: {reason}")))
            })
            .collect()
    }

    /// The JSON of a map of reattach configurations by key, as
    /// `TF_REATTACH_PROVIDERS` holds them (see
    /// [`map_from_json`](Self::map_from_json)).
    pub fn map_to_json(configs: &BTreeMap<String, ReattachConfig>) -> String {
        let object: serde_json::Map<String, serde_json::Value> = configs
            .iter()
            .map(|(key, config)| (key.clone(), config.to_value()))
            .collect();
        serde_json::Value::Object(object).to_string()
    }

    /// This configuration as `TF_REATTACH_PROVIDERS` holds it for the
    /// provider at `address`, keyed so that Terraform and OpenTofu both
    /// find it: a short address, `namespace/type` (what a configuration's
    /// `source` says), is keyed under both tools' default registries
    /// ([`PROVIDER_REGISTRIES`]), each tool taking its own and ignoring the
    /// other; a full one, `hostname/namespace/type`, under that host only.
    /// [`map_to_json`](Self::map_to_json) gives the variable's value.
    ///
    /// ```
    /// # let config = goplugin::ReattachConfig::from_json(
    /// #     r#"{"Protocol":"grpc","ProtocolVersion":6,"Addr":{"Network":"unix","String":"/tmp/plugin1"},"Pid":42,"Test":true}"#)?;
    /// let providers = config.for_provider("goplugin/kv")?;
    /// assert_eq!(
    ///     providers.keys().collect::<Vec<_>>(),
    ///     ["registry.opentofu.org/goplugin/kv", "registry.terraform.io/goplugin/kv"],
    /// );
    /// println!("TF_REATTACH_PROVIDERS='{}'", goplugin::ReattachConfig::map_to_json(&providers));
    /// # Ok::<(), goplugin::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidProviderAddress`]: not two or three `/`-separated
    /// parts of letters, digits and dashes (and dots in the hostname), which
    /// Terraform would refuse, failing every provider of the variable.
    pub fn for_provider(&self, address: &str) -> Result<BTreeMap<String, ReattachConfig>> {
        let keys = provider_keys(address).map_err(|reason| Error::InvalidProviderAddress {
            address: address.to_string(),
            reason,
        })?;
        Ok(keys.into_iter().map(|key| (key, self.clone())).collect())
    }

    fn to_value(&self) -> serde_json::Value {
        serde_json::json!({
            "Protocol": self.protocol,
            "ProtocolVersion": self.protocol_version,
            "Addr": {"Network": self.addr.network.as_str(), "String": self.addr.address},
            "Pid": self.pid,
            "Test": self.test,
        })
    }

    fn from_value(value: &serde_json::Value) -> std::result::Result<ReattachConfig, String> {
        let text = |value: &serde_json::Value, key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("{key} is missing or not a string"))
        };
        let number = |key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        let addr = value
            .get("Addr")
            .ok_or_else(|| "Addr is missing".to_string())?;
        let network = match text(addr, "Network")?.as_str() {
            "unix" => Network::Unix,
            "tcp" => Network::Tcp,
            other => {
                return Err(format!("Addr.Network {other:?} is not unix or tcp"));
            }
        };
        Ok(ReattachConfig {
            protocol: text(value, "Protocol").unwrap_or_else(|_| "grpc".into()),
            protocol_version: number("ProtocolVersion")
                .ok_or_else(|| "ProtocolVersion is missing".to_string())?,
            addr: Addr {
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

/// The registries a short provider address (`namespace/type`) stands for:
/// Terraform's default and OpenTofu's.
pub const PROVIDER_REGISTRIES: [&str; 2] = ["registry.terraform.io", "registry.opentofu.org"];

/// The `TF_REATTACH_PROVIDERS` keys of a provider address, or what is wrong
/// with it, by the rules Terraform and OpenTofu parse it with.
fn provider_keys(address: &str) -> std::result::Result<Vec<String>, String> {
    let parts: Vec<&str> = address.split('/').collect();
    let (hosts, namespace, kind) = match parts.as_slice() {
        [namespace, kind] => (PROVIDER_REGISTRIES.to_vec(), *namespace, *kind),
        [host, namespace, kind] => {
            let valid = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
            if !valid {
                return Err(format!(
                    "hostname {host:?} must be letters, digits, dots and dashes"
                ));
            }
            (vec![*host], *namespace, *kind)
        }
        _ => return Err(format!("{} parts, not 2 or 3", parts.len())),
    };
    for (what, part) in [("namespace", namespace), ("type", kind)] {
        let valid = !part.is_empty()
            && !part.starts_with('-')
            && !part.ends_with('-')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return Err(format!(
                "{what} {part:?} must be letters, digits and inner dashes"
            ));
        }
    }
    Ok(hosts
        .into_iter()
        .map(|host| format!("{host}/{namespace}/{kind}"))
        .collect())
}

/// A reattach configuration that cannot be read.
fn invalid(reason: String) -> Error {
    Error::InvalidReattachConfig { reason }
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

    /// `TF_REATTACH_PROVIDERS`: a map by provider address, read whole, and
    /// a bad entry named by its key.
    #[test]
    fn reattach_maps_are_terraforms() {
        let one = r#"{"Protocol":"grpc","ProtocolVersion":6,"Addr":{"Network":"unix","String":"/tmp/plugin1"},"Pid":42,"Test":true}"#;
        let json = format!(
            r#"{{"registry.terraform.io/goplugin/kv":{one},"registry.opentofu.org/goplugin/kv":{one}}}"#
        );
        let map = ReattachConfig::map_from_json(&json).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map["registry.terraform.io/goplugin/kv"].pid, 42);
        assert_eq!(
            ReattachConfig::map_from_json(&ReattachConfig::map_to_json(&map)).unwrap(),
            map
        );
        let bad = ReattachConfig::map_from_json(r#"{"a/b/c":{"Addr":{}}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            bad.ends_with(
                "cannot read the reattach configuration: \"a/b/c\": Network is missing or not a string"
            ),
            "{bad}"
        );
        assert!(ReattachConfig::map_from_json("[]").is_err());
    }

    /// A provider's keys: both registries for a short address, its own host
    /// for a full one, and a clear error for what Terraform would refuse.
    #[test]
    fn provider_addresses_key_both_registries() {
        let config = ReattachConfig::from_json(
            r#"{"Protocol":"grpc","ProtocolVersion":6,"Addr":{"Network":"unix","String":"/tmp/p"},"Pid":1,"Test":true}"#,
        )
        .unwrap();
        let short = config.for_provider("goplugin/kv").unwrap();
        assert_eq!(
            short.keys().collect::<Vec<_>>(),
            [
                "registry.opentofu.org/goplugin/kv",
                "registry.terraform.io/goplugin/kv"
            ]
        );
        assert!(short.values().all(|entry| *entry == config));
        let full = config.for_provider("example.com:8443/my-org/kv-2").unwrap();
        assert_eq!(
            full.keys().collect::<Vec<_>>(),
            ["example.com:8443/my-org/kv-2"]
        );
        for (bad, reason) in [
            ("kv", "1 parts, not 2 or 3"),
            ("a/b/c/d", "4 parts"),
            ("goplugin/", "type \"\" must be"),
            ("-x/kv", "namespace \"-x\" must be"),
            ("go plugin/kv", "namespace \"go plugin\""),
            ("goplugin/kv_item", "type \"kv_item\""),
            ("a b/goplugin/kv", "hostname \"a b\""),
        ] {
            let err = config.for_provider(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad}: {err}");
            assert!(
                err.starts_with(&format!("provider address {bad:?}: ")),
                "{err}"
            );
        }
    }
}
