//! The environment a go-plugin host gives its plugin, read once.
//!
//! Every variable name is a constant here, and nothing else in the crate
//! reads the process environment. Mirrors go-plugin's `constants.go` and the
//! `os.Getenv` calls scattered through its `server.go`.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::handshake::{HandshakeConfig, HostVersions};

/// App protocol versions the host speaks, joined by `,` (e.g. `1,2`).
pub const PLUGIN_PROTOCOL_VERSIONS: &str = "PLUGIN_PROTOCOL_VERSIONS";
/// Lowest TCP port the plugin may listen on.
pub const PLUGIN_MIN_PORT: &str = "PLUGIN_MIN_PORT";
/// Highest TCP port the plugin may listen on.
pub const PLUGIN_MAX_PORT: &str = "PLUGIN_MAX_PORT";
/// PEM certificate of the host; set when the host wants AutoMTLS.
pub const PLUGIN_CLIENT_CERT: &str = "PLUGIN_CLIENT_CERT";
/// Directory for the plugin's unix socket (go-plugin 1.5+; else `TMPDIR`).
pub const PLUGIN_UNIX_SOCKET_DIR: &str = "PLUGIN_UNIX_SOCKET_DIR";
/// Group (name or gid) that may use the plugin's unix socket (go-plugin 1.5+).
pub const PLUGIN_UNIX_SOCKET_GROUP: &str = "PLUGIN_UNIX_SOCKET_GROUP";
/// Set (to `true`) when the host wants every gRPC connection multiplexed
/// over one connection (go-plugin 1.6+, `GRPCBrokerMultiplex`).
pub const PLUGIN_MULTIPLEX_GRPC: &str = "PLUGIN_MULTIPLEX_GRPC";

/// The variables a host sets, captured once.
///
/// [`PluginEnv::from_process`] reads the real environment; tests build one
/// from pairs with [`PluginEnv::from_vars`] and never touch the process
/// environment. Values are parsed when they are needed, so that an error
/// names the variable that a step actually used.
#[derive(Debug, Clone, Default)]
pub struct PluginEnv {
    vars: HashMap<String, String>,
}

/// The TCP ports a plugin may bind, from `PLUGIN_MIN_PORT`/`PLUGIN_MAX_PORT`.
///
/// Port 0 stands for "any port the OS assigns", which is what an unset
/// range means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortRange {
    /// First port to try.
    pub(crate) min: u16,
    /// Last port to try.
    pub(crate) max: u16,
}

impl PluginEnv {
    /// Captures the process environment. Variables whose name or value is
    /// not valid UTF-8 are kept with the invalid bytes replaced, so they
    /// fail to parse with a message rather than vanish.
    pub fn from_process() -> PluginEnv {
        PluginEnv::from_vars(std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        }))
    }

    /// Builds an environment from `(name, value)` pairs.
    ///
    /// ```
    /// use goplugin::PluginEnv;
    ///
    /// let env = PluginEnv::from_vars([("BASIC_PLUGIN", "hello"), ("PLUGIN_PROTOCOL_VERSIONS", "1")]);
    /// assert_eq!(env.get("BASIC_PLUGIN"), Some("hello"));
    /// ```
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> PluginEnv
    where
        K: Into<String>,
        V: Into<String>,
    {
        PluginEnv {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// This environment without `names`.
    pub(crate) fn without(mut self, names: &[&str]) -> PluginEnv {
        self.vars.retain(|name, _| !names.contains(&name.as_str()));
        self
    }

    /// The raw value of a variable, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The value of a variable, treating an empty value as unset (as Go's
    /// `os.Getenv(..) != ""` checks do).
    fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// Checks that the host set `handshake`'s magic cookie, as go-plugin's
    /// `Serve` does first of all. [`PluginServerBuilder::build`] calls it;
    /// call it yourself to bail out before any other start-up work.
    ///
    /// [`PluginServerBuilder::build`]: crate::PluginServerBuilder::build
    ///
    /// # Errors
    /// - [`Error::InvalidHandshakeConfig`]: the cookie key or value is empty;
    /// - [`Error::NotLaunchedByHost`]: the cookie is missing or different.
    pub(crate) fn verify_cookie<S: AsRef<str>>(
        &self,
        handshake: &HandshakeConfig<S>,
    ) -> Result<()> {
        let (key, value) = (
            handshake.magic_cookie_key.as_ref(),
            handshake.magic_cookie_value.as_ref(),
        );
        if key.is_empty() || value.is_empty() {
            return Err(Error::InvalidHandshakeConfig {
                reason: "no magic cookie key or value was set; set both in the HandshakeConfig \
                         (the host must use the same values)"
                    .to_string(),
            });
        }
        if self.get(key) != Some(value) {
            return Err(Error::NotLaunchedByHost {
                cookie_key: key.to_string(),
            });
        }
        Ok(())
    }

    /// The versions offered in `PLUGIN_PROTOCOL_VERSIONS`; empty when unset.
    pub(crate) fn protocol_versions(&self) -> HostVersions {
        HostVersions::parse(self.get(PLUGIN_PROTOCOL_VERSIONS).unwrap_or(""))
    }

    /// The TCP port range from `PLUGIN_MIN_PORT` and `PLUGIN_MAX_PORT`.
    ///
    /// An unset (or empty) variable counts as 0, as in go-plugin, so an
    /// unset range means "any port".
    ///
    /// # Errors
    /// [`Error::InvalidEnv`] when a value is not a port number (0–65535) or
    /// the minimum is above the maximum.
    pub(crate) fn port_range(&self) -> Result<PortRange> {
        let min = self.port(PLUGIN_MIN_PORT)?;
        let max = self.port(PLUGIN_MAX_PORT)?;
        if min > max {
            return Err(Error::InvalidEnv {
                var: PLUGIN_MIN_PORT,
                value: min.to_string(),
                reason: format!(
                    "PLUGIN_MIN_PORT is greater than PLUGIN_MAX_PORT ({max}); \
                     the host must give a range with min <= max"
                ),
            });
        }
        Ok(PortRange { min, max })
    }

    fn port(&self, var: &'static str) -> Result<u16> {
        let Some(value) = self.non_empty(var) else {
            return Ok(0);
        };
        value.trim().parse::<u16>().map_err(|_| Error::InvalidEnv {
            var,
            value: value.to_string(),
            reason: "not a TCP port number (0-65535)".to_string(),
        })
    }

    /// The host's PEM certificate when it asked for AutoMTLS.
    pub(crate) fn client_cert(&self) -> Option<&str> {
        self.non_empty(PLUGIN_CLIENT_CERT)
    }

    /// What the host said about multiplexing, as go-plugin reads it:
    /// `None` when `PLUGIN_MULTIPLEX_GRPC` is unset or empty (then the
    /// handshake has no 7th field), `Some(true)` when it is a true boolean
    /// in Go's `strconv.ParseBool` spelling (`1`, `t`, `T`, `true`, `TRUE`,
    /// `True`), `Some(false)` for anything else (the 7th field is still
    /// written, and the plugin does not multiplex).
    pub(crate) fn multiplex_grpc(&self) -> Option<bool> {
        self.non_empty(PLUGIN_MULTIPLEX_GRPC)
            .map(|value| matches!(value, "1" | "t" | "T" | "true" | "TRUE" | "True"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Environment variables as `(name, value)` pairs.
    type Vars = &'static [(&'static str, &'static str)];

    fn env(pairs: &[(&str, &str)]) -> PluginEnv {
        PluginEnv::from_vars(pairs.iter().copied())
    }

    #[test]
    fn port_ranges() {
        let ok: &[(Vars, (u16, u16))] = &[
            (&[], (0, 0)),
            (
                &[("PLUGIN_MIN_PORT", "10000"), ("PLUGIN_MAX_PORT", "25000")],
                (10000, 25000),
            ),
            (&[("PLUGIN_MIN_PORT", ""), ("PLUGIN_MAX_PORT", "")], (0, 0)),
            (&[("PLUGIN_MAX_PORT", "5")], (0, 5)),
            (
                &[("PLUGIN_MIN_PORT", "7"), ("PLUGIN_MAX_PORT", "7")],
                (7, 7),
            ),
            (
                &[("PLUGIN_MIN_PORT", " 8 "), ("PLUGIN_MAX_PORT", "65535")],
                (8, 65535),
            ),
        ];
        for (pairs, (min, max)) in ok {
            let range = env(pairs)
                .port_range()
                .unwrap_or_else(|e| panic!("{pairs:?}: {e}"));
            assert_eq!(
                range,
                PortRange {
                    min: *min,
                    max: *max
                },
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn bad_port_ranges_name_the_variable_and_value() {
        let bad: &[(Vars, &str)] = &[
            (
                &[("PLUGIN_MIN_PORT", "abc")],
                "PLUGIN_MIN_PORT=\"abc\": not a TCP port",
            ),
            (
                &[("PLUGIN_MAX_PORT", "70000")],
                "PLUGIN_MAX_PORT=\"70000\": not a TCP port",
            ),
            (&[("PLUGIN_MAX_PORT", "-1")], "PLUGIN_MAX_PORT=\"-1\""),
            (
                &[("PLUGIN_MIN_PORT", "20"), ("PLUGIN_MAX_PORT", "10")],
                "PLUGIN_MIN_PORT=\"20\": PLUGIN_MIN_PORT is greater than PLUGIN_MAX_PORT (10)",
            ),
        ];
        for (pairs, want) in bad {
            let err = env(pairs).port_range().expect_err("must fail").to_string();
            assert!(
                err.starts_with(want),
                "{pairs:?}: got {err:?}, want prefix {want:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn port_ranges_parse_or_name_the_variable(min in "\\PC{0,8}|[0-9]{1,6}", max in "\\PC{0,8}|[0-9]{1,6}") {
            let env = PluginEnv::from_vars([("PLUGIN_MIN_PORT", min.clone()), ("PLUGIN_MAX_PORT", max.clone())]);
            match env.port_range() {
                Ok(range) => {
                    proptest::prop_assert!(range.min <= range.max);
                    let expect = |v: &str| if v.is_empty() { Some(0) } else { v.trim().parse::<u16>().ok() };
                    proptest::prop_assert_eq!(Some(range.min), expect(&min));
                    proptest::prop_assert_eq!(Some(range.max), expect(&max));
                }
                Err(Error::InvalidEnv { var, .. }) => {
                    proptest::prop_assert!(var == PLUGIN_MIN_PORT || var == PLUGIN_MAX_PORT);
                }
                Err(other) => proptest::prop_assert!(false, "unexpected error {other}"),
            }
        }
    }

    #[test]
    fn flags_and_versions() {
        assert_eq!(env(&[]).multiplex_grpc(), None);
        assert_eq!(env(&[("PLUGIN_MULTIPLEX_GRPC", "")]).multiplex_grpc(), None);
        for yes in ["true", "1", "t", "TRUE", "True"] {
            assert_eq!(
                env(&[("PLUGIN_MULTIPLEX_GRPC", yes)]).multiplex_grpc(),
                Some(true)
            );
        }
        for no in ["false", "0", "yes", "on"] {
            assert_eq!(
                env(&[("PLUGIN_MULTIPLEX_GRPC", no)]).multiplex_grpc(),
                Some(false)
            );
        }
        assert_eq!(env(&[]).client_cert(), None);
        assert_eq!(
            env(&[("PLUGIN_CLIENT_CERT", "pem")]).client_cert(),
            Some("pem")
        );
        assert_eq!(
            env(&[("PLUGIN_PROTOCOL_VERSIONS", "2,1")])
                .protocol_versions()
                .versions,
            [2, 1]
        );
        assert!(env(&[]).protocol_versions().versions.is_empty());
    }
}
