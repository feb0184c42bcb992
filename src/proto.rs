//! Protobuf messages and grpcio stubs generated from `proto/` by `build.rs`.
//!
//! - [`kv`]: go-plugin's KV example service (`/proto.KV/Get`, `/proto.KV/Put`),
//!   used by the `kv-plugin` binary and handy for tests and hosts.
//! - [`counter`]: go-plugin's bidirectional example (`package counter`), used
//!   by the `counter-plugin` binary to show the broker.
//! - [`plugin`]: go-plugin's own protocol services (package `plugin`).

#[allow(warnings, missing_docs, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/proto/mod.rs"));
}

/// go-plugin's KV example (`package proto`): messages, the [`Kv`](kv::Kv)
/// service trait, [`create_kv`](kv::create_kv) and the [`KvClient`](kv::KvClient).
pub mod kv {
    pub use super::generated::kv::{Empty, GetRequest, GetResponse, PutRequest};
    pub use super::generated::kv_grpc::{Kv, KvClient, create_kv};
}

/// go-plugin's bidirectional example (`package counter`): the
/// [`Counter`](counter::Counter) service the plugin serves, the
/// [`AddHelper`](counter::AddHelper) the host serves on a brokered id, and
/// [`HelperLender`](counter::HelperLender), which brokers an `AddHelper` the
/// other way round.
pub mod counter {
    pub use super::generated::counter::{
        Empty, GetRequest, GetResponse, LendResponse, PutRequest, SumRequest, SumResponse,
    };
    pub use super::generated::counter_grpc::{
        AddHelper, AddHelperClient, Counter, CounterClient, HelperLender, HelperLenderClient,
        create_add_helper, create_counter, create_helper_lender,
    };
}

/// go-plugin's protocol services (`package plugin`).
pub mod plugin {
    pub use super::generated::grpc_broker::{ConnInfo, ConnInfo_Knock};
    pub use super::generated::grpc_broker_grpc::{
        GrpcBroker, GrpcBrokerClient, create_grpc_broker,
    };
    pub use super::generated::grpc_controller::Empty;
    pub use super::generated::grpc_controller_grpc::{
        GrpcController, GrpcControllerClient, create_grpc_controller,
    };
    pub use super::generated::grpc_stdio::{StdioData, StdioData_Channel};
    pub use super::generated::grpc_stdio_grpc::{GrpcStdio, GrpcStdioClient, create_grpc_stdio};
}
