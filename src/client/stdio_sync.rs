//! go-plugin's `SyncStdout`/`SyncStderr`: what the plugin prints after
//! its handshake, through `plugin.GRPCStdio`, to the host's sinks.

use std::sync::mpsc;
use std::thread;

use futures::StreamExt;
use grpcio::RpcStatusCode;

use super::output::Sink;
use crate::proto::plugin::GrpcStdioClient;
use crate::proto::plugin::stdio_data::Channel as StdioChannel;

/// The host's subscription to `plugin.GRPCStdio`, on a thread of its own.
pub(super) struct StdioSubscription {
    /// Dropped to end the subscription.
    pub(super) cancel: futures::channel::oneshot::Sender<()>,
    /// Disconnected when the thread has ended.
    pub(super) done: mpsc::Receiver<()>,
}

/// Subscribes to `plugin.GRPCStdio`, as go-plugin's host does in every
/// `Client()`, writing what arrives to the sinks, on a thread of its own
/// (a sink may block); with no sink, what arrives is dropped on gRPC's
/// thread. A plugin without the service (go-plugin before 1.1, Python's
/// example) is logged at debug.
pub(super) fn subscribe_stdio(
    channel: &grpcio::Channel,
    mut stdout: Option<Sink>,
    mut stderr: Option<Sink>,
    name: String,
) -> Option<StdioSubscription> {
    let client = GrpcStdioClient::new(channel.clone());
    let mut stream = match client.stream_stdio(&protobuf::well_known_types::empty::Empty::new()) {
        Ok(stream) => stream,
        Err(err) => {
            log::warn!(
                "plugin {name}: stdio service not available, stdout/stderr syncing unavailable: {err}"
            );
            return None;
        }
    };
    let (cancel, cancelled) = futures::channel::oneshot::channel::<()>();
    let (finished, done) = mpsc::channel::<()>();
    let no_sink = stdout.is_none() && stderr.is_none();
    let receive = async move {
        let _finished = finished;
        let mut cancelled = cancelled;
        loop {
            let item = match futures::future::select(stream.next(), &mut cancelled).await {
                futures::future::Either::Left((item, _)) => item,
                futures::future::Either::Right(_) => break,
            };
            let data = match item {
                Some(Ok(data)) => data,
                Some(Err(grpcio::Error::RpcFailure(status)))
                    if status.code() == RpcStatusCode::UNIMPLEMENTED =>
                {
                    log::debug!(
                        "plugin {name}: no plugin.GRPCStdio service, stdout/stderr syncing \
                         unavailable"
                    );
                    break;
                }
                Some(Err(err)) => {
                    log::debug!("plugin {name}: stdio stream ended: {err}");
                    break;
                }
                None => break,
            };
            let sink = match data.channel.enum_value() {
                Ok(StdioChannel::STDOUT) => &mut stdout,
                Ok(StdioChannel::STDERR) => &mut stderr,
                _ => {
                    log::warn!("plugin {name}: unknown stdio channel {:?}", data.channel);
                    continue;
                }
            };
            if let Some(out) = sink
                && out
                    .write_all(&data.data)
                    .and_then(|()| out.flush())
                    .is_err()
            {
                *sink = None;
            }
        }
    };
    if no_sink {
        client.spawn(receive);
        return Some(StdioSubscription { cancel, done });
    }
    let started = thread::Builder::new()
        .name("goplugin-stdio".into())
        .spawn(move || futures::executor::block_on(receive));
    match started {
        Ok(_) => Some(StdioSubscription { cancel, done }),
        Err(err) => {
            log::warn!("plugin: cannot start the stdio thread: {err}");
            None
        }
    }
}
