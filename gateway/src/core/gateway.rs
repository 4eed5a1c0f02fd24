//! `infer`: what every request runs once a front has decoded it, whatever its protocol. It
//! decides once where the request goes ([`Gateway::destination`]: here, here as a turn of its
//! sequence, or a peer), then runs that one path: routed ([`crate::core::route`]), checked
//! against the version's signature, queued on a replica, its outcome fed to the experiment's
//! figures and the shadow; or forwarded ([`Gateway::forward`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchyard_runtimes::NamedTensor;

use crate::core::capture::Ticket;
use crate::core::classification::classify;
use crate::core::forward::{
    ForwardError, Forwarding, OutOfRotation, Peer, RemoteVersion, SEQUENCE_PROBE, forwarded_from,
    sequence_owner,
};
use crate::core::request::{
    InferRequest, InferResponse, apply_reshapes, reshape_scalars, select_outputs, validate,
};
use crate::core::request_id::RequestIds;
use crate::core::route::{Chosen, RemoteRoute, Route, Routed, ShadowTarget, route};
use crate::core::sequence::{
    NOT_OPEN, SequenceControl, Sequences, Turn, add_controls, next_states, sequence_control,
};
use crate::core::table::{
    ModelTable, NO_ROOM_ANYWHERE, ReadyVersion, TableHandle, VersionEntry, VersionStatus,
};
use crate::error::{ErrorKind, GatewayError, Reason};
use crate::priority::Priority;
use crate::routing::{self, Experiments, FeedbackError, VersionStats};
use crate::tasks::{self, TaskKind};
use crate::telemetry::figures::Outcome;
use crate::telemetry::tracing::{TRACE_TARGET, child};
use crate::version_key::VersionKey;

static SHADOW: TaskKind = TaskKind::new("shadow");

/// The serving core: the published model table, the experiment's figures, and the ids it
/// gives requests that bring none.
pub struct Gateway {
    tables: Arc<TableHandle>,
    experiments: Arc<Experiments>,
    ids: RequestIds,
    sequences: Sequences,
    /// Set in a cluster: how requests for versions only peers host reach them.
    forwarding: Option<Forwarding>,
}

impl Gateway {
    pub fn new(
        tables: Arc<TableHandle>,
        experiments: Arc<Experiments>,
        ids: RequestIds,
    ) -> Gateway {
        Gateway {
            tables,
            experiments,
            ids,
            sequences: Sequences::default(),
            forwarding: None,
        }
    }

    /// Makes this gateway a node of a cluster that forwards what it does not host.
    pub fn with_forwarding(mut self, forwarding: Forwarding) -> Gateway {
        self.forwarding = Some(forwarding);
        self
    }

    pub fn tables(&self) -> &Arc<TableHandle> {
        &self.tables
    }

    pub fn experiments(&self) -> &Arc<Experiments> {
        &self.experiments
    }

    /// The current model table. Cheap; hold it only briefly, never across an await.
    pub fn snapshot(&self) -> Arc<ModelTable> {
        self.tables.snapshot()
    }

    pub fn is_ready(&self) -> bool {
        self.tables.is_ready()
    }

    /// Refuses, before its body is decoded, a request for a version whose queues are all full:
    /// the cheapest 429. Anything else (unknown model, not ready) is left to `infer` to report.
    pub fn refuse_if_queues_full(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<(), GatewayError> {
        let table = self.tables.peek();
        let Ok(model) = table.model(model) else {
            return Ok(());
        };
        let surely_full = |status: &VersionStatus| match status {
            VersionStatus::Ready(ready) => ready.replicas.surely_full(),
            _ => false,
        };
        let full = match version {
            // An unknown version is for `infer` to report (404), not a reason to refuse.
            Some(label) => model
                .version(label)
                .is_ok_and(|version| surely_full(&version.status)),
            // Routing may pick any ready version: refuse only when all of them are full.
            // A version on a peer has queues of its own there: never refused here.
            None => {
                model.highest_ready().is_some()
                    && model
                        .versions
                        .iter()
                        .filter(|v| v.status.can_serve())
                        .all(|v| surely_full(&v.status))
            }
        };
        if full {
            if version.is_none() {
                // Offered to the policy, and refused by every version: the objective's load and
                // saturation must see it, though no version was chosen.
                if let Some(highest) = model.highest_ready() {
                    highest.stats.figures().routed(false);
                }
                model
                    .versions
                    .iter()
                    .filter(|v| matches!(v.status, VersionStatus::Ready(_)))
                    .for_each(|v| v.stats.figures().refused());
            }
            return Err(GatewayError::new(
                ErrorKind::Overloaded,
                "the model's queue is full; retry shortly",
            ));
        }
        Ok(())
    }

    /// Serves one request: decides once where it goes ([`Gateway::destination`]), then runs
    /// that one path: served here, served here as a turn of its sequence, or forwarded to the
    /// peer that hosts its version or holds its sequence. A request without an id gets one, so
    /// that feedback can refer to it.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, GatewayError> {
        match self.destination(&request).await? {
            Destination::Here(routed) => self.serve_here(request, routed).await,
            Destination::InSequence(turn, control) => {
                self.serve_turn(request, turn, &control).await
            }
            Destination::Peer(remote, hop) => self.forward(request, &remote, hop, None).await,
            Destination::Spill(remote, here) => {
                self.forward(request, &remote, Hop::Any, Some(here)).await
            }
            Destination::Answered(response) => Ok(response),
        }
    }

    /// Where a request goes. Outside a sequence: the version the table routes it to, here or
    /// on the peers that host it. A sequence's start: routed the same way, but to the node that
    /// owns the sequence's id when other nodes serve that version too; it opens here
    /// otherwise. A later request of a sequence: where it is open here, else on the peer
    /// that holds it. A peer asking whether a sequence is open here is answered at once.
    async fn destination(&self, request: &InferRequest) -> Result<Destination<'_>, GatewayError> {
        let control = sequence_control(request)?;
        self.note_forwarded(request);
        let Some(control) = control else {
            return Ok(match self.route_waiting_for_loads(request).await? {
                Routed::Local(routed) => match self.spill(request, &routed) {
                    Some(peers) => Destination::Spill(peers, routed),
                    None => Destination::Here(routed),
                },
                Routed::Remote(remote) => Destination::Peer(remote, Hop::Any),
            });
        };
        if !control.start
            && forwarded_from(request).is_some()
            && request.headers.contains_key(SEQUENCE_PROBE)
        {
            // A peer asks, before it sends a body, whether the sequence lives here.
            if !self.sequences.holds(&request.model, &control.id) {
                return Err(GatewayError::invalid(format!(
                    "sequence {} of model '{}' {NOT_OPEN} on this node",
                    control.id,
                    crate::error::quoted(&request.model)
                ))
                .with_reason(Reason::SequenceNotOpen));
            }
            return Ok(Destination::Answered(InferResponse {
                model_name: request.model.as_str().into(),
                model_version: request.version.as_deref().unwrap_or_default().into(),
                id: None,
                outputs: Vec::new(),
            }));
        }
        let pin = control.id.pin();
        if control.start {
            let routed = match self.route_waiting_for_loads(request).await? {
                Routed::Local(routed) => routed,
                Routed::Remote(remote) => return Ok(Destination::Peer(remote, Hop::Start(pin))),
            };
            if let Some(owner) = self.sequence_owner_elsewhere(request, &routed, pin) {
                return Ok(Destination::Peer(owner, Hop::Start(pin)));
            }
            let Some(settings) = routed.ready.sequence.clone() else {
                return Err(GatewayError::invalid(format!(
                    "version '{}' of model '{}' does not serve sequences (model.toml has no \
                     [sequence] or [[state]]); send the request without sequence parameters",
                    routed.key.version, routed.key.model
                )));
            };
            if let Some(capture) = &request.capture {
                capture.routed(&routed.key.version, Some(routed.chosen), None);
            }
            let turn = self.sequences.start(&control, &routed, &settings)?;
            return Ok(Destination::InSequence(turn, control));
        }
        // An open sequence goes on even if its model was removed meanwhile (its version
        // drains); otherwise an unknown model is 404, as for any request.
        let not_open = match self.sequences.resume(&request.model, &control) {
            Ok(turn) => return Ok(Destination::InSequence(turn, control)),
            Err(error) => error,
        };
        // Not open here: in a cluster it lives on the node its start went to.
        let routed = route(&self.tables.peek(), request);
        match routed {
            Ok(Routed::Remote(remote)) => Ok(Destination::Peer(remote, Hop::Turn(pin))),
            Ok(Routed::Local(routed)) => match self.other_hosts(request, &routed) {
                Some(hosts) => Ok(Destination::Peer(hosts, Hop::Turn(pin))),
                None => Err(not_open),
            },
            Err(unknown) if self.tables.peek().model(&request.model).is_err() => Err(unknown),
            Err(_) => Err(not_open),
        }
    }

    /// Serves a request outside any sequence on the version routed here, then feeds its
    /// outcome to the figures, the feedback log and the shadow.
    async fn serve_here(
        &self,
        mut request: InferRequest,
        routed: Route,
    ) -> Result<InferResponse, GatewayError> {
        self.name_request(&mut request, &routed.key.version);
        let capture = request.capture.take();
        if let Some(capture) = &capture {
            capture.routed(
                &routed.key.version,
                Some(routed.chosen),
                request.id.as_deref(),
            );
        }
        let shadow_inputs = routed.shadow.as_ref().map(|_| request.inputs.clone());
        let received = request.received.unwrap_or_else(Instant::now);
        let caller_deadline = caller_deadline_first(&request, &routed.ready, received);
        let protocol = request.protocol;
        let result = serve(&routed, request).await;
        let compute = result.as_ref().map(|(_, c)| *c).map_err(|e| e.kind);
        let outcome = Outcome::served(protocol, compute, caller_deadline, received);
        let fault = record(&routed.stats, outcome);
        self.reward_latency(&routed, fault, outcome.elapsed);
        let (response, _) = result?;
        if routed.takes_feedback
            && let Some(id) = &response.id
        {
            self.experiments
                .remember(id, &routed.key.model, &routed.stats);
        }
        if let (Some(shadow), Some(inputs)) = (routed.shadow, shadow_inputs) {
            // Off the request path: the caller never waits for the shadow or sees its errors.
            let primary_outputs = response.outputs.clone();
            tasks::spawn(
                &SHADOW,
                run_shadow(
                    shadow,
                    routed.key.model,
                    routed.key.version,
                    inputs,
                    primary_outputs,
                    capture,
                ),
            );
        }
        Ok(response)
    }

    /// Serves a request of a sequence that is open here (or has just opened): the sequence's
    /// state goes in with the request's inputs and comes back out of its outputs.
    async fn serve_turn(
        &self,
        mut request: InferRequest,
        turn: Turn<'_>,
        control: &SequenceControl,
    ) -> Result<InferResponse, GatewayError> {
        let route = turn.route.clone();
        if let Some(asked) = &request.version
            && *asked != *route.key.version
            && !self
                .tables
                .peek()
                .model(&request.model)
                .and_then(|model| model.version(asked))
                .is_ok_and(|version| version.label == route.key.version)
        {
            return Err(GatewayError::invalid(format!(
                "sequence {} runs on version '{}', not '{}'",
                control.id,
                route.key.version,
                crate::error::quoted(asked)
            )));
        }
        self.name_request(&mut request, &route.key.version);
        if let Some(capture) = request.capture.take() {
            // A start was routed by the policy, and said so in `destination`.
            let chosen = (!control.start).then_some(Chosen::Sequence);
            capture.routed(&route.key.version, chosen, request.id.as_deref());
        }
        // State the caller sends itself (explicit state) wins over the one the gateway keeps.
        for state in &turn.states {
            if !request.inputs.iter().any(|input| input.name == state.name) {
                request.inputs.push(state.clone());
            }
        }
        if !turn.settings.controls.is_empty() {
            add_controls(
                &route.key.model,
                &turn.settings.controls,
                control,
                route.ready.max_batch_size > 0,
                &mut request.inputs,
            )?;
        }
        let received = request.received.unwrap_or_else(Instant::now);
        let protocol = request.protocol;
        let ready = &route.ready;
        let caller_deadline = caller_deadline_first(&request, ready, received);
        let priority = request.priority();
        let result = async {
            let (inputs, deadline) = checked_inputs(&route.key.model, ready, &mut request)?;
            ready
                .replicas
                .infer_sequence(
                    inputs,
                    Some(deadline),
                    turn.replica,
                    &turn.settings.join,
                    ready.open_sequences.load(Ordering::Relaxed),
                    priority,
                )
                .await
        }
        .await;
        let compute = result.as_ref().map(|(_, c, _)| *c).map_err(|e| e.kind);
        record(
            &route.stats,
            Outcome::served(protocol, compute, caller_deadline, received),
        );
        let (mut outputs, _, replica) = result?;
        let states = next_states(&turn.settings, &mut outputs, &request.outputs)?;
        turn.finish(states, replica);
        let outputs = client_outputs(ready, outputs, &request)?;
        Ok(InferResponse {
            model_name: route.key.model.clone(),
            model_version: route.key.version.clone(),
            id: request.id,
            outputs,
        })
    }

    /// In a cluster where other nodes also serve the sequence's version: the peer that owns the
    /// sequence, when that is not this node. Every node computes the same owner (rendezvous
    /// hashing of the sequence's id over the nodes that serve the version), so a load balancer
    /// may send each request of a sequence to any node. A forwarded request is served here.
    fn sequence_owner_elsewhere(
        &self,
        request: &InferRequest,
        routed: &Route,
        pin: u64,
    ) -> Option<RemoteRoute> {
        let node = &self.forwarding.as_ref()?.node;
        let peers = self.peers_also_serving(request, routed)?;
        let owner = sequence_owner(
            pin,
            std::iter::once(&**node).chain(peers.iter().map(|p| &*p.node)),
        )?;
        let peer = peers.iter().find(|peer| *peer.node == *owner)?;
        Some(remote_route(routed, vec![peer.clone()]))
    }

    /// In a cluster, for an autoscaled version whose replicas here already carry their target
    /// concurrency: the other nodes that serve it, which take the request instead of a queue
    /// here. The leader places more replicas on more nodes as the load across them grows, and
    /// this is how the load reaches them whichever node the clients call.
    fn spill(&self, request: &InferRequest, routed: &Route) -> Option<RemoteRoute> {
        self.forwarding.as_ref()?;
        let scaling = routed.ready.scaling.as_ref()?;
        let replicas = routed.ready.replicas.replica_count();
        // Float-to-int `as` saturates: a huge target never spills.
        let carried = (replicas as f64 * scaling.target_concurrency).ceil() as usize;
        if replicas == 0 || routed.ready.replicas.outstanding() < carried.max(1) {
            return None;
        }
        let peers = self.peers_also_serving(request, routed)?;
        Some(remote_route(routed, peers))
    }

    /// In a cluster: the other nodes that serve a version served here too, for a sequence's
    /// request that finds its sequence not open here (its start went to one of them).
    fn other_hosts(&self, request: &InferRequest, routed: &Route) -> Option<RemoteRoute> {
        let peers = self.peers_also_serving(request, routed)?;
        Some(remote_route(routed, peers))
    }

    /// In a cluster, for a request no other node forwarded here (that one is served here): the
    /// other live nodes that serve the version it was routed to here, if any.
    fn peers_also_serving(&self, request: &InferRequest, routed: &Route) -> Option<Vec<Arc<Peer>>> {
        self.forwarding.as_ref()?;
        if forwarded_from(request).is_some() {
            return None;
        }
        let table = self.tables.peek();
        let version = table
            .model(&routed.key.model)
            .and_then(|model| model.version(&routed.key.version))
            .ok()?;
        (!version.peers.is_empty()).then(|| version.peers.clone())
    }

    /// Marks a request another node forwarded here, in its span and the metrics.
    fn note_forwarded(&self, request: &InferRequest) {
        if let Some(from) = forwarded_from(request) {
            tracing::Span::current().record("forwarded_from", &*crate::error::quoted(from));
            if let Some(forwarding) = &self.forwarding {
                forwarding.metrics.received_forwarded();
            }
        }
    }

    /// Sends a request for a version only peers host to one of them: the least loaded in
    /// rotation (a sequence's start: its owner; a later request of a sequence: the host that
    /// says it holds it), then the next while one could not have run it. The version is
    /// pinned, so the peer does not route it again, and the peer never forwards it on. With
    /// `here`, a request none of them ran is served here instead.
    async fn forward(
        &self,
        mut request: InferRequest,
        route: &RemoteRoute,
        hop: Hop,
        here: Option<Route>,
    ) -> Result<InferResponse, GatewayError> {
        let not_here = || {
            format!(
                "model '{}' version '{}' is not hosted on this node",
                route.key.model, route.key.version
            )
        };
        let Some(forwarding) = &self.forwarding else {
            return Err(GatewayError::unavailable(not_here()));
        };
        if let Some(from) = forwarded_from(&request) {
            return Err(GatewayError::unavailable(format!(
                "{}, and node '{}' already forwarded the request here (requests are forwarded \
                 at most once)",
                not_here(),
                crate::error::quoted(from)
            )));
        }
        self.name_request(&mut request, &route.key.version);
        // Kept in the request: a spill that no peer takes is served here, with its shadow.
        if let Some(capture) = &request.capture {
            let chosen = match hop {
                Hop::Turn(_) => Chosen::Sequence,
                Hop::Any | Hop::Start(_) => route.chosen,
            };
            capture.routed(&route.key.version, Some(chosen), request.id.as_deref());
        }
        request.version = Some(route.key.version.to_string());
        let deadline = request.deadline;
        let received = request.received.unwrap_or_else(Instant::now);
        let mut passed: Vec<String> = Vec::new();
        let mut busy = false;
        let deadline_passed = |passed: &[String]| {
            record(
                &route.stats,
                Outcome::forwarded(Err(ErrorKind::DeadlineExceeded), true, received),
            );
            GatewayError::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "the request's deadline passed while it was forwarded ({})",
                    passed.join("; ")
                ),
            )
        };
        let peers: Vec<&Arc<Peer>> = match hop {
            Hop::Any => route.remote.order(None),
            // Its owner only: another peer would open a second sequence that its later
            // requests never reach.
            Hop::Start(pin) => route.remote.order(Some(pin)).into_iter().take(1).collect(),
            // The host that holds it, asked before the body is sent anywhere.
            Hop::Turn(pin) => {
                match self
                    .sequence_holder(forwarding, route, &request, pin, &mut passed)
                    .await?
                {
                    Some(holder) => vec![holder],
                    None => Vec::new(),
                }
            }
        };
        let mut request = Some(request);
        let mut tries = 0;
        for (index, peer) in peers.iter().enumerate() {
            if tries == MAX_FORWARD_TRIES {
                break;
            }
            if deadline.is_some_and(|deadline| deadline <= Instant::now()) {
                return Err(deadline_passed(&passed));
            }
            let in_flight = match peer.admit(&forwarding.limits, Instant::now()) {
                Ok(in_flight) => in_flight,
                Err(why) => {
                    busy |= why == OutOfRotation::Busy;
                    passed.push(format!("node '{}': {why}", peer.node));
                    continue;
                }
            };
            tries += 1;
            // Kept for the next peer only while there is one, or to serve here after all.
            let next = index + 1 < peers.len() && tries < MAX_FORWARD_TRIES;
            let sent = match next || here.is_some() {
                true => request.clone(),
                false => request.take(),
            };
            let Some(sent) = sent else {
                break;
            };
            tracing::Span::current().record("forwarded_to", &*peer.node);
            let answer = forwarding
                .forwarder
                .forward(peer, &forwarding.node, sent, deadline)
                .await;
            drop(in_flight);
            let now = Instant::now();
            // A spilled request the peer had no room for either: the next peer, or here.
            if here.is_some()
                && let Err(ForwardError::Answered(error)) = &answer
                && error.kind == ErrorKind::Overloaded
            {
                peer.answered(now);
                forwarding.metrics.forwarded(
                    &route.key.model,
                    &route.key.version,
                    &peer.node,
                    "overloaded",
                );
                passed.push(format!("node '{}': {}", peer.node, error.message));
                continue;
            }
            let outcome = match &answer {
                Ok(_) => Ok(()),
                Err(ForwardError::Answered(error)) => Err(error.kind),
                Err(ForwardError::Unreachable(reason)) => {
                    peer.failed(now);
                    forwarding.metrics.forwarded(
                        &route.key.model,
                        &route.key.version,
                        &peer.node,
                        "unreachable",
                    );
                    tracing::warn!(model = %route.key.model, version = %route.key.version, peer = %peer.node, %reason, "peer did not run the request; trying the next");
                    passed.push(format!("node '{}': {reason}", peer.node));
                    continue;
                }
                Err(ForwardError::Broken(_)) => Err(ErrorKind::Unavailable),
                Err(ForwardError::Silent(_)) => Err(ErrorKind::DeadlineExceeded),
            };
            match &answer {
                Err(ForwardError::Broken(_)) => peer.failed(now),
                // A short deadline says nothing of the peer; silence for the stall timeout does.
                Err(ForwardError::Silent(waited)) => {
                    if *waited >= forwarding.limits.stall_after {
                        peer.failed(now);
                    }
                }
                _ => peer.answered(now),
            }
            let label = match (&answer, outcome) {
                (Err(ForwardError::Broken(_)), _) => "broken",
                (_, Ok(())) => "success",
                (_, Err(kind)) => kind.row().outcome,
            };
            forwarding
                .metrics
                .forwarded(&route.key.model, &route.key.version, &peer.node, label);
            record(
                &route.stats,
                Outcome::forwarded(outcome, deadline.is_some(), received),
            );
            return answer.map_err(|error| match error {
                ForwardError::Answered(error) => error,
                // It may have run there: sending it to another could run it twice.
                ForwardError::Broken(reason) => GatewayError::unavailable(format!(
                    "the connection to node '{}' broke after the request was sent ({reason}); \
                     it may have run there, so it was not sent to another node",
                    peer.node
                )),
                ForwardError::Silent(waited) => GatewayError::new(
                    ErrorKind::DeadlineExceeded,
                    format!(
                        "node '{}' did not answer within the request's deadline ({waited:?}); \
                         it may have run there, so it was not sent to another node",
                        peer.node
                    ),
                ),
                ForwardError::Unreachable(reason) => GatewayError::unavailable(reason),
            });
        }
        if deadline.is_some_and(|deadline| deadline <= Instant::now()) {
            return Err(deadline_passed(&passed));
        }
        if let (Some(here), Some(request)) = (here, request) {
            return self.serve_here(request, here).await;
        }
        let (kind, why) = match (busy, passed.is_empty()) {
            (_, true) => (ErrorKind::Unavailable, "no live node hosts it".to_owned()),
            (true, false) => (
                ErrorKind::Overloaded,
                format!("the nodes hosting it are busy ({})", passed.join("; ")),
            ),
            (false, false) => (
                ErrorKind::Unavailable,
                format!("no node hosting it could take it ({})", passed.join("; ")),
            ),
        };
        record(&route.stats, Outcome::forwarded(Err(kind), false, received));
        Err(GatewayError::new(
            kind,
            format!("{}, and {why}", not_here()),
        ))
    }

    /// The host of a later request of a sequence: the hosts are asked in turn, owner first,
    /// whether the sequence is open there, each with the sequence's id and not its inputs, so
    /// that the body goes to one node only. `None` when none could be asked (the reasons are
    /// in `passed`); a refusal when every host that answered says it is not open.
    async fn sequence_holder<'r>(
        &self,
        forwarding: &Forwarding,
        route: &'r RemoteRoute,
        request: &InferRequest,
        pin: u64,
        passed: &mut Vec<String>,
    ) -> Result<Option<&'r Arc<Peer>>, GatewayError> {
        let mut answered = false;
        for peer in route
            .remote
            .order(Some(pin))
            .into_iter()
            .take(MAX_SEQUENCE_HOSTS)
        {
            let in_flight = match peer.admit(&forwarding.limits, Instant::now()) {
                Ok(in_flight) => in_flight,
                Err(why) => {
                    passed.push(format!("node '{}': {why}", peer.node));
                    continue;
                }
            };
            let held = forwarding
                .forwarder
                .holds_sequence(peer, &forwarding.node, request, request.deadline)
                .await;
            drop(in_flight);
            match held {
                Ok(true) => {
                    peer.answered(Instant::now());
                    return Ok(Some(peer));
                }
                Ok(false) => {
                    peer.answered(Instant::now());
                    answered = true;
                }
                Err(ForwardError::Answered(error)) => {
                    peer.answered(Instant::now());
                    return Err(error);
                }
                Err(ForwardError::Unreachable(reason) | ForwardError::Broken(reason)) => {
                    peer.failed(Instant::now());
                    passed.push(format!("node '{}': {reason}", peer.node));
                }
                Err(ForwardError::Silent(waited)) => {
                    passed.push(format!("node '{}': no answer in {waited:?}", peer.node));
                }
            }
        }
        if answered && passed.is_empty() {
            let id = sequence_control(request)
                .ok()
                .flatten()
                .map(|control| control.id.to_string())
                .unwrap_or_default();
            return Err(GatewayError::invalid(format!(
                "sequence {id} of model '{}' {NOT_OPEN} on any node that serves it: its first \
                 request needs sequence_start = true (a sequence closes at sequence_end, and \
                 after its idle timeout)",
                route.key.model
            ))
            .with_reason(Reason::SequenceNotOpen));
        }
        Ok(None)
    }

    /// Names the request in its span: the version that serves it, and its id (one is issued
    /// if it brought none, so that feedback can refer to it).
    fn name_request(&self, request: &mut InferRequest, label: &str) {
        let span = tracing::Span::current();
        span.record("version", label);
        let id = request.id.get_or_insert_with(|| self.ids.issue());
        span.record("request_id", id.as_str());
    }

    /// The open sequences, for the periodic sweep and the gauges.
    pub fn sequences(&self) -> &Sequences {
        &self.sequences
    }

    /// Routes a request; one that names a version (or an alias of one) still loading waits for
    /// it, bounded by its deadline, as a request waits for a cold start.
    async fn route_waiting_for_loads(
        &self,
        request: &InferRequest,
    ) -> Result<Routed, GatewayError> {
        let received = request.received.unwrap_or_else(Instant::now);
        let deadline = request.deadline.unwrap_or(received + LOADING_WAIT);
        let mut published = self.tables.watch_published();
        // A version waiting for room is asked for once: if, once the reconciler has tried it,
        // it still waits, nothing could make room, and the request is refused at once with why.
        let mut asked: Option<u64> = None;
        // On a node of a cluster: whether the leader was asked, which the request repeats
        // while it waits (an ask is forgotten after a while).
        let mut asking_leader = false;
        loop {
            let routed = {
                let _route =
                    child(|| tracing::debug_span!(target: TRACE_TARGET, "route")).entered();
                let table = self.tables.peek();
                match route(&table, request) {
                    Err(error) => match coming(&table, request) {
                        Some(Coming::Loading) => Err(error),
                        // On a node of a cluster the leader makes room, on whichever node has
                        // it: the request waits to be placed until its deadline, or until the
                        // leader says that no node can make room.
                        Some(Coming::WaitingForRoom { key, hopeless })
                            if self.tables.clustered() =>
                        {
                            // Asked even when hopeless: the leader tries again while asked.
                            self.tables.want_pending(&key);
                            asking_leader = true;
                            if hopeless {
                                return Err(error);
                            }
                            Err(error)
                        }
                        // Its load is tried now; the request waits for it like for any load.
                        Some(Coming::WaitingForRoom { key, .. }) => match asked {
                            None => {
                                asked = Some(self.tables.pending_tries());
                                self.tables.want_pending(&key);
                                Err(error)
                            }
                            Some(tries) if self.tables.pending_tries() > tries => {
                                return Err(error);
                            }
                            // Another table came first: the try is still to come.
                            Some(_) => Err(error),
                        },
                        None => return Err(error),
                    },
                    other => return other,
                }
            };
            let wake = match asking_leader {
                true => deadline.min(Instant::now() + ASK_AGAIN),
                false => deadline,
            };
            let wait = tokio::time::timeout_at(wake.into(), published.changed()).await;
            let asks_again = wait.is_err() && wake < deadline;
            if !matches!(wait, Ok(Ok(()))) && !asks_again {
                return routed.map_err(|error| {
                    GatewayError::new(
                        ErrorKind::DeadlineExceeded,
                        format!(
                            "{} (waited for it until the request's deadline)",
                            error.message
                        ),
                    )
                });
            }
        }
    }

    /// For a bandit without feedback: the reward of a request served, from whether it was the
    /// version's fault and how long it took.
    fn reward_latency(&self, routed: &Route, fault: Option<bool>, elapsed: Duration) {
        let Some(version_fault) = fault else {
            return;
        };
        if let Some(objective_ms) = routed.bandit_objective_ms
            && !self.experiments.has_feedback(&routed.key.model)
        {
            let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            routed.stats.record_reward(routing::latency_reward(
                !version_fault,
                elapsed_ms,
                objective_ms,
            ));
        }
    }

    /// Credits the version that served `request_id` with `reward`, once; returns the model's
    /// name. An id in the gateway's own format must carry its MAC: a forged one is unknown,
    /// whatever the log holds.
    pub fn feedback(&self, request_id: &str, reward: f64) -> Result<Arc<str>, FeedbackError> {
        if RequestIds::is_gateway_id(request_id) && !self.ids.verify(request_id) {
            return Err(FeedbackError::UnknownRequest(request_id.to_owned()));
        }
        self.experiments.feedback(request_id, reward)
    }
}

/// The one place a request's outcome is written, on every path (served here, in a sequence,
/// forwarded): its version's record, which Prometheus, Triton's statistics, the routing
/// statistics and the dashboard read. Returns whether it was the version's fault, when the
/// outcome says something of the version.
fn record(stats: &VersionStats, outcome: Outcome) -> Option<bool> {
    stats.figures().record(&outcome)
}

/// Whether the caller's deadline comes before the version's own timeout: then it is the one
/// that fires, and missing it says nothing about the version.
fn caller_deadline_first(request: &InferRequest, ready: &ReadyVersion, received: Instant) -> bool {
    request
        .deadline
        .is_some_and(|deadline| deadline < received + ready.timeout)
}

/// Where a request goes, decided once by [`Gateway::destination`] before anything is served
/// or sent.
enum Destination<'g> {
    /// Outside any sequence, served here on the version routed to.
    Here(Route),
    /// A request of a sequence open (or just opened) here, with its turn.
    InSequence(Turn<'g>, SequenceControl),
    /// To the peers that host its version or hold its sequence.
    Peer(RemoteRoute, Hop),
    /// To the peers that also host its version, as it is busy here; served here after all if
    /// none of them runs it (this node's view of them may be a heartbeat old).
    Spill(RemoteRoute, Route),
    /// A peer's question whether a sequence is open here, answered without serving.
    Answered(InferResponse),
}

/// How a request is forwarded.
#[derive(Clone, Copy)]
enum Hop {
    /// To the least loaded peer, then the next when one cannot be reached.
    Any,
    /// A sequence's start: to its owner only.
    Start(u64),
    /// A later request of a sequence: its owner, then the other hosts while they do not hold
    /// it.
    Turn(u64),
}

/// Hosts a later request of a sequence may ask for it.
const MAX_SEQUENCE_HOSTS: usize = 8;

/// A route to a version served here that goes to some of the peers that also serve it.
fn remote_route(routed: &Route, peers: Vec<Arc<Peer>>) -> RemoteRoute {
    RemoteRoute {
        key: routed.key.clone(),
        remote: Arc::new(RemoteVersion {
            peers,
            signature: Default::default(),
            max_batch_size: 0,
            device: routed.ready.device,
        }),
        stats: routed.stats.clone(),
        chosen: routed.chosen,
    }
}

/// Peers a forwarded request tries before it fails: a dead node is taken out of the view
/// within a few seconds, so more tries would only add latency.
const MAX_FORWARD_TRIES: usize = 3;

/// How long a request naming a loading version, and no deadline, waits for it.
const LOADING_WAIT: Duration = Duration::from_secs(30);

/// How often a request waiting for a cluster's leader to place its version asks again.
pub const ASK_AGAIN: Duration = Duration::from_secs(2);

/// How the version a request cannot be routed to yet is coming.
enum Coming {
    Loading,
    /// `pending`: it waits for room, which an eviction may make. `hopeless`: a cluster's
    /// leader found no node that can make it.
    WaitingForRoom {
        key: VersionKey,
        hopeless: bool,
    },
}

/// Whether the request waits for a version on its way: the version it names, or (naming none)
/// one of its model's when none is ready, loading or waiting for room (the highest label
/// waiting for room, if none is loading).
fn coming(table: &ModelTable, request: &InferRequest) -> Option<Coming> {
    let model = table.model(&request.model).ok()?;
    let named = request
        .version
        .as_deref()
        .or_else(|| crate::core::route::rule_target(model, request).map(|(_, target)| target));
    let versions: Vec<&Arc<VersionEntry>> = match named {
        Some(label) => vec![model.version(label).ok()?],
        None if model.highest_ready().is_some() => return None,
        None => model.versions.iter().collect(),
    };
    if versions
        .iter()
        .any(|version| matches!(version.status, VersionStatus::Loading))
    {
        return Some(Coming::Loading);
    }
    versions
        .iter()
        .rev()
        .find_map(|version| match &version.status {
            VersionStatus::Pending(reason) => Some(Coming::WaitingForRoom {
                key: VersionKey::new(&model.name, &version.label),
                hopeless: reason.starts_with(NO_ROOM_ANYWHERE),
            }),
            _ => None,
        })
}

/// The part of `infer` after the version is chosen; also returns the model's compute time.
async fn serve(
    routed: &Route,
    mut request: InferRequest,
) -> Result<(InferResponse, Duration), GatewayError> {
    let ready = &routed.ready;
    if ready
        .sequence
        .as_ref()
        .is_some_and(|sequence| !sequence.controls.is_empty())
    {
        // Its control inputs exist only within a sequence.
        return Err(GatewayError::invalid(format!(
            "inference request to model '{}' must specify a non-zero or non-empty correlation \
             ID (sequence_id, with sequence_start on a sequence's first request)",
            routed.key.model
        )));
    }
    let priority = request.priority();
    let (inputs, deadline) = checked_inputs(&routed.key.model, ready, &mut request)?;
    let (outputs, compute) = ready
        .replicas
        .infer(inputs, Some(deadline), priority)
        .await?;
    let outputs = client_outputs(ready, outputs, &request)?;
    let response = InferResponse {
        model_name: routed.key.model.clone(),
        model_version: routed.key.version.clone(),
        id: request.id,
        outputs,
    };
    Ok((response, compute))
}

/// Checks a request against the version that will serve it; takes its inputs, and gives the
/// deadline that applies.
fn checked_inputs(
    model: &str,
    ready: &ReadyVersion,
    request: &mut InferRequest,
) -> Result<(Vec<NamedTensor>, Instant), GatewayError> {
    check_request(model, ready, request)?;
    let deadline = effective_deadline(ready, request.deadline)?;
    let mut inputs = std::mem::take(&mut request.inputs);
    prepare_inputs(ready, &mut inputs);
    Ok((inputs, deadline))
}

/// Checks a request's inputs and outputs against what the version takes from clients.
fn check_request(
    model: &str,
    ready: &ReadyVersion,
    request: &InferRequest,
) -> Result<(), GatewayError> {
    let interface = &ready.interface;
    if interface.reshapes.is_empty() {
        validate(
            model,
            ready.signature(),
            ready.max_batch_size,
            &interface.optional,
            request,
        )
    } else {
        let signature = ready.request_signature();
        validate(
            model,
            &signature,
            ready.max_batch_size,
            &interface.optional,
            request,
        )
    }
}

/// Checked inputs in the form the model takes them.
fn prepare_inputs(ready: &ReadyVersion, inputs: &mut [NamedTensor]) {
    reshape_scalars(ready.signature(), inputs);
    apply_reshapes(&ready.interface.reshapes, true, inputs);
}

/// A request's outputs as the client sees them: those it asked for, reshaped as configured, and
/// those it asked to have classified as their top classes.
fn client_outputs(
    ready: &ReadyVersion,
    outputs: Vec<NamedTensor>,
    request: &InferRequest,
) -> Result<Vec<NamedTensor>, GatewayError> {
    let mut outputs = select_outputs(outputs, &request.outputs);
    apply_reshapes(&ready.interface.reshapes, false, &mut outputs);
    for (name, count) in &request.classification {
        if let Some(output) = outputs.iter_mut().find(|output| &output.name == name) {
            output.tensor = classify(
                name,
                &output.tensor,
                *count,
                ready.max_batch_size > 0,
                ready.interface.labels(name),
            )?;
        }
    }
    Ok(outputs)
}

/// The earlier of the caller's deadline and the version's timeout; 504 if it already passed.
fn effective_deadline(
    ready: &ReadyVersion,
    asked: Option<Instant>,
) -> Result<Instant, GatewayError> {
    let now = Instant::now();
    let timeout_at = now.checked_add(ready.timeout).unwrap_or(now);
    let deadline = asked.map_or(timeout_at, |asked| asked.min(timeout_at));
    if deadline <= now {
        return Err(GatewayError::new(
            ErrorKind::DeadlineExceeded,
            "the request's deadline passed before it reached the model",
        ));
    }
    Ok(deadline)
}

/// Runs the mirrored copy of a request on the shadow and compares its outputs with the
/// primary's.
async fn run_shadow(
    shadow: ShadowTarget,
    model: Arc<str>,
    primary: Arc<str>,
    inputs: Vec<NamedTensor>,
    primary_outputs: Vec<NamedTensor>,
    capture: Option<Ticket>,
) {
    let probe = InferRequest {
        model: model.to_string(),
        inputs,
        ..InferRequest::default()
    };
    let ready = &shadow.ready;
    let outputs = match check_request(&model, ready, &probe) {
        Ok(()) => {
            let deadline = Instant::now() + ready.timeout;
            let mut inputs = probe.inputs;
            prepare_inputs(ready, &mut inputs);
            // A copy for comparison only: it gives way to every live request.
            let result = ready
                .replicas
                .infer(inputs, Some(deadline), Priority::LOWEST)
                .await;
            if let Err(error) = &result {
                tracing::debug!(%model, shadow = %shadow.label, %error, "the shadow failed");
            }
            result.ok().map(|(outputs, _)| outputs)
        }
        Err(error) => {
            tracing::debug!(%model, shadow = %shadow.label, %error, "the shadow cannot take the primary's inputs");
            None
        }
    };
    let comparison = shadow
        .stats
        .record_shadow(&primary, &primary_outputs, outputs.as_deref());
    if let Some(capture) = capture {
        capture.shadow(&shadow.label, comparison);
    }
}
