//! The gRPC health service go-plugin's `Ping()` checks
//! (`grpc.health.v1.Health`).
//!
//! go-plugin hosts call `Check` with the service name `"plugin"` and fail
//! on any error, so that name must be registered and SERVING (go-plugin's
//! `GRPCServiceName`). The empty name (the whole server) is SERVING too, as
//! with grpc-go's health server, which go-plugin's Go plugins use: an
//! unknown name is `NOT_FOUND`, and `Watch` sends the status now
//! (SERVICE_UNKNOWN for an unknown name) and at each change. At shutdown
//! every name becomes NOT_SERVING; unlike grpc-go, every watcher is told
//! so and its stream ends, so that no call outlives the server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use grpcio::{RpcContext, RpcStatus, RpcStatusCode, ServerStreamingSink, UnarySink, WriteFlags};

use crate::locks::lock;
use crate::proto::grpc_health::health_check_response::ServingStatus;
use crate::proto::grpc_health::{
    Health as HealthApi, HealthCheckRequest, HealthCheckResponse, create_health,
};

/// The service name go-plugin's `Ping()` checks.
pub const HEALTH_SERVICE_NAME: &str = "plugin";

/// The request go-plugin's `Ping()` makes: `Check` of [`HEALTH_SERVICE_NAME`].
pub(crate) fn plugin_check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: HEALTH_SERVICE_NAME.into(),
        ..HealthCheckRequest::default()
    }
}

/// The statuses the service reports, and a way to end them at shutdown.
#[derive(Clone, Default)]
pub(crate) struct Health {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    statuses: BTreeMap<String, ServingStatus>,
    watchers: Vec<(String, mpsc::UnboundedSender<HealthCheckResponse>)>,
    shut_down: bool,
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
        ..HealthCheckResponse::default()
    }
}

impl Health {
    /// Every name NOT_SERVING, watchers told so and their streams ended;
    /// later `Watch` calls get NOT_SERVING and an ended stream.
    pub(crate) fn shutdown(&self) {
        let mut state = lock(&self.state);
        state.shut_down = true;
        for status in state.statuses.values_mut() {
            *status = ServingStatus::NOT_SERVING;
        }
        for (_, watcher) in state.watchers.drain(..) {
            let _ = watcher.unbounded_send(response(ServingStatus::NOT_SERVING));
        }
    }
}

impl HealthApi for Health {
    fn check(
        &mut self,
        ctx: RpcContext<'_>,
        req: HealthCheckRequest,
        sink: UnarySink<HealthCheckResponse>,
    ) {
        let status = lock(&self.state).statuses.get(&req.service).copied();
        let answer = status.map(response).ok_or_else(|| {
            RpcStatus::with_message(
                RpcStatusCode::NOT_FOUND,
                format!("unknown service {:?}", req.service),
            )
        });
        crate::answer(&ctx, sink, answer);
    }

    fn watch(
        &mut self,
        ctx: RpcContext<'_>,
        req: HealthCheckRequest,
        mut sink: ServerStreamingSink<HealthCheckResponse>,
    ) {
        let (sender, mut receiver) = mpsc::unbounded();
        {
            let mut state = lock(&self.state);
            let now = state
                .statuses
                .get(&req.service)
                .copied()
                .unwrap_or(ServingStatus::SERVICE_UNKNOWN);
            let _ = sender.unbounded_send(response(now));
            // After shutdown the sender is dropped here: the stream ends
            // after its one status.
            if !state.shut_down {
                // Watchers whose calls ended go now, not at shutdown.
                state.watchers.retain(|(_, watcher)| !watcher.is_closed());
                state.watchers.push((req.service, sender));
            }
        }
        ctx.spawn(async move {
            while let Some(status) = receiver.next().await {
                if sink.send((status, WriteFlags::default())).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
    }
}

/// Builds the health service with `"plugin"` and `""` SERVING.
pub(crate) fn service() -> (grpcio::Service, Health) {
    let health = Health::default();
    {
        let mut state = lock(&health.state);
        state.statuses.insert(String::new(), ServingStatus::SERVING);
        state
            .statuses
            .insert(HEALTH_SERVICE_NAME.to_string(), ServingStatus::SERVING);
    }
    (create_health(health.clone()), health)
}
