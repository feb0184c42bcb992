//! The protocol services a go-plugin plugin serves besides its own:
//! go-plugin's (package `plugin`) and gRPC's health checking, generated
//! from `proto/` by `build.rs` with goplugin-build, the generator plugin
//! crates use for their own services.

mod generated {
    include!(concat!(env!("OUT_DIR"), "/goplugin/health.rs"));
    include!(concat!(env!("OUT_DIR"), "/goplugin/grpc_controller.rs"));
    include!(concat!(env!("OUT_DIR"), "/goplugin/grpc_stdio.rs"));
    include!(concat!(env!("OUT_DIR"), "/goplugin/grpc_broker.rs"));
}

/// gRPC's health checking protocol (`package grpc.health.v1`), which
/// go-plugin's `Ping()` calls: `Check` with the service name `"plugin"`.
pub mod grpc_health {
    pub use super::generated::health::{
        HealthCheckRequest, HealthCheckResponse, health_check_response,
    };
    pub use super::generated::health_grpc::{Health, HealthClient, create_health};
}

/// go-plugin's protocol services (`package plugin`): what a host calls
/// besides the plugin's own services.
pub mod plugin {
    pub use super::generated::grpc_broker::{ConnInfo, conn_info};
    pub use super::generated::grpc_broker_grpc::{
        GrpcBroker, GrpcBrokerClient, create_grpc_broker,
    };
    pub use super::generated::grpc_controller::Empty;
    pub use super::generated::grpc_controller_grpc::{
        GrpcController, GrpcControllerClient, create_grpc_controller,
    };
    pub use super::generated::grpc_stdio::{StdioData, stdio_data};
    pub use super::generated::grpc_stdio_grpc::{GrpcStdio, GrpcStdioClient, create_grpc_stdio};
}
