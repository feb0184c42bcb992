//! The gRPC health service go-plugin's `Ping()` checks.
//!
//! go-plugin hosts call `grpc.health.v1.Health/Check` with the service name
//! `"plugin"` and fail on any error, so that name must be registered and
//! SERVING (go-plugin's `GRPCServiceName`). The empty name (the whole
//! server) is SERVING too, as with grpc-go's health server.

use grpcio_health::{HealthService, ServingStatus};

/// The service name go-plugin's `Ping()` checks.
pub const HEALTH_SERVICE_NAME: &str = "plugin";

/// Builds the health service with `"plugin"` and `""` SERVING. The returned
/// [`HealthService`] flips them to NOT_SERVING and ends watchers on shutdown.
pub(crate) fn service() -> (grpcio::Service, HealthService) {
    let health = HealthService::default();
    health.set_serving_status("", ServingStatus::Serving);
    health.set_serving_status(HEALTH_SERVICE_NAME, ServingStatus::Serving);
    (grpcio_health::create_health(health.clone()), health)
}
