//! The gateway as a whole: resources, the cluster, the audit log and repository import.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::api::{Cluster, ClusterNode, Events, Imported};
use super::{AdminState, ApiResult, bad_request, ok};
use crate::control::cluster::NodeBody;
use crate::control::import::import_repository;
use crate::error::GatewayError;

/// Devices (total, budget, reserved, measured, free) and each version's replicas, devices, reservations and autoscaler target, as this gateway accounts for them.
#[utoipa::path(
    get,
    path = "/v1/resources",
    responses((status = 200, description = "success", body = super::api::ResourceReport))
)]
pub(super) async fn resources(State(state): State<AdminState>) -> ApiResult {
    let table = state.gateway.snapshot();
    ok(StatusCode::OK, state.capacity.report(&table))
}

/// The cluster's nodes (alive or not, address, devices with budget and free memory, load, and
/// each version's state on the node) and the leader's placement. Empty outside a cluster.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    responses((status = 200, description = "success", body = super::api::Cluster))
)]
pub(super) async fn cluster(State(state): State<AdminState>) -> ApiResult {
    let (nodes, versions, placements) = tokio::try_join!(
        state.store.nodes(),
        state.store.node_versions(),
        state.store.placements()
    )?;
    let dead_after_ms = state.cluster_dead_after.as_millis() as i64;
    let nodes = nodes
        .into_iter()
        .map(|node| {
            let versions = versions
                .iter()
                .filter(|v| v.node == node.id)
                .cloned()
                .collect();
            ClusterNode {
                alive: node.age_ms < dead_after_ms,
                heartbeat_age_ms: node.age_ms,
                started_ms: node.started_ms,
                body: NodeBody::of(&node),
                id: node.id,
                address: node.address,
                versions,
            }
        })
        .collect();
    ok(
        StatusCode::OK,
        Cluster {
            enabled: state.cluster_node.is_some(),
            node: state.cluster_node.clone(),
            nodes,
            placements,
        },
    )
}

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: i64,
}

pub(super) fn default_limit() -> i64 {
    100
}

/// The audit log and change feed, oldest first.
#[utoipa::path(
    get,
    path = "/v1/events",
    params(("after" = Option<i64>, Query, description = "only events after this revision"), ("limit" = Option<i64>, Query, description = "at most this many events (default 100, at most 1000)")),
    responses((status = 200, description = "success", body = super::api::Events), (status = 400, response = super::openapi::ErrorResponse))
)]
pub(super) async fn events(
    State(state): State<AdminState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|e| bad_request(e.body_text()))?;
    let events = state.store.events_after(query.after, query.limit).await?;
    let next_after = events.last().map_or(query.after, |event| event.revision);
    ok(StatusCode::OK, Events { events, next_after })
}

/// Register the model repository's folders that the registry does not know yet.
#[utoipa::path(
    post,
    path = "/v1/repository/import",
    responses((status = 200, description = "success", body = super::api::Imported), (status = 500, response = super::openapi::ErrorResponse))
)]
pub(super) async fn import(State(state): State<AdminState>) -> ApiResult {
    let imported = import_repository(state.store.as_ref(), &state.models_dir, &state.defaults)
        .await
        .map_err(|e| GatewayError::internal(format!("{e:#}")))?;
    let revision = state.store.revision().await?;
    ok(StatusCode::OK, Imported { imported, revision })
}
