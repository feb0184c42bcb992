//! goplugin's integration tests, in one test binary (each extra binary would
//! link gRPC's C++ core again).
//!
//! Needs the go-plugin host fixtures and the Python reference, which
//! `make test` builds (`make hosts python-ref` alone also works).

mod broker;
mod codegen;
mod go_examples;
mod host_lifecycle;
mod hostile;
mod kv_store;
mod library;
mod matrix;
mod oversize;
mod plugin_cli;
mod rust_host;
mod streaming;
mod support;
mod terraform;
mod transport;
mod user_crate;
