//! `terraform-provider-kv`: a Terraform/OpenTofu provider on goplugin.
//!
//! Provider `goplugin/kv`, plugin protocol 6, with a resource
//! `kv_item { key, value }` stored as `kv_<key>` files in the working
//! directory (kv-plugin's safe keys and atomic writes; changing `key`
//! replaces the item) and a data source `kv_item { key }` → `value`.
//!
//! - Run by Terraform or OpenTofu: as any provider (see
//!   docs/terraform-and-opentofu.md for each tool's CLI configuration).
//! - `terraform-provider-kv -debug [--address ADDRESS]`: debug mode. The
//!   provider serves until Ctrl-C and prints the `TF_REATTACH_PROVIDERS`
//!   line to export; `terraform` and `tofu` then use it instead of starting
//!   one. `ADDRESS` is the `source` configurations give the provider:
//!   `goplugin/kv` by default (the crate's name after `terraform-provider-`),
//!   keyed under both registry.terraform.io and registry.opentofu.org.
//!
//! Settings: `KV_PROVIDER_APPLY_DELAY_MS` makes every apply wait that long
//! before writing (0 by default), a slow apply to show `StopProvider`.

mod provider;
mod schema;
mod value;

goplugin::include_proto!("tfplugin6");

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use goplugin::{HandshakeConfig, PluginEnv, PluginServer};
use kv_plugin::store::{Durability, Store};

use crate::provider::KvProvider;
use crate::tfplugin6_grpc::create_provider;

/// Terraform's and OpenTofu's handshake, protocol 6.
const HANDSHAKE: HandshakeConfig = HandshakeConfig {
    protocol_version: 6,
    magic_cookie_key: "TF_PLUGIN_MAGIC_COOKIE",
    magic_cookie_value: "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2",
};

/// The namespace of the provider's address, `goplugin/kv`.
const NAMESPACE: &str = "goplugin";

/// The provider's address, `namespace/type`, the type being the crate's
/// name after `terraform-provider-`, as Terraform names provider binaries.
fn default_address() -> String {
    let name = env!("CARGO_PKG_NAME");
    let kind = name.strip_prefix("terraform-provider-").unwrap_or(name);
    format!("{NAMESPACE}/{kind}")
}

/// Concurrent applies and reads; OpenTofu runs 10 at a time by default.
const WORKERS: usize = 16;

/// The largest value a resource may hold.
const MAX_VALUE: usize = 4 * 1024 * 1024;

fn provider(env: &PluginEnv) -> Result<KvProvider, String> {
    let delay = match env.get("KV_PROVIDER_APPLY_DELAY_MS").unwrap_or("") {
        "" => 0,
        text => text
            .parse()
            .map_err(|_| format!("KV_PROVIDER_APPLY_DELAY_MS={text:?}: must be milliseconds"))?,
    };
    let store = Store::open(Path::new("."), Durability::Durable, MAX_VALUE, b"")
        .map_err(|err| format!("cannot open the working directory as a store: {err}"))?;
    Ok(KvProvider::new(
        store,
        WORKERS,
        Duration::from_millis(delay),
    ))
}

fn run(env: PluginEnv) -> Result<(), String> {
    let service = create_provider(provider(&env)?);
    PluginServer::builder(HANDSHAKE)
        .env(env)
        .service(service)
        .build()
        .and_then(PluginServer::serve)
        .map_err(|err| err.to_string())
}

/// Debug mode at `address`: serve until Ctrl-C, after printing how to
/// attach.
fn debug(address: String) -> Result<(), String> {
    let _ = goplugin::logging::init(goplugin::log::LevelFilter::Info);
    let env = PluginEnv::from_process();
    let provider = provider(&env)?;
    PluginServer::builder(HANDSHAKE)
        .env(env)
        .service(create_provider(provider))
        .debug_provider(address)
        .build()
        .and_then(PluginServer::serve)
        .map_err(|err| err.to_string())
}

/// The arguments: debug mode and its address, or `None` to run as a
/// plugin (a host gives none).
fn debug_address(args: impl Iterator<Item = String>) -> Result<Option<String>, String> {
    let mut debug = false;
    let mut address = None;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-debug" | "--debug" => debug = true,
            "-address" | "--address" => match args.next() {
                Some(value) => address = Some(value),
                None => return Err(format!("{arg} needs a value, such as {arg} goplugin/kv")),
            },
            other => match other
                .strip_prefix("--address=")
                .or_else(|| other.strip_prefix("-address="))
            {
                Some(value) => address = Some(value.to_string()),
                None => {
                    return Err(format!(
                        "unknown argument {other:?}; usage: terraform-provider-kv \
                         [-debug [--address NAMESPACE/TYPE]]"
                    ));
                }
            },
        }
    }
    match (debug, address) {
        (true, address) => Ok(Some(address.unwrap_or_else(default_address))),
        (false, None) => Ok(None),
        (false, Some(_)) => Err("--address is for -debug mode: add -debug".to_string()),
    }
}

fn main() -> ExitCode {
    match debug_address(std::env::args().skip(1)) {
        Ok(None) => goplugin::plugin_main(HANDSHAKE, "terraform-provider-kv", run),
        Ok(Some(address)) => match debug(address) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("terraform-provider-kv: {err}");
                ExitCode::FAILURE
            }
        },
        Err(err) => {
            eprintln!("terraform-provider-kv: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<String>, String> {
        debug_address(args.iter().map(|arg| arg.to_string()))
    }

    #[test]
    fn the_address_is_the_crates_unless_given() {
        assert_eq!(default_address(), "goplugin/kv");
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&["-debug"]), Ok(Some("goplugin/kv".into())));
        assert_eq!(
            parse(&["--debug", "--address", "example.com/me/kv"]),
            Ok(Some("example.com/me/kv".into()))
        );
        assert_eq!(
            parse(&["-address=me/kv", "-debug"]),
            Ok(Some("me/kv".into()))
        );
        assert!(
            parse(&["--address", "me/kv"])
                .unwrap_err()
                .contains("add -debug")
        );
        assert!(
            parse(&["-debug", "--address"])
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            parse(&["-debgu"])
                .unwrap_err()
                .contains("unknown argument \"-debgu\"")
        );
    }
}
