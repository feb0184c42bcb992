//! Generates the protocol services (go-plugin's controller, stdio and
//! broker, gRPC's health) from `proto/` with goplugin-build, the same generator plugin
//! crates use, and, with the opt-in `static-libs` feature on Linux/glibc,
//! makes final links take OpenSSL and libstdc++ from their static archives:
//! see [`static_libs`].

use std::fs;
use std::path::PathBuf;

/// The example protocols the documentation's examples serve and call
/// (copies of `examples/kv-plugin`'s and `examples/counter-plugin`'s, which
/// a test keeps equal): generated for `goplugin::include_proto!` in doc
/// tests, as a plugin crate's build script would, and never compiled into
/// the library. The package's doc tests then need no other crate.
const DOC_PROTOS: &[&str] = &["proto/doc/kv.proto", "proto/doc/counter.proto"];

/// The protocol files, as vendored in `proto/`.
const PROTOS: &[&str] = &[
    "proto/grpc/health.proto",
    "proto/plugin/grpc_controller.proto",
    "proto/plugin/grpc_stdio.proto",
    "proto/plugin/grpc_broker.proto",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(message) = supported_platform() {
        eprintln!("error: goplugin: {message}");
        std::process::exit(1);
    }
    let generated = goplugin_build::Builder::new()
        .runtime_path("crate")
        .compile(PROTOS, &["proto/plugin", "proto/grpc"])
        // One at a time: both are go-plugin's `package proto`, with the
        // same message names.
        .and_then(|()| {
            DOC_PROTOS.iter().try_for_each(|proto| {
                goplugin_build::Builder::new().compile(&[*proto], &["proto/doc"])
            })
        })
        .map_err(|e| e.to_string());
    if let Err(message) = generated.and_then(|()| static_libs()) {
        // A build script reports failure by exiting non-zero; the message is
        // what the person running cargo sees.
        eprintln!("error: goplugin build script: {message}");
        std::process::exit(1);
    }
    #[cfg(feature = "abseil-cpufreq")]
    abseil_cpufreq();
}

/// Linux only: one clear message on other systems, before anything else
/// of goplugin's fails to compile there.
fn supported_platform() -> Result<(), String> {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        return Ok(());
    }
    Err(format!(
        "goplugin builds for Linux only, and this target's system is {os:?}: the plugin's \
         and the host's process handling (process groups led by a supervisor, getrandom, \
         close_range, /proc, SOCK_CLOEXEC sockets) is written for Linux. The README's \
         \"Platforms\" says what macOS and Windows support would need."
    ))
}

/// The `abseil-cpufreq` feature: compiles the C shim that calls abseil's
/// frequency measurement through a weak reference (csrc/absl_cpufreq.c).
#[cfg(feature = "abseil-cpufreq")]
fn abseil_cpufreq() {
    println!("cargo:rerun-if-changed=csrc/absl_cpufreq.c");
    cc::Build::new()
        .file("csrc/absl_cpufreq.c")
        .compile("goplugin_absl_cpufreq");
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
/// The search directory reaches the final link of every binary that links
/// goplugin, which is why the feature is off by default. A binary also
/// starts faster linked non-PIE (`-no-pie`, as Go links its plugins); a
/// dependency cannot choose that for a binary, so a plugin crate that wants
/// it says so in its own build script (README "Faster start-up").
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
