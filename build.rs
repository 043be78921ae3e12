//! Compiles `proto/sparkplug_b.proto` with protox (a pure-Rust protobuf
//! compiler), so no `protoc` binary is needed on the build machine or in
//! cross-compilation images.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["sparkplug_b.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
