//! Generates `streaming.Numbers` from `proto/` (goplugin-build).

fn main() -> Result<(), goplugin_build::Error> {
    goplugin_build::compile_protos(&["proto/streaming.proto"], &["proto"])
}
