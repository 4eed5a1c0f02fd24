//! Writes a throwaway certificate authority and certificates signed by it, for tests of TLS
//! with standard clients (`scripts/test` runs Triton's clients over TLS with them):
//! DIR/ca.pem, DIR/server.pem and DIR/server-key.pem (for `localhost` and 127.0.0.1), and
//! DIR/client.pem and DIR/client-key.pem.
//!
//! cargo run --example test_pki -- DIR

#![allow(clippy::expect_used)]

// The example needs the files, not the paths the tests read back.
#[allow(dead_code)]
#[path = "../tests/it/common/pki.rs"]
mod pki;

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: test_pki DIR"));
    pki::make_pki(&dir);
}
