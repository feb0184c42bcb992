//! `plugin.GRPCController`: how a go-plugin host stops its plugin.
//!
//! The host's `Kill()` calls `Shutdown`, ignores the answer, and waits 2 s
//! for the process to exit before it sends SIGKILL. The plugin answers first,
//! then stops serving, so the host sees a clean call and a prompt exit.
//! Mirrors go-plugin's `grpc_controller.go`.

use futures::FutureExt;
use grpcio::{RpcContext, UnarySink};

use crate::proto::plugin::{Empty, GrpcController, create_grpc_controller};
use crate::server::ShutdownHandle;

#[derive(Clone)]
struct Controller {
    shutdown: ShutdownHandle,
}

impl GrpcController for Controller {
    fn shutdown(&mut self, ctx: RpcContext<'_>, _req: Empty, sink: UnarySink<Empty>) {
        let handle = self.shutdown.clone();
        // Stop only once the answer is on its way (or the call is gone).
        ctx.spawn(sink.success(Empty::new()).map(move |_| handle.shutdown()));
    }
}

/// The controller service, wired to `shutdown`.
pub(crate) fn service(shutdown: ShutdownHandle) -> grpcio::Service {
    create_grpc_controller(Controller { shutdown })
}
