//! A go-plugin plugin for one's own `.proto`: the README's "Your first plugin".
goplugin::include_proto!("greeter");

use std::sync::{Arc, Mutex};

use goplugin::grpcio::{RpcContext, UnarySink};
use goplugin::protobuf::well_known_types::empty::Empty;
use goplugin::{HandshakeConfig, PluginServer};
use greeter::{HelloReply, HelloRequest};
use greeter_grpc::{Greeter, create_greeter};

const HANDSHAKE: HandshakeConfig = HandshakeConfig {
    protocol_version: 1,
    magic_cookie_key: "GREETER_PLUGIN",
    magic_cookie_value: "hi",
};

#[derive(Clone, Default)]
struct Service {
    last: Arc<Mutex<String>>,
}

impl Greeter for Service {
    fn say_hello(&mut self, ctx: RpcContext, req: HelloRequest, sink: UnarySink<HelloReply>) {
        let message = format!("Hello, {}!", req.name);
        goplugin::log::info!("greeted {}", req.name);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = message.clone();
        goplugin::answer(
            &ctx,
            sink,
            Ok(HelloReply {
                message,
                ..Default::default()
            }),
        );
    }

    fn last_greeting(&mut self, ctx: RpcContext, _: Empty, sink: UnarySink<HelloReply>) {
        let message = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        goplugin::answer(
            &ctx,
            sink,
            Ok(HelloReply {
                message,
                ..Default::default()
            }),
        );
    }
}

fn main() -> std::process::ExitCode {
    goplugin::plugin_main(HANDSHAKE, "greeter-plugin", |env| {
        PluginServer::builder(HANDSHAKE)
            .env(env)
            .service(create_greeter(Service::default()))
            .build()?
            .serve()
    })
}
