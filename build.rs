//! Generates the protobuf messages and grpcio service stubs from `proto/`.
//!
//! No `protoc` binary is needed: `protobuf-parse` (pure Rust) parses the
//! `.proto` files, its descriptors are handed to the protobuf 2 code generator
//! (the codec grpcio's `protobuf-codec` feature uses) and to grpcio's service
//! generator. Everything is written to `OUT_DIR/proto`.

use std::fs;
use std::path::{Path, PathBuf};

/// The files to compile, relative to `proto/`.
const PROTOS: &[&str] = &[
    "kv/kv.proto",
    "counter/counter.proto",
    "plugin/grpc_controller.proto",
    "plugin/grpc_stdio.proto",
    "plugin/grpc_broker.proto",
];

fn main() {
    if let Err(message) = generate() {
        // A build script reports failure by exiting non-zero; the message is
        // what the person running cargo sees.
        eprintln!("error: goplugin build script: {message}");
        std::process::exit(1);
    }
}

fn generate() -> Result<(), String> {
    let out_dir =
        PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?).join("proto");
    fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;

    let inputs: Vec<PathBuf> = PROTOS.iter().map(|p| Path::new("proto").join(p)).collect();
    println!("cargo:rerun-if-changed=build.rs");
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
    }

    let parsed = protobuf_parse::Parser::new()
        .pure()
        .include("proto")
        .inputs(&inputs)
        .parse_and_typecheck()
        .map_err(|e| format!("cannot parse {PROTOS:?}: {e:#}"))?;

    // protobuf-parse speaks rust-protobuf 3; the generators speak 2. The
    // descriptor's wire format is the bridge between the two.
    let mut descriptors = Vec::new();
    for file in &parsed.file_descriptors {
        let bytes = protobuf3::Message::write_to_bytes(file)
            .map_err(|e| format!("cannot encode descriptor of {}: {e}", file.name()))?;
        let file: protobuf::descriptor::FileDescriptorProto =
            protobuf::Message::parse_from_bytes(&bytes)
                .map_err(|e| format!("cannot decode descriptor: {e}"))?;
        descriptors.push(file);
    }
    let names: Vec<String> = PROTOS.iter().map(|p| p.to_string()).collect();

    protobuf_codegen::gen_and_write(
        &descriptors,
        &names,
        &out_dir,
        &protobuf_codegen::Customize::default(),
    )
    .map_err(|e| format!("cannot generate messages: {e}"))?;

    let mut modules = Vec::new();
    for name in &names {
        let stem = Path::new(name)
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| format!("bad proto file name {name}"))?;
        modules.push(stem.to_string());
    }
    for result in grpcio_compiler::codegen::r#gen(&descriptors, &names) {
        let path = out_dir.join(&result.name);
        fs::write(&path, &result.content)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if let Some(stem) = Path::new(&result.name).file_stem().and_then(|s| s.to_str()) {
            modules.push(stem.to_string());
        }
    }

    let mut mod_rs: String = modules.iter().map(|m| format!("pub mod {m};\n")).collect();
    // grpcio's generator names google/protobuf/empty.proto's message
    // `super::empty::Empty`; protobuf 2 ships it as a well-known type.
    mod_rs.push_str("pub mod empty {\n    pub use ::protobuf::well_known_types::Empty;\n}\n");
    let path = out_dir.join("mod.rs");
    fs::write(&path, mod_rs).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
