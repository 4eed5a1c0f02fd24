//! A key's rates held by the sum over the nodes of a cluster. Each node measures the demand
//! each rate-limited key puts on it (requests that reached its limits, admitted or not, per
//! second, smoothed over heartbeats) and reports it in its heartbeat; every node then takes
//! the share of each key's rates (and bursts) that its demand is of the live nodes' summed
//! demand, with a small floor so that a node that sees none yet can admit its first requests.
//! The shares of the live nodes sum to one, so the admitted sum stays within the key's rate
//! (and burst), but for the heartbeats it takes for a change of demand to be seen: up to
//! two (the reports are a beat old, and the smoothing halves the old demand each beat).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::auth::Tenant;

/// A key's demand on a node, as its heartbeat reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct KeyDemand {
    /// The key's id.
    pub id: String,
    /// Requests per second that reached its limits on the node, smoothed.
    pub per_s: f64,
}

/// The most keys a heartbeat reports; past it, the busiest.
const MAX_KEYS_REPORTED: usize = 1024;
/// The part of the smoothed demand the latest beat makes up.
const SMOOTHING: f64 = 0.5;
/// The floor of each node's demand, as a part of a key's summed demand (shared out among the
/// nodes), and its least, in requests per second.
const FLOOR_PART: f64 = 0.05;
const FLOOR_LEAST: f64 = 0.1;

/// This node's measure of its keys' demand, beat to beat.
#[derive(Default)]
pub struct DemandMeter {
    /// Per key id: its count of offered requests at the last beat, and the smoothed rate.
    last: HashMap<Arc<str>, (u64, f64)>,
    at: Option<Instant>,
}

impl DemandMeter {
    /// Each rate-limited key's smoothed demand since the last call, busiest first.
    pub fn measure(&mut self, tenants: &[Arc<Tenant>], now: Instant) -> Vec<KeyDemand> {
        let elapsed = self
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.at = Some(now);
        let mut demands = Vec::new();
        let mut kept = HashMap::with_capacity(self.last.len());
        for tenant in tenants.iter().filter(|tenant| tenant.has_rates()) {
            let offered = tenant.offered();
            let (before, smoothed) = self.last.get(&tenant.id).copied().unwrap_or((offered, 0.0));
            let latest = match elapsed > 0.0 {
                true => offered.saturating_sub(before) as f64 / elapsed,
                false => 0.0,
            };
            let per_s = SMOOTHING * latest + (1.0 - SMOOTHING) * smoothed;
            kept.insert(tenant.id.clone(), (offered, per_s));
            if per_s > 1e-3 {
                demands.push(KeyDemand {
                    id: tenant.id.to_string(),
                    per_s,
                });
            }
        }
        self.last = kept;
        demands.sort_by(|a, b| b.per_s.total_cmp(&a.per_s));
        demands.truncate(MAX_KEYS_REPORTED);
        demands
    }
}

/// This node's share of a key's rates: its demand over the live nodes' sum, each with the
/// floor added. `others` are the other live nodes' reports; `nodes` counts the live nodes,
/// this one included.
pub fn share(mine: f64, others: &[f64], nodes: usize) -> f64 {
    let nodes = nodes.max(1) as f64;
    let total: f64 = mine + others.iter().sum::<f64>();
    let floor = (FLOOR_PART * total).max(FLOOR_LEAST) / nodes;
    (mine + floor) / (total + nodes * floor)
}

/// Sets every live key's share on this node from its own demand and the other live nodes'
/// reports (`reports`: one list per other live node).
pub fn apply(tenants: &[Arc<Tenant>], mine: &[KeyDemand], reports: &[Vec<KeyDemand>]) {
    let nodes = reports.len() + 1;
    let by_id = |list: &[KeyDemand]| -> HashMap<String, f64> {
        list.iter()
            .map(|demand| (demand.id.clone(), demand.per_s))
            .collect()
    };
    let mine = by_id(mine);
    let reports: Vec<HashMap<String, f64>> = reports.iter().map(|report| by_id(report)).collect();
    let mut others = Vec::with_capacity(reports.len());
    for tenant in tenants.iter().filter(|tenant| tenant.has_rates()) {
        others.clear();
        others.extend(
            reports
                .iter()
                .map(|report| report.get(&*tenant.id).copied().unwrap_or(0.0)),
        );
        let own = mine.get(&*tenant.id).copied().unwrap_or(0.0);
        tenant.set_share(share(own, &others, nodes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_demand_and_sum_to_one() {
        let sum = |demands: &[f64]| -> f64 {
            (0..demands.len())
                .map(|i| {
                    let others: Vec<f64> = demands
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, d)| *d)
                        .collect();
                    share(demands[i], &others, demands.len())
                })
                .sum()
        };
        for demands in [
            vec![0.0, 0.0],
            vec![100.0, 0.0],
            vec![30.0, 70.0],
            vec![5.0, 5.0, 90.0],
        ] {
            assert!((sum(&demands) - 1.0).abs() < 1e-9, "{demands:?}");
        }
        // No demand anywhere: equal parts.
        assert!((share(0.0, &[0.0, 0.0], 3) - 1.0 / 3.0).abs() < 1e-9);
        // One node with all the demand holds nearly all the rate; the idle one keeps a floor.
        let busy = share(100.0, &[0.0], 2);
        assert!(busy > 0.95 && busy < 1.0, "{busy}");
        assert!(share(0.0, &[100.0], 2) > 0.0);
        // Demand 30 to 70: shares near 0.3 and 0.7.
        assert!((share(30.0, &[70.0], 2) - 0.3).abs() < 0.02);
        // Alone: all of it.
        assert_eq!(share(12.0, &[], 1), 1.0);
    }
}
