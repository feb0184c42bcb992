//! Generates Terraform's plugin protocol 6 (the subset in `proto/`).

fn main() -> Result<(), goplugin_build::Error> {
    // Opt-in, with goplugin's `static-libs`: a position-dependent binary
    // starts faster (README "Faster start-up").
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    goplugin_build::compile_protos(&["proto/tfplugin6.proto"], &["proto"])
}
