//! Every route of the management API is in its generated OpenAPI document, with each of its
//! methods, and the document names no route the API does not have. The routes are read from
//! the router's source, so a route added without its annotation fails here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

const METHODS: &[&str] = &["get", "post", "put", "delete", "patch"];

/// (path, method) of every `.route("PATH", get(..).post(..))` in the source.
fn routes_in_source(source: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let Some(open) = rest.find('"') else { break };
        let Some(close) = rest[open + 1..].find('"') else {
            break;
        };
        let path = &rest[open + 1..open + 1 + close];
        // The handlers run up to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let mut end = 0;
        for (index, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = index;
                break;
            }
        }
        let handlers = &rest[open + 1 + close + 1..end];
        for method in METHODS {
            let called = handlers.match_indices(&format!("{method}(")).any(|(i, _)| {
                let before = handlers[..i].chars().last();
                matches!(before, None | Some(' ' | '\n' | ',' | '.'))
            });
            if called {
                routes.insert((path.to_owned(), (*method).to_owned()));
            }
        }
        rest = &rest[end..];
    }
    routes
}

#[test]
fn every_management_route_is_documented_and_nothing_else() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/admin/mod.rs")).unwrap();
    // The dashboard's page and assets (`/`, `/assets/..`) are not API operations.
    let routes: BTreeSet<_> = routes_in_source(&source)
        .into_iter()
        .filter(|(path, _)| path.starts_with("/v1/"))
        .collect();
    assert!(
        routes.len() > 15,
        "only {} routes read: is the scan broken?",
        routes.len()
    );
    let document: serde_json::Value =
        serde_json::from_str(switchyard_gateway::admin::openapi::openapi_json()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(*method).is_some() {
                documented.insert((path.clone(), (*method).to_owned()));
            }
        }
    }
    // Authenticated operations say so, with the 401 and 403 they can answer.
    let import = &document["paths"]["/v1/repository/import"]["post"];
    assert!(import["responses"]["401"].is_object(), "{import}");
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
    let register = &document["paths"]["/v1/models/{m}/versions"]["post"]["requestBody"];
    assert!(
        register.to_string().contains("VersionBody"),
        "the request body is the API's own type: {register}"
    );
    // The schemas are as strict as the checks: the settings of a version are spelled out,
    // closed, and bounded as the gateway bounds them.
    let settings = &document["components"]["schemas"]["ModelToml"];
    assert_eq!(settings["additionalProperties"], false, "{settings}");
    assert_eq!(
        settings["properties"]["replicas"]["maximum"], 256,
        "{settings}"
    );
    assert_eq!(
        settings["properties"]["max_batch_size"]["maximum"], 65536,
        "{settings}"
    );
    let model = &document["paths"]["/v1/models/{m}"]["get"]["parameters"][0]["schema"];
    assert!(model["pattern"].is_string(), "{model}");
    // Every write with a body lists the 415 it answers to a body that is not JSON.
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["post", "put"] {
            if let Some(operation) = item.get(method) {
                assert!(
                    operation["responses"]["415"].is_object(),
                    "{method} {path} does not list 415"
                );
            }
        }
    }
    let missing: Vec<_> = routes.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routes).collect();
    assert!(
        missing.is_empty(),
        "routes without documentation: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "documented routes the API lacks: {extra:?}"
    );
}

#[test]
fn the_scan_reads_methods_and_paths() {
    let source = r#".route("/v1/a/{m}", get(list).post(create))
        .route(
            "/v1/b",
            put(set).delete(remove),
        )"#;
    let routes = routes_in_source(source);
    let expected: BTreeSet<(String, String)> = [
        ("/v1/a/{m}", "get"),
        ("/v1/a/{m}", "post"),
        ("/v1/b", "delete"),
        ("/v1/b", "put"),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_owned(), m.to_owned()))
    .collect();
    assert_eq!(routes, expected);
}

/// The document the gateway serves is committed as `docs/openapi.json`, so that a change to the
/// API shows in review and a client can be generated without a running gateway. A change
/// regenerates it: `SWITCHYARD_BLESS=1 cargo nextest run -p switchyard-gateway -E
/// 'test(/^openapi::/)'`.
#[test]
fn the_committed_document_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let generated = format!("{}\n", switchyard_gateway::admin::openapi::openapi_json());
    if std::env::var_os("SWITCHYARD_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is not the document the gateway serves: regenerate it with \
         SWITCHYARD_BLESS=1 cargo nextest run -p switchyard-gateway -E 'test(/^openapi::/)'"
    );
}

/// Every `$ref` in a document, with where it was found.
fn references(value: &serde_json::Value, at: &str, found: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, item) in fields {
                match (key.as_str(), item) {
                    ("$ref", serde_json::Value::String(target)) => {
                        found.push((at.to_owned(), target.clone()))
                    }
                    _ => references(item, &format!("{at}/{key}"), found),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                references(item, &format!("{at}/{index}"), found);
            }
        }
        _ => {}
    }
}

/// A client generated from the document gets a type for every answer: each success names a
/// schema of the components (not a bare object), and every reference resolves.
#[test]
fn every_success_names_a_schema_and_every_reference_resolves() {
    let document: serde_json::Value =
        serde_json::from_str(switchyard_gateway::admin::openapi::openapi_json()).unwrap();
    let schemas = document["components"]["schemas"].as_object().unwrap();
    let mut successes = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        // The document describes itself as what it is: an OpenAPI document.
        if path == "/v1/openapi.json" {
            continue;
        }
        for method in METHODS {
            let Some(responses) = item[*method]["responses"].as_object() else {
                continue;
            };
            for (status, response) in responses {
                if !status.starts_with('2') {
                    continue;
                }
                successes += 1;
                let schema = &response["content"]["application/json"]["schema"];
                let named = schema["$ref"]
                    .as_str()
                    .and_then(|target| target.strip_prefix("#/components/schemas/"));
                let Some(name) = named else {
                    panic!("{method} {path} answers {status} with no named schema: {response}");
                };
                let component = &schemas[name];
                assert!(
                    component["properties"].is_object()
                        || component["oneOf"].is_array()
                        || component["allOf"].is_array(),
                    "{method} {path} {status}: schema {name} says nothing: {component}"
                );
            }
        }
    }
    assert!(successes > 25, "only {successes} successes read");
    let mut found = Vec::new();
    references(&document, "", &mut found);
    for (at, target) in found {
        let resolved = target
            .strip_prefix("#/")
            .map(|pointer| document.pointer(&format!("/{pointer}")))
            .is_some_and(|target| target.is_some());
        assert!(
            resolved,
            "{at} refers to {target}, which the document lacks"
        );
    }
}
