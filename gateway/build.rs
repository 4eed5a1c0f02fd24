//! Compiles proto/inference.proto with protox (pure Rust: no protoc on the build machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    let descriptors = protox::compile(["proto/inference.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Tensor bytes stay reference-counted slices of the received message: no copy.
        .bytes(".inference")
        .compile_fds(descriptors)?;
    Ok(())
}
