//! The endpoint pool: which endpoints the balancer has (membership), and the snapshot
//! every call reads (the usable ones and a picker built for them).
//!
//! Membership changes in one step. A new endpoint set, from
//! [`Balancer::set_endpoints`](super::Balancer::set_endpoints), a resolver or one
//! endpoint added or removed, is applied as one diff under the pool's lock: the
//! survivors keep their connections, the missing are marked removed, the new are
//! created (linear in the set's size, with hash sets), and then, if any left, one
//! snapshot is published, with one picker built for it. (New endpoints change no
//! snapshot yet: each joins it when its own task has it READY.) A call
//! therefore sees the old set or the new one, never a set half-way between; and a
//! Maglev table is rebuilt once per change, not once per endpoint removed.
//!
//! Worked example: endpoints `a b c d e`, all READY, and the resolver now says
//! `a b x y z`. One step removes `c d e` and adds `x y z` (CONNECTING): the snapshot
//! goes from `[a b c d e]` to `[a b]`, one picker build; `x y z` join it one by one
//! as each becomes READY, each a publish of its own.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, RwLock, atomic::AtomicU64, atomic::Ordering},
};

use rand::rngs::SmallRng;
use tokio::sync::watch;
use tracing::info;

use super::connection::{ConnectionTask, Fleet};
use super::subchannel::{EndpointStatus, Settings, Subchannel};
use crate::sync::{lock, read, write};
use crate::transport::wire::Wire;
use crate::{
    Connectivity, Endpoint, EndpointState, Error,
    policy::{BuildPicker, EndpointSet, Picker},
};

/// The endpoints and their connections, shared by all balancer clones and tasks.
///
/// Lock order: `publishing` or `ejecting` first, then `subchannels`. Never publish
/// while holding `subchannels` (a `std` `RwLock` cannot be read by the thread that
/// holds it for writing): `apply` lets it go first.
pub(crate) struct Pool {
    pub subchannels: RwLock<Vec<Arc<Subchannel>>>,
    /// What calls see: READY, not ejected endpoints, and a picker built for them.
    pub snapshot: arc_swap::ArcSwap<Snapshot>,
    /// Serialises `publish` (a snapshot from older states must never be stored after
    /// one from newer states) and holds what pickers are built with: the policy, which
    /// can be switched while calls go on, and the RNG.
    pub publishing: Mutex<Publishing>,
    /// Serialises ejection decisions, so that the ejection limit holds.
    pub ejecting: Mutex<()>,
    /// Bumped after every change, to wake calls waiting for a READY endpoint.
    pub changes: watch::Sender<u64>,
    /// Bumped whenever an endpoint enters TRANSIENT_FAILURE: the resolver is asked to
    /// look again (gRPC's `ResolveNow`), as the failure may mean the list is stale.
    pub failures: watch::Sender<u64>,
    pub settings: Settings,
    /// Closed when the last balancer clone is dropped: every task ends.
    pub stopped: watch::Receiver<()>,
    /// Counts subchannels ever made, to seed each one's backoff jitter differently.
    pub made: AtomicU64,
    /// Counts outlier-detection intervals, to seed each one's enforcement draws.
    pub intervals: AtomicU64,
    /// How often to ask servers for out-of-band load reports, in nanoseconds (0: not
    /// at all), as the policy says; read when a connection is made.
    pub oob_period: AtomicU64,
}

/// What `publish` builds pickers with.
pub(crate) struct Publishing {
    policy: Arc<dyn BuildPicker>,
    /// The policy changed since the last picker was built: build one even for the
    /// same endpoint set.
    policy_changed: bool,
    rng: SmallRng,
}

/// The READY endpoints and their picker: one consistent view for a call.
pub(crate) struct Snapshot {
    /// The name of the policy that built the picker.
    pub policy: &'static str,
    pub picker: Arc<dyn Picker>,
    pub ready: Vec<EndpointState>,
    pub routes: Vec<SnapshotRoute>,
    /// Every endpoint in the pool when the picker was built, for the policies that
    /// watch membership (the parents: see `BuildPicker::watches_membership`); empty
    /// for the others.
    pub members: Vec<EndpointState>,
}

pub(crate) struct SnapshotRoute {
    pub sub: Arc<Subchannel>,
    pub wire: Wire,
    pub generation: u64,
}

impl Pool {
    pub fn new(
        policy: Arc<dyn BuildPicker>,
        settings: Settings,
        stopped: watch::Receiver<()>,
        build_rng: SmallRng,
    ) -> Arc<Self> {
        let mut rng = build_rng;
        let oob_period = oob_nanos(policy.oob_load_reports());
        let snapshot = Snapshot {
            policy: policy.name(),
            picker: policy.build(&[], &mut rng),
            ready: Vec::new(),
            routes: Vec::new(),
            members: Vec::new(),
        };
        Arc::new(Self {
            subchannels: RwLock::new(Vec::new()),
            snapshot: arc_swap::ArcSwap::from_pointee(snapshot),
            publishing: Mutex::new(Publishing {
                policy,
                policy_changed: false,
                rng,
            }),
            ejecting: Mutex::new(()),
            changes: watch::Sender::new(0),
            failures: watch::Sender::new(0),
            settings,
            stopped,
            made: AtomicU64::new(0),
            intervals: AtomicU64::new(0),
            oob_period: AtomicU64::new(oob_period),
        })
    }

    /// Adds `endpoint` and starts connecting to it; `false` if it is already here.
    pub fn add(self: &Arc<Self>, endpoint: Endpoint) -> Result<bool, Error> {
        let sub = Arc::new(Subchannel::new(endpoint, &self.settings)?);
        {
            // Checked and added under one lock: two racing adds make one subchannel.
            let mut subs = write(&self.subchannels);
            if subs
                .iter()
                .any(|s| s.state.endpoint() == sub.state.endpoint())
            {
                return Ok(false);
            }
            subs.push(sub.clone());
        }
        self.start(sub);
        Ok(true)
    }

    /// Removes `endpoint`: no new call picks it; calls in flight finish on their own
    /// connection. `false` if it was not here.
    pub fn remove(&self, endpoint: &Endpoint) -> bool {
        let removed = {
            let mut subs = write(&self.subchannels);
            let position = subs.iter().position(|s| s.state.endpoint() == endpoint);
            position.map(|i| subs.remove(i))
        };
        let Some(sub) = removed else {
            return false;
        };
        Self::retire(&sub);
        self.keep_ejections_within_limit();
        self.publish();
        true
    }

    /// Makes the endpoint set exactly `endpoints`, in one step (see the module docs):
    /// one lock, one snapshot, one picker build. Every endpoint that can be added is,
    /// even if one cannot (a TLS name that does not fit, say): the first such error is
    /// returned after.
    pub fn apply(self: &Arc<Self>, endpoints: &[Endpoint]) -> Result<(), Error> {
        let mut first_error = None;
        let wanted: HashSet<&Endpoint> = endpoints.iter().collect();
        let (added, removed) = {
            let mut subs = write(&self.subchannels);
            let (kept, removed): (Vec<_>, Vec<_>) = subs
                .drain(..)
                .partition(|s| wanted.contains(s.state.endpoint()));
            *subs = kept;
            let mut present: HashSet<Endpoint> =
                subs.iter().map(|s| s.state.endpoint().clone()).collect();
            let mut added = Vec::new();
            for endpoint in endpoints {
                if !present.insert(endpoint.clone()) {
                    continue; // Already here (or listed twice).
                }
                match Subchannel::new(endpoint.clone(), &self.settings) {
                    Ok(sub) => {
                        let sub = Arc::new(sub);
                        subs.push(sub.clone());
                        added.push(sub);
                    }
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                }
            }
            (added, removed)
        };
        for sub in &removed {
            Self::retire(sub);
        }
        if !removed.is_empty() {
            self.keep_ejections_within_limit();
            self.publish();
        }
        for sub in added {
            self.start(sub);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Starts the task that connects `sub`, which is in the pool already.
    fn start(self: &Arc<Self>, sub: Arc<Subchannel>) {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let jitter_seed = self.settings.seed ^ (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let fleet: Arc<dyn Fleet> = self.clone();
        tokio::spawn(ConnectionTask::new(fleet, sub, jitter_seed).run());
    }

    /// `sub` has left the pool: its task ends, and calls in flight on it finish.
    fn retire(sub: &Subchannel) {
        sub.removed.send_replace(true);
        sub.state.set_connectivity(Connectivity::Idle);
        info!(endpoint = %sub.state.endpoint(), "removed: no new calls; calls in flight finish");
    }

    /// The name of the policy in use (the one that built the current picker).
    pub fn policy_name(&self) -> &'static str {
        self.snapshot.load().policy
    }

    /// Switches to `policy`: the next snapshot has a picker it built, for the same
    /// endpoints. Calls already picked go on where they are; every later pick is the new
    /// policy's. No call waits or fails for the switch.
    pub fn set_policy(&self, policy: Arc<dyn BuildPicker>) {
        {
            let mut publishing = lock(&self.publishing);
            info!(
                from = publishing.policy.name(),
                to = policy.name(),
                "policy switched"
            );
            // Connections made from now on follow the new policy's wish.
            self.oob_period
                .store(oob_nanos(policy.oob_load_reports()), Ordering::Relaxed);
            publishing.policy = policy;
            publishing.policy_changed = true;
        }
        self.publish();
    }

    /// Rebuilds the snapshot of usable endpoints and wakes waiting calls.
    pub fn publish(&self) {
        let mut publishing = lock(&self.publishing);
        let mut ready = Vec::new();
        let mut routes = Vec::new();
        // Every member too, but only for a policy that wants to see them (a parent:
        // a child whose endpoints are all still connecting is not one that failed).
        let watches = publishing.policy.watches_membership();
        let mut members = Vec::new();
        for sub in read(&self.subchannels).iter() {
            if watches {
                members.push(sub.state.clone());
            }
            if !sub.state.is_ready() || sub.is_ejected() {
                continue;
            }
            if let Some((wire, generation)) = lock(&sub.connection).clone() {
                ready.push(sub.state.clone());
                routes.push(SnapshotRoute {
                    sub: sub.clone(),
                    wire,
                    generation,
                });
            }
        }
        // A new picker only when the usable set changed (or, for a policy that watches
        // them, the members): that keeps policies with tables (rings, Maglev, weights)
        // in step with the set, and round robin's turn where it was when something
        // unrelated changed.
        let current = self.snapshot.load();
        let same = |a: &[EndpointState], b: &[EndpointState]| {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.same_as(b))
        };
        let same_set = same(&current.ready, &ready) && same(&current.members, &members);
        let publishing = &mut *publishing;
        let picker = if same_set && !publishing.policy_changed {
            current.picker.clone()
        } else {
            publishing.policy_changed = false;
            let set = EndpointSet {
                usable: &ready,
                all: &members,
            };
            publishing.policy.build_set(set, &mut publishing.rng)
        };
        self.snapshot.store(Arc::new(Snapshot {
            policy: publishing.policy.name(),
            picker,
            ready,
            routes,
            members,
        }));
        self.changes.send_modify(|version| *version += 1);
    }

    /// Whether every endpoint has finished connecting and the snapshot shows it: each
    /// is in TRANSIENT_FAILURE, ejected, or READY *and published* (a state is set just
    /// before its snapshot is stored, so the states alone can run ahead).
    pub fn settled(&self) -> bool {
        let snapshot = self.snapshot.load();
        read(&self.subchannels)
            .iter()
            .all(|s| match s.state.connectivity() {
                Connectivity::TransientFailure => true,
                Connectivity::Ready => {
                    s.is_ejected() || snapshot.ready.iter().any(|r| r.same_as(&s.state))
                }
                Connectivity::Idle | Connectivity::Connecting => false,
            })
    }

    pub fn statuses(&self) -> Vec<EndpointStatus> {
        let snapshot = self.snapshot.load();
        let weights = snapshot.picker.weights();
        let weight_of = |state: &EndpointState| {
            let weights = weights.as_ref()?;
            let i = snapshot.ready.iter().position(|r| r.same_as(state))?;
            weights.get(i).copied()
        };
        read(&self.subchannels)
            .iter()
            .map(|s| {
                (
                    s,
                    lock(&s.connection)
                        .as_ref()
                        .map(|(_, generation)| *generation),
                )
            })
            .map(|(s, generation)| EndpointStatus {
                weight: weight_of(&s.state),
                endpoint: s.state.endpoint().clone(),
                connectivity: s.state.connectivity(),
                ejected: s.is_ejected(),
                ejections: s.ejections.load(Ordering::Relaxed),
                in_flight: s.state.in_flight(),
                calls: s.calls.load(Ordering::Relaxed),
                retries: s.retries.load(Ordering::Relaxed),
                last_error: lock(&s.last_error).clone(),
                connected: generation.is_some(),
                connections: generation.map_or(0, |g| s.connections(g)),
                health: s.health.get(),
                connects: s.connects.load(Ordering::Relaxed),
                connect_failures: s.connect_failures.load(Ordering::Relaxed),
                disconnections: s.disconnections.load(Ordering::Relaxed),
                calls_ok: s.calls_ok.load(Ordering::Relaxed),
                calls_failed: s.calls_failed.load(Ordering::Relaxed),
                durations: s.state.durations().snapshot(),
            })
            .collect()
    }

    /// A call on connection `generation` of `sub` found the connection gone or going.
    ///
    /// The endpoint is then IDLE, as in gRPC: the task reconnects at once, and calls
    /// wait for it (within their deadline) instead of failing in the moment between
    /// the loss and the new attempt.
    pub fn report_broken(&self, sub: &Subchannel, generation: u64, error: &str) {
        let current = lock(&sub.connection).as_ref().map(|(_, g)| *g);
        if current != Some(generation) {
            return; // An older connection; the current one may be fine.
        }
        // Only the first report moves the endpoint out of READY and wakes the task.
        if sub
            .state
            .transition(Connectivity::Ready, Connectivity::Idle)
        {
            *lock(&sub.last_error) = Some(error.to_string());
            info!(endpoint = %sub.state.endpoint(), %error, "IDLE: a call found its connection gone");
            self.publish();
            // The task's own `set` will find the state already changed; count the
            // failure here, so that the resolver is asked to look again now.
            self.failures.send_modify(|n| *n += 1);
            sub.broken.send_replace(generation);
        }
    }
}

impl Fleet for Pool {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn stopped(&self) -> watch::Receiver<()> {
        self.stopped.clone()
    }

    fn oob_period(&self) -> u64 {
        self.oob_period.load(Ordering::Relaxed)
    }

    fn changed(&self) {
        self.publish();
    }

    fn failed(&self) {
        self.failures.send_modify(|n| *n += 1);
    }
}

/// An out-of-band reporting period in nanoseconds, 0 for none (at least 1 ns if set).
fn oob_nanos(period: Option<std::time::Duration>) -> u64 {
    period.map_or(0, |p| {
        u64::try_from(p.as_nanos()).unwrap_or(u64::MAX).max(1)
    })
}
