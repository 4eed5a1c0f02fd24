//! The management API's OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! annotations and the request types themselves, and served at `/v1/openapi.json`. Every
//! route the router has must be here (`gateway/tests/it/openapi.rs` checks it).

use std::sync::LazyLock;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, Response};
use utoipa::{Modify, OpenApi, ToResponse, ToSchema};

use super::{capture, evaluations, experiment, figures, keys, models, rollouts, system, traffic};

/// The protocol's error body, as every refusal carries it.
#[derive(serde::Deserialize, ToSchema, ToResponse)]
#[response(description = "refused: the reason is in `error`")]
pub struct ErrorResponse {
    pub error: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard management API",
        description = "The registry of models, versions, scores, traffic and aliases. Every write \
            returns the registry's new revision and is recorded in the audit log (/v1/events). \
            Bearer tokens: GET needs the read role, everything else the write role."
    ),
    paths(
        models::list_models,
        models::create_model,
        models::get_model,
        models::list_versions,
        models::register_version,
        models::get_version,
        models::remove_version,
        models::list_scores,
        models::add_scores,
        traffic::get_traffic,
        traffic::set_traffic,
        traffic::get_policy,
        traffic::set_policy,
        traffic::set_alias,
        traffic::remove_alias,
        experiment::experiment,
        figures::figures,
        evaluations::start_evaluation,
        evaluations::cancel_evaluation,
        evaluations::list_evaluations,
        evaluations::get_evaluation,
        rollouts::start_rollout,
        rollouts::list_rollouts,
        rollouts::get_rollout,
        rollouts::control_rollout,
        experiment::feedback,
        system::resources,
        system::cluster,
        system::events,
        system::import,
        keys::list_keys,
        keys::create_key,
        keys::set_key,
        keys::rotate_key,
        keys::revoke_key,
        keys::get_model_limits,
        keys::set_model_limits,
        keys::remove_model_limits,
        capture::list_captures,
        capture::get_capture,
        capture::set_capture,
        capture::remove_capture,
        document,
    ),
    components(responses(ErrorResponse)),
    modifiers(&Conventions),
    security(("bearer" = []))
)]
struct ApiDoc;

/// What holds for every operation, added once here rather than on each: the bearer scheme, and
/// the 401 and 403 of every authenticated call.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
        let error: RefOr<Response> =
            RefOr::Ref(utoipa::openapi::Ref::from_response_name("ErrorResponse"));
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/v1/openapi.json" {
                continue;
            }
            // Writes with a body: without tokens, one that is not JSON gets 415 (a page of
            // another site cannot send JSON without asking first).
            let writes = [&mut item.put, &mut item.post];
            for operation in writes.into_iter().flatten() {
                operation
                    .responses
                    .responses
                    .entry("415".to_owned())
                    .or_insert_with(|| error.clone());
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for status in ["401", "403"] {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error.clone());
                }
            }
        }
    }
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
});

/// The document, as served.
pub fn openapi_json() -> &'static str {
    &DOCUMENT
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    security(()),
    responses((status = 200, description = "the OpenAPI document", body = Object))
)]
pub(super) async fn document() -> ([(http::HeaderName, &'static str); 1], &'static str) {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
}
