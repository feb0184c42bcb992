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
struct Service(Arc<Mutex<HelloReply>>);

impl Greeter for Service {
    fn say_hello(&mut self, ctx: RpcContext, req: HelloRequest, sink: UnarySink<HelloReply>) {
        goplugin::log::debug!("greeted {}", req.name);
        let message = format!("Hello, {}!", req.name);
        let reply = HelloReply {
            message,
            ..Default::default()
        };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = reply.clone();
        goplugin::answer(&ctx, sink, Ok(reply));
    }

    fn last_greeting(&mut self, ctx: RpcContext, _: Empty, sink: UnarySink<HelloReply>) {
        let last = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        goplugin::answer(&ctx, sink, Ok(last));
    }
}

fn main() -> std::process::ExitCode {
    goplugin::plugin_main(HANDSHAKE, "greeter-plugin", |env| {
        let service = create_greeter(Service::default());
        PluginServer::builder(HANDSHAKE)
            .env(env)
            .service(service)
            .build()?
            .serve()
    })
}
