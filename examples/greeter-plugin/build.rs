fn main() -> Result<(), goplugin_build::Error> {
    goplugin_build::compile_protos(&["proto/greeter.proto"], &["proto"])
}
