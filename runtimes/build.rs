//! Embeds an rpath to libtorch, so that binaries, tests and examples run without
//! LD_LIBRARY_PATH. The gateway's build script does the same for the gateway's binaries.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_LIBTORCH").is_none() {
        return;
    }
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // rustc links with --as-needed, which drops libtorch_cuda (nothing calls into it
        // directly) and with it libtorch's CUDA support.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
