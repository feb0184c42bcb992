//! grpcio service code for a proto file's services, written from its
//! descriptor: per service, a trait to implement, a `create_*` function
//! that makes it a `grpcio::Service`, and a client.
//!
//! The API is the one grpcio's own generator gives (so code written
//! against it compiles), with every name made safe: keywords escaped
//! (`rpc Type` → `type_`), no generic parameter a service could clash with,
//! every std item named by its full path, and client method names that
//! clash with each other or with the client's own (`new`, `spawn`) given
//! a trailing `_`. Wire paths are the proto's, whatever the Rust names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use protobuf::descriptor::{DescriptorProto, FileDescriptorProto, MethodDescriptorProto};

use crate::names;

/// Every message's full proto name (`.pkg.Outer.Inner`) mapped to the
/// Rust path of its type, from the generated services' module.
pub(crate) fn type_paths(files: &[FileDescriptorProto], runtime: &str) -> BTreeMap<String, String> {
    fn walk(
        messages: &[DescriptorProto],
        proto_prefix: &str,
        rust_prefix: &str,
        paths: &mut BTreeMap<String, String>,
    ) {
        for message in messages {
            let name = message.name();
            paths.insert(
                format!("{proto_prefix}{name}"),
                format!("{rust_prefix}{}", names::escape_as_protobuf(name)),
            );
            walk(
                &message.nested_type,
                &format!("{proto_prefix}{name}."),
                &format!("{rust_prefix}{}::", names::nested_module(name)),
                paths,
            );
        }
    }
    let mut paths = BTreeMap::new();
    for file in files {
        let rust = match file.name() {
            "google/protobuf/descriptor.proto" => format!("{runtime}::protobuf::descriptor::"),
            name if crate::imports::PROVIDED.contains(&name) => format!(
                "{runtime}::protobuf::well_known_types::{}::",
                names::file_module(name)
            ),
            name => format!("super::{}::", names::file_module(name)),
        };
        let proto = if file.package().is_empty() {
            ".".to_string()
        } else {
            format!(".{}.", file.package())
        };
        walk(&file.message_type, &proto, &rust, &mut paths);
    }
    paths
}

/// The service code of `file`, or `None` when it declares no service.
pub(crate) fn generate(
    file: &FileDescriptorProto,
    types: &BTreeMap<String, String>,
    runtime: &str,
) -> Result<Option<String>, String> {
    if file.service.is_empty() {
        return Ok(None);
    }
    let grpc = format!("{runtime}::grpcio");
    let mut out = String::new();
    let mut taken = BTreeSet::new();
    for service in &file.service {
        let full_name = if file.package().is_empty() {
            service.name().to_string()
        } else {
            format!("{}.{}", file.package(), service.name())
        };
        let trait_name = names::escape(&names::camel_case(service.name()));
        let client = format!("{}Client", names::camel_case(service.name()));
        let create = format!(
            "create_{}",
            names::snake_case(&names::camel_case(service.name()))
        );
        for item in [&trait_name, &client, &create] {
            if !taken.insert(item.clone()) {
                return Err(format!(
                    "service `{full_name}` would generate `{item}`, as another service of the \
                     file does: rename one of the two services"
                ));
            }
        }
        let service_constant = names::snake_case(&names::camel_case(service.name())).to_uppercase();
        let methods = methods(&service.method, types, &full_name, &service_constant)?;

        // The method descriptions.
        for m in &methods {
            let constant = &m.constant;
            let _ = writeln!(
                out,
                "const {constant}: {grpc}::Method<{req}, {resp}> = {grpc}::Method {{\n    \
                 ty: {grpc}::MethodType::{kind},\n    name: \"/{full_name}/{name}\",\n    \
                 req_mar: {grpc}::Marshaller {{ ser: {grpc}::pb_ser, de: {runtime}::codec::de }},\n    \
                 resp_mar: {grpc}::Marshaller {{ ser: {grpc}::pb_ser, de: {runtime}::codec::de }},\n}};\n",
                req = m.input,
                resp = m.output,
                kind = m.kind.grpcio(),
                name = m.proto_name,
            );
        }

        // The client.
        let _ = writeln!(
            out,
            "/// Calls the `{full_name}` service of a plugin (or host) over a\n\
             /// `grpcio::Channel`, such as `goplugin::Client::channel()`.\n\
             #[derive(Clone)]\npub struct {client} {{\n    \
             /// The underlying grpcio client.\n    pub client: {grpc}::Client,\n}}\n\n\
             impl {client} {{\n    \
             /// A client that calls over `channel`.\n    \
             pub fn new(channel: {grpc}::Channel) -> Self {{\n        \
             {client} {{ client: {grpc}::Client::new(channel) }}\n    }}\n"
        );
        for m in &methods {
            client_methods(&mut out, m, &grpc);
        }
        let _ = writeln!(
            out,
            "    /// Runs `f` on the client's completion-queue thread.\n    \
             pub fn spawn<F>(&self, f: F)\n    where\n        \
             F: ::std::future::Future<Output = ()> + ::std::marker::Send + 'static,\n    {{\n        \
             self.client.spawn(f)\n    }}\n}}\n"
        );

        // The trait.
        let _ = writeln!(
            out,
            "/// The `{full_name}` service: implement the methods you serve (the\n\
             /// others answer `UNIMPLEMENTED`) and register it with [`{create}`].\n\
             pub trait {trait_name} {{"
        );
        for m in &methods {
            let (request, sink) = match m.kind {
                Kind::Unary => (m.input.clone(), "UnarySink"),
                Kind::ClientStreaming => (
                    format!("{grpc}::RequestStream<{}>", m.input),
                    "ClientStreamingSink",
                ),
                Kind::ServerStreaming => (m.input.clone(), "ServerStreamingSink"),
                Kind::Duplex => (format!("{grpc}::RequestStream<{}>", m.input), "DuplexSink"),
            };
            let request_name = if m.kind.streams_requests() {
                "_stream"
            } else {
                "_req"
            };
            let _ = writeln!(
                out,
                "    /// `rpc {name}`: {what}.\n    \
                 fn {fun}(&mut self, ctx: {grpc}::RpcContext, {request_name}: {request}, sink: {grpc}::{sink}<{resp}>) {{\n        \
                 {grpc}::unimplemented_call!(ctx, sink)\n    }}",
                name = m.proto_name,
                what = m.kind.describe(),
                fun = m.rust,
                resp = m.output,
            );
        }
        let _ = writeln!(out, "}}\n");

        // The service.
        let _ = writeln!(
            out,
            "/// `service` as a `grpcio::Service` serving `{full_name}`, for\n\
             /// `goplugin::PluginServerBuilder::service`.\n\
             pub fn {create}(service: impl {trait_name} + ::std::marker::Send + ::std::clone::Clone + 'static) -> {grpc}::Service {{\n    \
             let mut builder = {grpc}::ServiceBuilder::new();"
        );
        for m in &methods {
            let constant = &m.constant;
            let add = match m.kind {
                Kind::Unary => "add_unary_handler",
                Kind::ClientStreaming => "add_client_streaming_handler",
                Kind::ServerStreaming => "add_server_streaming_handler",
                Kind::Duplex => "add_duplex_streaming_handler",
            };
            let _ = writeln!(
                out,
                "    let mut instance = ::std::clone::Clone::clone(&service);\n    \
                 builder = builder.{add}(&{constant}, move |ctx, request, sink| {{\n        \
                 {trait_name}::{fun}(&mut instance, ctx, request, sink)\n    }});",
                fun = m.rust,
            );
        }
        let _ = writeln!(out, "    let _ = service;\n    builder.build()\n}}\n");
    }
    Ok(Some(out))
}

/// The four kinds of RPC.
#[derive(Clone, Copy)]
enum Kind {
    Unary,
    ClientStreaming,
    ServerStreaming,
    Duplex,
}

impl Kind {
    fn grpcio(self) -> &'static str {
        match self {
            Kind::Unary => "Unary",
            Kind::ClientStreaming => "ClientStreaming",
            Kind::ServerStreaming => "ServerStreaming",
            Kind::Duplex => "Duplex",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Unary => "one request, one response",
            Kind::ClientStreaming => "a stream of requests, one response",
            Kind::ServerStreaming => "one request, a stream of responses",
            Kind::Duplex => "a stream each way",
        }
    }

    fn streams_requests(self) -> bool {
        matches!(self, Kind::ClientStreaming | Kind::Duplex)
    }

    /// The client methods each kind gets, as suffixes of the method's name.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            Kind::Unary => &["", "_opt", "_async", "_async_opt"],
            _ => &["", "_opt"],
        }
    }
}

/// One method, named for Rust.
struct Method {
    proto_name: String,
    /// The trait method and the blocking client method.
    rust: String,
    /// What the other client methods add a suffix to (`type` for `type_`).
    base: String,
    /// The constant that describes it (`METHOD_KV_GET`).
    constant: String,
    kind: Kind,
    input: String,
    output: String,
}

/// The client's own members, which no method may take.
const CLIENT_MEMBERS: &[&str] = &["new", "spawn", "clone", "client"];

fn methods(
    methods: &[MethodDescriptorProto],
    types: &BTreeMap<String, String>,
    service: &str,
    service_constant: &str,
) -> Result<Vec<Method>, String> {
    let mut taken: BTreeSet<String> = CLIENT_MEMBERS.iter().map(|m| m.to_string()).collect();
    let mut out = Vec::new();
    for method in methods {
        let kind = match (method.client_streaming(), method.server_streaming()) {
            (false, false) => Kind::Unary,
            (true, false) => Kind::ClientStreaming,
            (false, true) => Kind::ServerStreaming,
            (true, true) => Kind::Duplex,
        };
        let type_path = |name: &str| {
            types.get(name).cloned().ok_or_else(|| {
                format!(
                    "`rpc {}` of service `{service}` names the type `{name}`, which is no \
                     message of the files parsed",
                    method.name()
                )
            })
        };
        let input = type_path(method.input_type())?;
        let output = type_path(method.output_type())?;
        // A name none of whose client methods is taken: the snake-case
        // name, escaped, with `_` added until it is free.
        let mut base = names::snake_case(method.name());
        let rust = loop {
            let rust = names::escape(&base);
            let all: Vec<String> = kind
                .suffixes()
                .iter()
                .map(|suffix| {
                    if suffix.is_empty() {
                        rust.clone()
                    } else {
                        format!("{base}{suffix}")
                    }
                })
                .collect();
            if all.iter().all(|name| !taken.contains(name)) {
                taken.extend(all);
                break rust;
            }
            base.push('_');
        };
        out.push(Method {
            proto_name: method.name().to_string(),
            constant: format!("METHOD_{service_constant}_{}", rust.to_uppercase()),
            rust,
            base,
            kind,
            input,
            output,
        });
    }
    Ok(out)
}

/// The client methods of one RPC: blocking with default and with given
/// call options, and for unary calls the same returning a future.
fn client_methods(out: &mut String, m: &Method, grpc: &str) {
    let constant = &m.constant;
    let (name, base) = (&m.rust, &m.base);
    let (input, output) = (&m.input, &m.output);
    let rpc = &m.proto_name;
    match m.kind {
        Kind::Unary => {
            let _ = writeln!(
                out,
                "    /// Calls `{rpc}` and waits for its response.\n    \
                 pub fn {name}(&self, req: &{input}) -> {grpc}::Result<{output}> {{\n        \
                 self.{base}_opt(req, {grpc}::CallOption::default())\n    }}\n\n    \
                 /// Calls `{rpc}` with call options (deadline, metadata) and waits for its response.\n    \
                 pub fn {base}_opt(&self, req: &{input}, opt: {grpc}::CallOption) -> {grpc}::Result<{output}> {{\n        \
                 self.client.unary_call(&{constant}, req, opt)\n    }}\n\n    \
                 /// Calls `{rpc}`: the response is a future.\n    \
                 pub fn {base}_async(&self, req: &{input}) -> {grpc}::Result<{grpc}::ClientUnaryReceiver<{output}>> {{\n        \
                 self.{base}_async_opt(req, {grpc}::CallOption::default())\n    }}\n\n    \
                 /// Calls `{rpc}` with call options: the response is a future.\n    \
                 pub fn {base}_async_opt(&self, req: &{input}, opt: {grpc}::CallOption) -> {grpc}::Result<{grpc}::ClientUnaryReceiver<{output}>> {{\n        \
                 self.client.unary_call_async(&{constant}, req, opt)\n    }}\n"
            );
        }
        Kind::ServerStreaming => {
            let _ = writeln!(
                out,
                "    /// Calls `{rpc}`: the responses are a stream (goplugin's `Replies` iterates it).\n    \
                 pub fn {name}(&self, req: &{input}) -> {grpc}::Result<{grpc}::ClientSStreamReceiver<{output}>> {{\n        \
                 self.{base}_opt(req, {grpc}::CallOption::default())\n    }}\n\n    \
                 /// Calls `{rpc}` with call options: the responses are a stream.\n    \
                 pub fn {base}_opt(&self, req: &{input}, opt: {grpc}::CallOption) -> {grpc}::Result<{grpc}::ClientSStreamReceiver<{output}>> {{\n        \
                 self.client.server_streaming(&{constant}, req, opt)\n    }}\n"
            );
        }
        Kind::ClientStreaming | Kind::Duplex => {
            let (sender, receiver, method, helper) = if matches!(m.kind, Kind::Duplex) {
                (
                    "ClientDuplexSender",
                    "ClientDuplexReceiver",
                    "duplex_streaming",
                    "goplugin's `RequestSender` and `Replies`",
                )
            } else {
                (
                    "ClientCStreamSender",
                    "ClientCStreamReceiver",
                    "client_streaming",
                    "goplugin's `Upload`",
                )
            };
            let _ = writeln!(
                out,
                "    /// Calls `{rpc}`: a sender for the requests and a receiver for the response(s) ({helper} block on them).\n    \
                 pub fn {name}(&self) -> {grpc}::Result<({grpc}::{sender}<{input}>, {grpc}::{receiver}<{output}>)> {{\n        \
                 self.{base}_opt({grpc}::CallOption::default())\n    }}\n\n    \
                 /// Calls `{rpc}` with call options.\n    \
                 pub fn {base}_opt(&self, opt: {grpc}::CallOption) -> {grpc}::Result<({grpc}::{sender}<{input}>, {grpc}::{receiver}<{output}>)> {{\n        \
                 self.client.{method}(&{constant}, opt)\n    }}\n"
            );
        }
    }
}
