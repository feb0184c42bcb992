//! `plugin.GRPCController`: how a go-plugin host stops its plugin.
//!
//! The host's `Kill()` calls `Shutdown`, ignores the answer, closes its
//! connection and waits 2 s for the process to exit before it sends SIGKILL.
//! The plugin answers first, then stops serving without a grace period
//! (calls still in progress have lost their caller with that connection),
//! so the host sees a clean call and a prompt exit. Mirrors go-plugin's
//! `grpc_controller.go`, whose `Shutdown` calls the gRPC server's `Stop()`.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use futures::FutureExt;
use grpcio::{RpcContext, UnarySink};

use crate::proto::plugin::{Empty, GrpcController, create_grpc_controller};
use crate::shutdown::ShutdownHandle;
use crate::stdio;

/// How long `Shutdown` waits for the plugin's last output to be written to
/// the stdio stream.
const STDIO_FLUSH: Duration = Duration::from_millis(100);

#[derive(Clone)]
struct Controller {
    shutdown: ShutdownHandle,
    stdio: Arc<stdio::Shared>,
}

impl GrpcController for Controller {
    fn shutdown(&mut self, ctx: RpcContext<'_>, _req: Empty, sink: UnarySink<Empty>) {
        // The host closes the connection as soon as it has the answer: what
        // the plugin printed must be written to the stdio stream before
        // that.
        if !self.stdio.pending() {
            let handle = self.shutdown.clone();
            // Stop only once the answer is on its way (or the call is gone).
            ctx.spawn(
                sink.success(Empty::new())
                    .map(move |_| handle.shutdown_now()),
            );
            return;
        }
        // The wait is on a thread of its own: this completion-queue thread
        // is the one that writes the stream.
        let stdio = Arc::clone(&self.stdio);
        let handle = self.shutdown.clone();
        let spawned = thread::Builder::new()
            .name("goplugin-shutdown".into())
            .spawn(move || {
                if !stdio.flush(STDIO_FLUSH) {
                    log::warn!(
                        "output printed before the host's Shutdown was not all written to the host within {} ms; stopping anyway",
                        STDIO_FLUSH.as_millis()
                    );
                }
                let _ = futures::executor::block_on(sink.success(Empty::new()));
                handle.shutdown_now();
            });
        if let Err(err) = spawned {
            // The call is dropped unanswered; the host goes on with its Kill.
            log::warn!("cannot answer the host's Shutdown: {err}; stopping now");
            self.shutdown.shutdown_now();
        }
    }
}

/// The controller service, wired to `shutdown`.
pub(crate) fn service(shutdown: ShutdownHandle, stdio: Arc<stdio::Shared>) -> grpcio::Service {
    create_grpc_controller(Controller { shutdown, stdio })
}
