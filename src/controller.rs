//! `plugin.GRPCController`: how a go-plugin host stops its plugin.
//!
//! The host's `Kill()` calls `Shutdown`, ignores the answer, closes its
//! connection and waits 2 s for the process to exit before it sends SIGKILL.
//! The plugin answers first, then stops serving without a grace period
//! (calls still in progress have lost their caller with that connection),
//! so the host sees a clean call and a prompt exit. Mirrors go-plugin's
//! `grpc_controller.go`, whose `Shutdown` calls the gRPC server's `Stop()`.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use grpcio::{RpcContext, UnarySink};

use crate::proto::plugin::{Empty, GrpcController, create_grpc_controller};
use crate::server::ShutdownHandle;
use crate::stdio;

/// How long `Shutdown` waits for the plugin's last output to be forwarded.
const STDIO_FLUSH: Duration = Duration::from_millis(100);

#[derive(Clone)]
struct Controller {
    shutdown: ShutdownHandle,
    stdio: Arc<stdio::Shared>,
}

impl GrpcController for Controller {
    fn shutdown(&mut self, ctx: RpcContext<'_>, _req: Empty, sink: UnarySink<Empty>) {
        // The host closes the connection as soon as it has the answer: what
        // the plugin printed must be on its way to the host before that.
        self.stdio.flush(STDIO_FLUSH);
        let handle = self.shutdown.clone();
        // Stop only once the answer is on its way (or the call is gone).
        ctx.spawn(
            sink.success(Empty::new())
                .map(move |_| handle.shutdown_now()),
        );
    }
}

/// The controller service, wired to `shutdown`.
pub(crate) fn service(shutdown: ShutdownHandle, stdio: Arc<stdio::Shared>) -> grpcio::Service {
    create_grpc_controller(Controller { shutdown, stdio })
}
