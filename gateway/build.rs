//! Compiles proto/inference.proto and proto/model_config.proto with protox (pure Rust: no protoc
//! on the build machine), keeps their descriptors for reading Triton's text format and JSON at
//! run time, and embeds an rpath to libtorch as the runtimes crate's build script does for its
//! own targets.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_LIBTORCH").is_some() {
        if let Ok(libtorch) = std::env::var("LIBTORCH") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
        }
        if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
            // See runtimes/build.rs: --as-needed would drop libtorch_cuda.
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
    println!("cargo:rerun-if-changed=proto/inference.proto");
    println!("cargo:rerun-if-changed=proto/model_config.proto");
    let descriptors = protox::compile(["proto/inference.proto"], ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("inference_descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // Tensor bytes stay reference-counted slices of the received message: no copy.
        .bytes(".inference")
        .compile_fds(descriptors)?;
    Ok(())
}
