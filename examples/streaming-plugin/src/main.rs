//! The `streaming.Numbers` plugin: each RPC is one kind of gRPC call, and
//! each handler is plain blocking code on a pool thread.

use goplugin::grpcio::{
    ClientStreamingSink, DuplexSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode,
    ServerStreamingSink, UnarySink,
};
use goplugin::{BlockingPool, PluginServer};
use streaming_plugin::proto::streaming::{Number, Range};
use streaming_plugin::proto::streaming_grpc::{Numbers, create_numbers};
use streaming_plugin::{HANDSHAKE, MAX_COUNT};

#[derive(Clone)]
struct Service {
    /// Each call, streams included, holds one of its threads while it
    /// runs: this many calls run at once, the next ones wait.
    pool: BlockingPool,
}

fn number(value: i64) -> Number {
    Number {
        value,
        ..Default::default()
    }
}

fn overflow() -> RpcStatus {
    RpcStatus::with_message(
        RpcStatusCode::OUT_OF_RANGE,
        "the total overflows int64".into(),
    )
}

impl Numbers for Service {
    fn square(&mut self, ctx: RpcContext, req: Number, sink: UnarySink<Number>) {
        // Quick and non-blocking: answered on gRPC's thread.
        let square = req
            .value
            .checked_mul(req.value)
            .map(number)
            .ok_or_else(overflow);
        goplugin::answer(&ctx, sink, square);
    }

    fn count(&mut self, _: RpcContext, req: Range, sink: ServerStreamingSink<Number>) {
        self.pool.server_streaming(sink, move |out| {
            if req.to >= req.from && req.to - req.from >= MAX_COUNT {
                return Err(RpcStatus::with_message(
                    RpcStatusCode::INVALID_ARGUMENT,
                    format!("a range of at most {MAX_COUNT} numbers"),
                ));
            }
            for value in req.from..=req.to {
                // Blocks while the host reads slower than we send; an
                // error means the host cancelled: `?` ends the handler.
                out.send(number(value))?;
            }
            Ok(())
        });
    }

    fn sum(
        &mut self,
        _: RpcContext,
        numbers: RequestStream<Number>,
        sink: ClientStreamingSink<Number>,
    ) {
        self.pool.client_streaming(numbers, sink, |numbers| {
            let mut total: i64 = 0;
            for n in numbers {
                total = total.checked_add(n?.value).ok_or_else(overflow)?;
            }
            Ok(number(total))
        });
    }

    fn totals(&mut self, _: RpcContext, numbers: RequestStream<Number>, sink: DuplexSink<Number>) {
        self.pool.duplex(numbers, sink, |numbers, out| {
            let mut total: i64 = 0;
            for n in numbers {
                total = total.checked_add(n?.value).ok_or_else(overflow)?;
                out.send(number(total))?;
            }
            Ok(())
        });
    }
}

fn main() -> std::process::ExitCode {
    goplugin::plugin_main(HANDSHAKE, "streaming-plugin", |env| {
        // STREAMING_PLUGIN_THREADS: how many calls run at once (default 64).
        let threads = std::env::var("STREAMING_PLUGIN_THREADS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(64);
        let service = Service {
            pool: BlockingPool::new(threads),
        };
        PluginServer::builder(HANDSHAKE)
            .env(env)
            .service(create_numbers(service))
            .build()?
            .serve()
    })
}
