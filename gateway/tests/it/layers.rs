//! The dependency rule of docs/architecture.md, checked on the sources: every `crate::...` path
//! and every use of the registry crate in a layer's files must name a layer that layer may use.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The modules every layer may use: they use no layer themselves.
const LEAVES: &[&str] = &[
    "error",
    "config",
    "auth",
    "priority",
    "telemetry",
    "version_key",
    "wire",
    "tasks",
];

/// Each layer and the layers below it that it may use (besides the leaves and itself).
const RULE: &[(&str, &[&str])] = &[
    (
        "app",
        &["protocol", "admin", "control", "core", "routing", "serving"],
    ),
    ("admin", &["control", "core", "routing", "serving"]),
    ("protocol", &["core", "routing", "serving"]),
    ("control", &["core", "routing", "serving"]),
    ("core", &["routing", "serving"]),
    ("routing", &[]),
    ("serving", &[]),
];

/// The layers that may reach the registry crate.
const REGISTRY_USERS: &[&str] = &["app", "admin", "control"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: its folder under src/, or its file stem.
fn layer_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

/// The identifier `text` starts with.
fn leading_name(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The first names of a group's entries: `{core::X, routing::{a, b}, self}` gives `core`,
/// `routing` and `self`. `group` starts after the opening brace.
fn group_names(group: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                names.push(leading_name(&group[start..index]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                names.push(leading_name(&group[start..index]));
                start = index + 1;
            }
            _ => {}
        }
    }
    names.retain(|name| !name.is_empty());
    names
}

/// The crate modules a file names: `crate::NAME`, and each `NAME` of `crate::{NAME::..., ...}`.
fn crate_modules(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        // `$crate::` in macros and `switchyard_gateway::` paths are not this crate's modules.
        let preceding = rest[..at].chars().last();
        if !matches!(preceding, Some('$' | '_' | 'a'..='z')) {
            let names = match after.strip_prefix('{') {
                Some(group) => group_names(group),
                None => vec![leading_name(after)],
            };
            found.extend(
                names
                    .into_iter()
                    .filter(|name| !name.is_empty() && name != "self"),
            );
        }
        rest = after;
    }
    found
}

#[test]
fn no_layer_reaches_up() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let layer = layer_of(&src, file);
        if matches!(layer.as_str(), "lib" | "main") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let allowed: Vec<&str> = if LEAVES.contains(&layer.as_str()) {
            LEAVES.to_vec()
        } else {
            let (_, below) = RULE
                .iter()
                .find(|(name, _)| *name == layer)
                .unwrap_or_else(|| panic!("{} is in no layer of the rule", file.display()));
            below.iter().chain(LEAVES).copied().collect()
        };
        for module in crate_modules(&text) {
            checked += 1;
            if module != layer && !allowed.contains(&module.as_str()) {
                violations.push(format!("{} ({layer}) uses crate::{module}", file.display()));
            }
        }
        if text.contains("switchyard_registry::") && !REGISTRY_USERS.contains(&layer.as_str()) {
            violations.push(format!(
                "{} ({layer}) uses the registry crate",
                file.display()
            ));
        }
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the scan broken?"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_scan_sees_a_violation() {
    let names =
        crate_modules("use crate::core::Gateway;\nlet x = $crate::y; use switchyard_gateway::app;");
    assert_eq!(names, BTreeSet::from(["core".to_owned()]));
}

#[test]
fn the_scan_sees_grouped_imports() {
    let names = crate_modules(
        "use crate::{\n    core::{Gateway, table::Table},\n    routing::Policy,\n    error,\n};\nuse crate::{self as root};",
    );
    // `self as root` names no module of its own.
    assert_eq!(
        names,
        BTreeSet::from(["core", "error", "routing"].map(str::to_owned))
    );
}
