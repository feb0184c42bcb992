//! `terraform-provider-kv`: a Terraform/OpenTofu provider on goplugin.
//!
//! Provider `goplugin/kv`, plugin protocol 6, with a resource
//! `kv_item { key, value }` stored as `kv_<key>` files in the working
//! directory (kv-plugin's safe keys and atomic writes; changing `key`
//! replaces the item) and a data source `kv_item { key }` → `value`.
//!
//! - Run by Terraform or OpenTofu: as any provider (see the README's
//!   "Terraform and OpenTofu providers" for the CLI configuration).
//! - `terraform-provider-kv -debug`: debug mode. The provider serves until
//!   Ctrl-C and prints the `TF_REATTACH_PROVIDERS` line to export; `tofu`
//!   and `terraform` then use it instead of starting one.
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

/// The provider's address, as `TF_REATTACH_PROVIDERS` names it.
const ADDRESS: &str = "registry.opentofu.org/goplugin/kv";

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

/// Debug mode: serve until Ctrl-C, after printing how to attach.
fn debug() -> ExitCode {
    let _ = goplugin::logging::init(goplugin::log::LevelFilter::Info);
    let env = PluginEnv::from_process();
    let served = provider(&env).and_then(|provider| {
        let server = PluginServer::builder(HANDSHAKE)
            .env(env)
            .service(create_provider(provider))
            .debug(true)
            .build()
            .map_err(|err| err.to_string())?;
        let reattach = server.reattach_config().to_json();
        println!("Provider started. To attach Terraform or OpenTofu, set in their environment:");
        println!();
        println!("\tTF_REATTACH_PROVIDERS='{{\"{ADDRESS}\":{reattach}}}'");
        println!();
        println!("Ctrl-C stops the provider.");
        server.serve().map_err(|err| err.to_string())
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("terraform-provider-kv: {err}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    if std::env::args()
        .skip(1)
        .any(|arg| arg == "-debug" || arg == "--debug")
    {
        return debug();
    }
    goplugin::plugin_main(HANDSHAKE, "terraform-provider-kv", run)
}
