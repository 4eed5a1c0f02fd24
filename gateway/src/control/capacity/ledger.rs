//! Memory accounting and replica placement: the ledger of reservations per device, best-fit
//! placement, and the priority plan. Pure: no I/O and no clock reads.

use switchyard_runtimes::Device;

/// Bytes a device may hand out: `min(declared, physical) - reserve`, computed by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceBudget {
    pub id: Device,
    pub budget: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub model: String,
    pub version: String,
    pub replica: u32,
    pub device: Device,
    pub bytes: u64,
    /// False while `bytes` is the declared figure, true once warm-up measured it.
    pub measured: bool,
}

/// Why a replica could not be given memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The roomiest allowed device, or None when no allowed device is configured.
    pub device: Option<Device>,
    pub asked: u64,
    /// Largest free space among the allowed devices.
    pub free: u64,
    pub message: String,
}

/// Binary units with one decimal, as operators read them in logs.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return format!("{:.1} {unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} B")
}

#[derive(Debug, Clone)]
pub struct Ledger {
    devices: Vec<DeviceBudget>,
    reservations: Vec<Reservation>,
}

impl Ledger {
    pub fn new(devices: Vec<DeviceBudget>) -> Ledger {
        Ledger {
            devices,
            reservations: Vec::new(),
        }
    }

    /// Adds a device; reservations stay as they are, even on a device measured over budget.
    pub fn add_device(&mut self, device: DeviceBudget) {
        if !self.devices.iter().any(|d| d.id == device.id) {
            self.devices.push(device);
        }
    }

    pub fn devices(&self) -> &[DeviceBudget] {
        &self.devices
    }

    pub fn reservations(&self) -> &[Reservation] {
        &self.reservations
    }

    fn budget(&self, device: Device) -> Option<u64> {
        self.devices
            .iter()
            .find(|d| d.id == device)
            .map(|d| d.budget)
    }

    pub fn reserved(&self, device: Device) -> u64 {
        self.reservations
            .iter()
            .filter(|r| r.device == device)
            .fold(0, |total, r| total.saturating_add(r.bytes))
    }

    /// None = unknown device.
    pub fn free(&self, device: Device) -> Option<u64> {
        self.budget(device)
            .map(|budget| budget.saturating_sub(self.reserved(device)))
    }

    fn replicas_on(&self, model: &str, version: &str, device: Device) -> usize {
        self.reservations
            .iter()
            .filter(|r| r.model == model && r.version == version && r.device == device)
            .count()
    }

    fn position(&self, model: &str, version: &str, replica: u32) -> Option<usize> {
        self.reservations
            .iter()
            .position(|r| r.model == model && r.version == version && r.replica == replica)
    }

    /// Best-fit placement of one replica: among allowed devices where it fits, prefer
    /// the fewest replicas of this version (so one GPU failing does not take them all),
    /// then the least space left over (keeps big holes for big models), then device id.
    pub fn place(
        &self,
        model: &str,
        version: &str,
        bytes: u64,
        allowed: &[Device],
    ) -> Result<Device, Refusal> {
        allowed
            .iter()
            .filter_map(|&id| {
                let free = self.free(id).filter(|free| bytes <= *free)?;
                Some((self.replicas_on(model, version, id), free - bytes, id))
            })
            .min()
            .map(|(_, _, id)| id)
            .ok_or_else(|| self.refusal(model, version, bytes, allowed))
    }

    fn refusal(&self, model: &str, version: &str, bytes: u64, allowed: &[Device]) -> Refusal {
        let mut known: Vec<(Device, u64, u64)> = allowed
            .iter()
            .filter_map(|&id| Some((id, self.budget(id)?, self.reserved(id))))
            .collect();
        // Roomiest first: that is the device an operator would free space on.
        known.sort_by(|a, b| {
            let free = |d: &(Device, u64, u64)| d.1.saturating_sub(d.2);
            free(b).cmp(&free(a)).then(a.0.cmp(&b.0))
        });
        known.dedup_by(|a, b| a.0 == b.0);
        let need = format!(
            "version '{model}/{version}' needs {} per replica",
            human_bytes(bytes)
        );
        let Some(&(best, best_budget, best_reserved)) = known.first() else {
            return Refusal {
                device: None,
                asked: bytes,
                free: 0,
                message: format!(
                    "{need} but none of its allowed devices [{}] is configured",
                    allowed
                        .iter()
                        .map(Device::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
        };
        let reports: Vec<String> = known
            .iter()
            .map(|&(id, budget, reserved)| {
                format!(
                    "{id} has {} free of a {} budget ({} reserved)",
                    human_bytes(budget.saturating_sub(reserved)),
                    human_bytes(budget),
                    human_bytes(reserved)
                )
            })
            .collect();
        Refusal {
            device: Some(best),
            asked: bytes,
            free: best_budget.saturating_sub(best_reserved),
            message: format!("{need} but {}", reports.join(", ")),
        }
    }

    /// Re-checks the budget, since the ledger may have changed since `place`.
    pub fn reserve(&mut self, reservation: Reservation) -> Result<(), Refusal> {
        let r = &reservation;
        // Two reservations for one replica would count its memory twice.
        let duplicate = self.position(&r.model, &r.version, r.replica).is_some();
        if !duplicate && self.free(r.device).is_some_and(|free| r.bytes <= free) {
            self.reservations.push(reservation);
            return Ok(());
        }
        let mut refusal = self.refusal(
            &r.model,
            &r.version,
            r.bytes,
            std::slice::from_ref(&r.device),
        );
        if duplicate {
            refusal.message = format!(
                "replica {} of '{}/{}' is already reserved",
                r.replica, r.model, r.version
            );
        }
        Err(refusal)
    }

    pub fn release(&mut self, model: &str, version: &str, replica: u32) -> Option<Reservation> {
        let index = self.position(model, version, replica)?;
        Some(self.reservations.remove(index))
    }

    pub fn release_version(&mut self, model: &str, version: &str) -> Vec<Reservation> {
        let (released, kept) = std::mem::take(&mut self.reservations)
            .into_iter()
            .partition(|r| r.model == model && r.version == version);
        self.reservations = kept;
        released
    }

    /// The measured figure may exceed the budget: the memory is already in use, so it
    /// is recorded anyway and `true` (device now over budget) tells the caller to log it.
    pub fn record_measured(
        &mut self,
        model: &str,
        version: &str,
        replica: u32,
        bytes: u64,
    ) -> bool {
        let Some(index) = self.position(model, version, replica) else {
            return false;
        };
        let reservation = &mut self.reservations[index];
        reservation.bytes = bytes;
        reservation.measured = true;
        let device = reservation.device;
        self.budget(device)
            .is_some_and(|budget| self.reserved(device) > budget)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub model: String,
    pub version: String,
    /// Higher = more important.
    pub priority: i64,
    pub wanted: u32,
    /// Below this many replicas the version is not worth any memory (usually 1).
    pub minimum: u32,
    pub bytes_per_replica: u64,
    pub allowed: Vec<Device>,
    /// Devices of the replicas it already has, in replica order.
    pub current: Vec<Device>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEntry {
    pub model: String,
    pub version: String,
    pub devices: Vec<Device>,
    /// Why it got fewer replicas than wanted.
    pub refused: Option<Refusal>,
}

/// Plans every demand against fresh budgets, highest priority first, so a lower
/// priority version never holds memory a higher one needs. Entries come back in
/// the order of `demands`.
pub fn plan(devices: &[DeviceBudget], demands: &[Demand]) -> Vec<PlanEntry> {
    let mut ledger = Ledger::new(devices.to_vec());
    let mut ranked: Vec<(usize, &Demand)> = demands.iter().enumerate().collect();
    ranked.sort_by(|(_, a), (_, b)| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.model.cmp(&b.model))
            .then_with(|| a.version.cmp(&b.version))
    });
    let mut entries: Vec<(usize, PlanEntry)> = ranked
        .into_iter()
        .map(|(index, demand)| (index, plan_demand(&mut ledger, demand)))
        .collect();
    entries.sort_by_key(|(index, _)| *index);
    entries.into_iter().map(|(_, entry)| entry).collect()
}

fn plan_demand(ledger: &mut Ledger, demand: &Demand) -> PlanEntry {
    let wanted = demand.wanted as usize;
    let mut devices: Vec<Device> = Vec::new();
    let mut refused = None;
    let replica_on = |device: Device, replica: usize| Reservation {
        model: demand.model.clone(),
        version: demand.version.clone(),
        replica: u32::try_from(replica).unwrap_or(u32::MAX),
        device,
        bytes: demand.bytes_per_replica,
        measured: false,
    };
    // Existing replicas first, where still allowed and still fitting: keeping them costs no reload.
    for &device in demand.current.iter().take(wanted) {
        if demand.allowed.contains(&device)
            && ledger.reserve(replica_on(device, devices.len())).is_ok()
        {
            devices.push(device);
        }
    }
    while devices.len() < wanted {
        let placed = ledger
            .place(
                &demand.model,
                &demand.version,
                demand.bytes_per_replica,
                &demand.allowed,
            )
            .and_then(|device| {
                ledger.reserve(replica_on(device, devices.len()))?;
                Ok(device)
            });
        match placed {
            Ok(device) => devices.push(device),
            Err(refusal) => {
                refused = Some(refusal);
                break;
            }
        }
    }
    let minimum = demand.minimum.min(demand.wanted) as usize;
    if devices.len() < minimum {
        ledger.release_version(&demand.model, &demand.version);
        devices.clear();
        refused = refused.map(|mut refusal| {
            refusal.message = format!(
                "{}; below its minimum of {minimum} replicas it gets none",
                refusal.message
            );
            refusal
        });
    }
    PlanEntry {
        model: demand.model.clone(),
        version: demand.version.clone(),
        devices,
        refused,
    }
}
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn dev(id: &str) -> Device {
        id.parse().unwrap()
    }

    fn ids(list: &[&str]) -> Vec<Device> {
        list.iter().map(|id| dev(id)).collect()
    }

    fn budgets(list: &[(&str, u64)]) -> Vec<DeviceBudget> {
        let to_budget = |&(id, budget): &(&str, u64)| DeviceBudget {
            id: dev(id),
            budget,
        };
        list.iter().map(to_budget).collect()
    }

    fn ledger_with(list: &[(&str, u64)]) -> Ledger {
        Ledger::new(budgets(list))
    }

    fn held(model: &str, version: &str, replica: u32, device: &str, bytes: u64) -> Reservation {
        Reservation {
            model: model.into(),
            version: version.into(),
            replica,
            device: dev(device),
            bytes,
            measured: false,
        }
    }

    #[test]
    fn admission_refuses_exactly_at_the_budget_boundary() {
        let gpu = ids(&["cuda:0"]);
        let mut full = ledger_with(&[("cuda:0", 1000)]);
        full.reserve(held("a", "1", 0, "cuda:0", 350)).unwrap();
        full.reserve(held("b", "1", 0, "cuda:0", 250)).unwrap();
        assert_eq!(full.place("mlp", "3", 400, &gpu).unwrap(), dev("cuda:0"));
        full.reserve(held("mlp", "3", 0, "cuda:0", 400)).unwrap();
        assert_eq!(
            (full.reserved(dev("cuda:0")), full.free(dev("cuda:0"))),
            (1000, Some(0))
        );

        let refusal = full.place("mlp", "3", 1, &gpu).unwrap_err();
        assert_eq!(refusal.device, Some(dev("cuda:0")));
        assert_eq!((refusal.asked, refusal.free), (1, 0));
        assert!(
            refusal
                .message
                .contains("needs 1 B per replica but cuda:0 has 0 B free")
        );
        assert!(full.reserve(held("mlp", "3", 1, "cuda:0", 1)).is_err());
        assert!(full.reserve(held("mlp", "3", 0, "cuda:0", 0)).is_err());

        let mut fresh = ledger_with(&[("cuda:0", 1000)]);
        fresh.reserve(held("a", "1", 0, "cuda:0", 600)).unwrap();
        let refusal = fresh.place("mlp", "3", 401, &gpu).unwrap_err();
        assert_eq!((refusal.asked, refusal.free), (401, 400));
    }

    #[test]
    fn refusal_message_names_device_and_sizes_in_human_units() {
        assert_eq!(
            [human_bytes(1023), human_bytes(1536)],
            ["1023 B", "1.5 KiB"]
        );
        let mut ledger = ledger_with(&[("cuda:0", 8 * GIB)]);
        ledger
            .reserve(held("big", "1", 0, "cuda:0", 8 * GIB - 300 * MIB))
            .unwrap();
        let refusal = ledger
            .place("mlp", "3", 512 * MIB, &ids(&["cuda:0"]))
            .unwrap_err();
        let expected = "version 'mlp/3' needs 512.0 MiB per replica but cuda:0 has 300.0 MiB \
                        free of a 8.0 GiB budget (7.7 GiB reserved)";
        assert_eq!(refusal.message, expected);
        let unknown = ledger.place("mlp", "3", 1, &ids(&["cuda:9"])).unwrap_err();
        assert_eq!((unknown.device, unknown.free), (None, 0));
        assert!(unknown.message.contains("[cuda:9] is configured"));
    }

    #[test]
    fn best_fit_prefers_tighter_device_but_spreads_replicas_of_one_version() {
        let both = ids(&["cuda:0", "cuda:1"]);
        let mut ledger = ledger_with(&[("cuda:0", 1000), ("cuda:1", 600)]);
        assert_eq!(ledger.place("mlp", "3", 500, &both).unwrap(), dev("cuda:1"));

        ledger.reserve(held("mlp", "3", 0, "cuda:1", 100)).unwrap();
        assert_eq!(ledger.place("mlp", "3", 100, &both).unwrap(), dev("cuda:0"));
        assert_eq!(
            ledger.place("other", "1", 100, &both).unwrap(),
            dev("cuda:1")
        );

        let twins = ledger_with(&[("cuda:1", 500), ("cuda:0", 500)]);
        assert_eq!(twins.place("mlp", "3", 100, &both).unwrap(), dev("cuda:0"));
    }

    #[test]
    fn record_measured_over_budget_reports_it_and_release_frees_space() {
        let mut ledger = ledger_with(&[("cuda:0", 1000)]);
        ledger.reserve(held("mlp", "3", 0, "cuda:0", 400)).unwrap();
        ledger.reserve(held("mlp", "3", 1, "cuda:0", 400)).unwrap();
        assert!(!ledger.record_measured("mlp", "3", 0, 450));
        assert!(ledger.record_measured("mlp", "3", 1, 700));
        assert!(ledger.reservations().iter().all(|r| r.measured));
        assert_eq!(
            (ledger.reserved(dev("cuda:0")), ledger.free(dev("cuda:0"))),
            (1150, Some(0))
        );
        assert!(!ledger.record_measured("mlp", "3", 7, 1));

        assert_eq!(ledger.release("mlp", "3", 1).map(|r| r.bytes), Some(700));
        assert_eq!(ledger.free(dev("cuda:0")), Some(550));
        ledger.reserve(held("cnn", "1", 0, "cuda:0", 10)).unwrap();
        assert_eq!(ledger.release_version("mlp", "3").len(), 1);
        assert_eq!(
            (ledger.free(dev("cuda:0")), ledger.release("mlp", "3", 0)),
            (Some(990), None)
        );
    }

    fn demand(version: &str, priority: i64, wanted: u32, bytes: u64, current: &[&str]) -> Demand {
        Demand {
            model: "mlp".into(),
            version: version.into(),
            priority,
            wanted,
            minimum: 1,
            bytes_per_replica: bytes,
            allowed: ids(&["cuda:0", "cuda:1"]),
            current: ids(current),
        }
    }

    #[test]
    fn priority_keeps_the_stable_versions_replicas_when_a_canary_asks_for_more_than_fits() {
        let devices = budgets(&[("cuda:0", 1000), ("cuda:1", 1000)]);
        let canary = demand("canary", 1, 3, 300, &[]);
        let stable = demand("stable", 10, 2, 600, &["cuda:1", "cuda:0"]);
        let [canary, stable] =
            <[PlanEntry; 2]>::try_from(plan(&devices, &[canary, stable])).unwrap();

        assert_eq!(
            (stable.devices, stable.refused),
            (ids(&["cuda:1", "cuda:0"]), None)
        );
        assert_eq!(canary.devices, ids(&["cuda:0", "cuda:1"]));
        let refusal = canary.refused.unwrap();
        assert_eq!((refusal.asked, refusal.free), (300, 100));
        assert!(refusal.message.contains("'mlp/canary' needs 300 B"));
    }

    #[test]
    fn higher_priority_new_demand_displaces_lower_priority_replicas() {
        let devices = budgets(&[("cuda:0", 1000)]);
        let old = demand("old", 1, 2, 400, &["cuda:0", "cuda:0"]);
        let entries = plan(&devices, &[old, demand("urgent", 5, 2, 400, &[])]);
        assert_eq!(entries[1].devices, ids(&["cuda:0", "cuda:0"]));
        assert!(entries[0].devices.is_empty());
        assert_eq!(entries[0].refused.as_ref().map(|r| r.free), Some(200));

        let mut pair = demand("pair", 1, 3, 150, &[]);
        pair.minimum = 2;
        let entries = plan(&devices, &[pair, demand("urgent", 5, 2, 400, &[])]);
        assert!(entries[0].devices.is_empty());
        let refusal = entries[0].refused.as_ref().unwrap();
        assert!(refusal.message.contains("minimum of 2"));
    }
}
