//! Write [HashiCorp go-plugin](https://github.com/hashicorp/go-plugin)
//! plugins in Rust, and host any go-plugin plugin from Rust, with a
//! blocking API on [`grpcio`] (gRPC C-core) and no async runtime.
//!
//! A go-plugin host (Terraform, OpenTofu, Nomad, or any Go program using
//! go-plugin) starts a plugin as a child process, reads one handshake line
//! from its stdout and then talks gRPC to it. This crate is both sides of
//! that contract: [`PluginServer`] makes a Rust program a plugin, and
//! [`Client`] starts and drives a plugin written in Go, Python or Rust
//! ([Hosting plugins](#hosting-plugins)).
//!
//! # How it works
//!
//! 1. The host starts the plugin with a magic cookie, the app protocol
//!    versions it speaks and a port range in the environment (see the table
//!    below).
//! 2. [`PluginServerBuilder::build`] checks the cookie, picks the highest
//!    app protocol version both sides speak, listens on a unix socket (or
//!    TCP on 127.0.0.1 within the port range), sets up AutoMTLS when the host
//!    asks, and registers your services next to the protocol's own:
//!    `grpc.health.v1.Health` with `"plugin"` SERVING (what the host's
//!    `Ping()` checks), `plugin.GRPCController` (what its `Kill()` calls) and
//!    `plugin.GRPCStdio`.
//! 3. [`PluginServer::serve`] starts the server, prints the handshake line
//!    `1|APP|unix|/tmp/pluginNNN|grpc` on stdout (nothing else is ever
//!    written there), flushes it, forwards later stdout/stderr output to the
//!    host, watches for the host's death, and blocks.
//! 4. The host calls your services. When it is done, `Kill()` calls
//!    `GRPCController/Shutdown`: the plugin answers, stops, and `serve`
//!    returns, long before the host's 2 s deadline.
//!
//! # Quick start
//!
//! A plugin crate lists `goplugin` under `[dependencies]` and
//! [`goplugin-build`](https://crates.io/crates/goplugin-build) under
//! `[build-dependencies]`, and nothing else: `build.rs` is one call,
//! `goplugin_build::compile_protos(&["proto/kv.proto"], &["proto"])`, and
//! [`include_proto!`] brings in the messages (`kv`) and the service
//! (`kv_grpc`: the `Kv` trait and `create_kv`). The plugin for go-plugin's
//! KV example, whose `kv.proto` has `Get` and `Put`:
//!
//! ```no_run
//! goplugin::include_proto!("kv");
//! use goplugin::grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};
//! use goplugin::{BlockingPool, HandshakeConfig};
//! use kv::{Empty, GetRequest, GetResponse, PutRequest};
//! use kv_grpc::{Kv, create_kv};
//!
//! const HANDSHAKE: HandshakeConfig = HandshakeConfig {
//!     protocol_version: 1,
//!     magic_cookie_key: "BASIC_PLUGIN",
//!     magic_cookie_value: "hello",
//! };
//!
//! #[derive(Clone)]
//! struct Store {
//!     pool: BlockingPool,
//! }
//!
//! impl Kv for Store {
//!     fn get(&mut self, _: RpcContext, req: GetRequest, sink: UnarySink<GetResponse>) {
//!         self.pool.unary(sink, move || {
//!             let value = std::fs::read(format!("kv_{}", req.key))
//!                 .map_err(|e| RpcStatus::with_message(RpcStatusCode::NOT_FOUND, e.to_string()))?;
//!             Ok(GetResponse { value, ..Default::default() })
//!         });
//!     }
//!
//!     fn put(&mut self, _: RpcContext, req: PutRequest, sink: UnarySink<Empty>) {
//!         self.pool.unary(sink, move || {
//!             std::fs::write(format!("kv_{}", req.key), &req.value)
//!                 .map_err(|e| RpcStatus::with_message(RpcStatusCode::INTERNAL, e.to_string()))?;
//!             Ok(Empty::default())
//!         });
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     goplugin::plugin_main(HANDSHAKE, "kv", |env| {
//!         let store = Store { pool: BlockingPool::new(8) };
//!         goplugin::PluginServer::builder(HANDSHAKE)
//!             .env(env)
//!             .service(create_kv(store))
//!             .build()?
//!             .serve()
//!     })
//! }
//! ```
//!
//! Handlers run on gRPC's completion-queue thread, and a host uses a single
//! connection: code that blocks belongs on a [`BlockingPool`], or every
//! other call of the host waits for it.
//!
//! # Streaming calls
//!
//! Server-, client- and bidirectional-streaming handlers are plain blocking
//! code too: [`BlockingPool::server_streaming`],
//! [`BlockingPool::client_streaming`] and [`BlockingPool::duplex`] run them
//! on a pool thread, where they read requests from an [`Incoming`] iterator
//! and send responses with [`Outgoing::send`] (which waits while the host
//! reads slowly). A host iterates a server's stream with [`Replies`], sends
//! a stream with [`RequestSender`], and makes a client-streaming call with
//! [`Upload`]. Each open stream holds one pool thread (about 38 KiB of
//! memory, measured with 48 streams open); for thousands of streams, use
//! grpcio's async API through the re-exported [`futures`]. The
//! `streaming-plugin` example serves all four kinds of call, and its
//! `streaming-host` calls them.
//!
//! # Calling back into the host
//!
//! Bidirectional plugins use the [`Broker`] from
//! [`PluginServerBuilder::broker`]: [`Broker::dial`] connects to a service
//! the host serves under an id, [`Broker::accept_and_serve`] serves one for
//! the host. Both work with and without AutoMTLS and multiplexing; the
//! `counter-plugin` binary is go-plugin's bidirectional example.
//!
//! # Hosting plugins
//!
//! [`Client::builder`] takes the plugin's [`HandshakeConfig`] and a
//! `std::process::Command`; [`ClientBuilder::start`] runs it with go-plugin's
//! environment, reads and checks its handshake line, connects (AutoMTLS
//! with [`ClientBuilder::auto_mtls`]), checks health `"plugin"` and opens
//! the broker and stdio streams. [`Client::channel`] is the connection for
//! the negotiated version's generated clients; [`Client::kill`], or
//! dropping the `Client`, calls the plugin's `Shutdown`, waits up to 2 s
//! and kills it. A plugin never outlives its host: it is killed when the
//! host process dies, even by SIGKILL, and so is anything it started in
//! its process group. The `kv-host` and `counter-host` binaries are
//! go-plugin's example hosts in Rust.
//!
//! # The environment
//!
//! | variable | set by the host | what the plugin does |
//! |---|---|---|
//! | magic cookie (`HandshakeConfig::magic_cookie_key`) | always | missing or wrong: [`Error::NotLaunchedByHost`], go-plugin's "This binary is a plugin" message |
//! | [`PLUGIN_PROTOCOL_VERSIONS`](env::PLUGIN_PROTOCOL_VERSIONS) | always, e.g. `1,2` | serves the highest common version; bad entries are skipped with a warning; no common version: advertises its lowest, so the host reports the mismatch |
//! | [`PLUGIN_UNIX_SOCKET_DIR`](env::PLUGIN_UNIX_SOCKET_DIR) | go-plugin ≥ 1.5 hosts with a runner | directory of the unix socket (else `TMPDIR`, else `/tmp`); a path over 107 bytes falls back to TCP |
//! | [`PLUGIN_UNIX_SOCKET_GROUP`](env::PLUGIN_UNIX_SOCKET_GROUP) | go-plugin ≥ 1.5 hosts | socket owned by that group (name or gid), mode 0660 instead of 0600 |
//! | [`PLUGIN_MIN_PORT`](env::PLUGIN_MIN_PORT), [`PLUGIN_MAX_PORT`](env::PLUGIN_MAX_PORT) | always (host default 10000–25000) | TCP only: binds the first free port of the range on 127.0.0.1; unset: any port; unparsable or min > max: [`Error::InvalidEnv`] |
//! | [`PLUGIN_CLIENT_CERT`](env::PLUGIN_CLIENT_CERT) | AutoMTLS hosts | TLS with a fresh certificate (handshake field 6) that requires and verifies exactly this client certificate; malformed: [`Error::InvalidEnv`] |
//! | [`PLUGIN_MULTIPLEX_GRPC`](env::PLUGIN_MULTIPLEX_GRPC) | go-plugin ≥ 1.6 hosts with `GRPCBrokerMultiplex` | handshake field 7 is `true`; with a true value every connection, main and brokered, is a yamux stream over the host's one connection (bridged to the gRPC servers through local sockets) |
//!
//! # Rules this crate keeps
//!
//! - stdout carries exactly one line, the handshake, written after the
//!   server listens and flushed; logs go to stderr ([`logging`]). An
//!   application that embeds a plugin prints on stdout only once
//!   [`ReadyHandle::wait`] returns: what it prints from then on reaches the
//!   host as the plugin's stdout.
//! - A closed stdout or stderr never panics the plugin.
//! - SIGINT is ignored while serving, as go-plugin plugins do: the host
//!   owns shutdown. SIGTERM and SIGHUP stop the plugin as the host's
//!   `Kill()` does (socket file removed), where a Go plugin dies of them
//!   ([`PluginServerBuilder::stop_on_signals`]). All three are given back
//!   as they were once `serve` returns (and no other server serves), so an
//!   application that embeds a plugin keeps its own signals.
//! - The library returns errors and never exits the process; the binary
//!   decides.
//! - The host's `Shutdown` (its `Kill()`) and a vanished host stop the
//!   server at once; a [`ShutdownHandle`] gives calls in progress
//!   [`PluginServerBuilder::shutdown_grace`] first.
//!
//! # Platforms
//!
//! Linux only (tested on x86_64; aarch64 expected to work, untested here):
//! on other systems the build stops with one message from the build
//! script. The README's "Platforms" says what macOS and Windows would need.
//!
//! # Features
//!
//! - `static-libs` (off by default): on Linux/glibc the final link of every
//!   binary that links goplugin takes OpenSSL and libstdc++ from their
//!   static archives. Together with a non-PIE link of the plugin binary
//!   (its own build script's choice), a plugin starts in about half the
//!   time and needs no `libssl3` at run time, but gets OpenSSL fixes only
//!   when rebuilt (see the README's "Faster start-up" and docs/security.md).
//! - `abseil-cpufreq` (off by default): has abseil, inside gRPC's core,
//!   measure the CPU's cycle-counter frequency right after the handshake,
//!   on a thread of its own, instead of in the first call that meets a
//!   contended abseil mutex (a host's `Kill()` stalled about 3 ms in half
//!   the runs). Reaches abseil's versioned C++ function through a weak
//!   reference from a C file: with another abseil nothing is called. Needs
//!   a C compiler.

#![deny(missing_docs, unsafe_code)]
#![warn(rust_2018_idioms, unreachable_pub, missing_debug_implementations)]

mod address;
mod blocking;
mod broker;
mod client;
pub mod codec;
mod controller;
pub mod env;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod health;
mod listener;
mod locks;
pub mod logging;
mod mux;
// go-plugin's own services, generated: for goplugin's tests and tools that
// speak the protocol directly, not part of the API ([`Client`] and
// [`PluginServer`] are).
#[doc(hidden)]
pub mod proto;
mod ready;
mod reattach;
mod server;
mod shutdown;
mod signals;
mod stdio;
mod streaming;
// The crate's one place for calls into the C library.
#[allow(unsafe_code)]
mod sys;
mod tls;
mod transport;
mod watchdog;
mod yamux;

pub use blocking::{BlockingPool, answer};
pub use broker::Broker;
pub use client::{Client, ClientBuilder, SecureConfig};
pub use env::PluginEnv;
pub use error::{Error, Result, Step};
/// The `futures` crate grpcio's async API is written in (sinks, streams,
/// `executor::block_on`), for handlers and hosts in grpcio's async style.
pub use futures;
pub use grpcio;
pub use handshake::{
    CORE_PROTOCOL_VERSION, HandshakeConfig, HandshakeLine, Network, ParseHandshakeError,
};
pub use health::HEALTH_SERVICE_NAME;
pub use listener::Addr;
pub use log;
pub use protobuf;
pub use ready::ReadyHandle;
pub use reattach::{PROVIDER_REGISTRIES, ReattachConfig};
pub use server::{PluginServer, PluginServerBuilder, plugin_main, serve};
pub use shutdown::ShutdownHandle;
pub use streaming::{Incoming, Outgoing, Replies, RequestSender, Upload};

/// Brings in the code `goplugin-build` generated from a proto file, named
/// as written without `.proto`: the module of its messages (`greeter`;
/// `github.com.acme.thing.proto` gives `github_com_acme_thing`) and, when
/// the file declares services, `NAME_grpc` (each service's trait,
/// `create_*` function and client).
///
/// ```text
/// // build.rs
/// fn main() -> Result<(), goplugin_build::Error> {
///     goplugin_build::compile_protos(&["proto/greeter.proto"], &["proto"])
/// }
///
/// // src/main.rs
/// goplugin::include_proto!("greeter");
/// use greeter::HelloRequest;
/// use greeter_grpc::{Greeter, create_greeter};
/// ```
///
/// A file that another imports is generated without being listed, and is
/// included next to the one that imports it (the generated code names it
/// `super::MODULE`), by its name or its path under the include directory:
/// `include_proto!("identity")` or `include_proto!("sdk/logical/identity")`.
/// Two files of one name in different directories are included by path,
/// each in a module of its own. The well-known types
/// (`google/protobuf/empty.proto`, …) need nothing: they are `protobuf`'s.
#[macro_export]
macro_rules! include_proto {
    ($name:literal) => {
        include!(concat!(env!("OUT_DIR"), "/goplugin/", $name, ".rs"));
    };
}
