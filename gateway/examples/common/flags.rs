//! `--name value` command-line flags for the load-test examples.

use std::collections::HashMap;

/// The flags given, each `--name value`.
pub struct Flags(HashMap<String, String>);

impl Flags {
    pub fn from_args() -> Flags {
        let mut values = HashMap::new();
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .unwrap_or_else(|| panic!("{flag} needs a value"));
            values.insert(flag.trim_start_matches("--").to_owned(), value);
        }
        Flags(values)
    }

    /// The value of `--key`, or `default`.
    pub fn get(&self, key: &str, default: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }
}
