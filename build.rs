//! Generates the protobuf messages and grpcio service stubs from `proto/`.
//!
//! No `protoc` binary is needed: `protobuf-parse` (pure Rust) parses the
//! `.proto` files, its descriptors are handed to the protobuf 2 code generator
//! (the codec grpcio's `protobuf-codec` feature uses) and to grpcio's service
//! generator. Everything is written to `OUT_DIR/proto`.
//!
//! With the `static-libs` feature (default) on Linux/glibc, it also makes
//! the final link take OpenSSL and libstdc++ from their static archives,
//! and links this package's own binaries non-PIE: see [`static_libs`].

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
    if let Err(message) = generate().and_then(|()| static_libs()) {
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

/// Static OpenSSL and libstdc++, non-PIE binaries: a plugin starts faster.
///
/// grpcio-sys asks for `-lssl -lcrypto -lstdc++` as shared libraries.
/// Resolving their thousands of symbols at every start, plus relocating a
/// position-independent binary, is most of what a plugin does before
/// `main` (measured: 7.3 ms → 3.3 ms from launch to exit of a `kv-plugin`
/// that finds no cookie). A search directory holding only the static
/// archives, put before the system's, makes the linker pick them; nothing
/// is rebuilt. The binaries no longer need libssl3 at run time, and get
/// OpenSSL fixes only when rebuilt (README, "Security").
///
/// `-no-pie` applies to this package's binaries (kv-plugin,
/// counter-plugin) only, never to a crate that depends on goplugin: Go
/// links its plugins the same way.
///
/// Where an archive is missing (no `libssl-dev`), the link stays dynamic
/// and cargo prints a warning.
fn static_libs() -> Result<(), String> {
    println!("cargo:rerun-if-env-changed=CC");
    let wanted = std::env::var_os("CARGO_FEATURE_STATIC_LIBS").is_some()
        && std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !wanted {
        return Ok(());
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?)
        .join("static-libs");
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    for archive in ["libssl.a", "libcrypto.a", "libstdc++.a"] {
        let Some(found) = find_archive(&cc, archive) else {
            println!(
                "cargo:warning=goplugin: {archive} not found by `{cc} -print-file-name`; \
                 linking OpenSSL and libstdc++ dynamically (install libssl-dev and g++ \
                 for static ones)"
            );
            return Ok(());
        };
        let link = dir.join(archive);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&found, &link)
            .map_err(|e| format!("cannot link {} to {}: {e}", link.display(), found.display()))?;
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-arg-bins=-no-pie");
    Ok(())
}

/// Where the C compiler finds `archive`, if it does.
fn find_archive(cc: &str, archive: &str) -> Option<PathBuf> {
    let out = std::process::Command::new(cc)
        .arg(format!("-print-file-name={archive}"))
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // Not found, the compiler echoes the bare name back.
    (out.status.success() && path.is_absolute() && path.is_file()).then_some(path)
}
