//! The warm-pool planner: how many pod addresses and ENIs the node should hold, with
//! `WARM_ENI_TARGET`, `WARM_IP_TARGET`, `MINIMUM_IP_TARGET` and `MAX_ENI` meaning what they mean
//! to the VPC CNI's `ipamd`. [`plan`] is a pure function of the [`Targets`] and what the node has
//! ([`Node`]); an executor carries its [`Action`]s out (the server records each as an intent, then
//! EC2 is called). No IO, no clock: a test needs no EC2 and no kernel.
//!
//! ```text
//!   Targets ──┐                      short? ── PlanIps on attached ENIs (primary first, then by handle)
//!             ├──▶ plan() ──▶ Plan ─┤          then at most one PlanEni, none while an ENI is pending
//!   Node ─────┘                      over?  ── DetachEni (idle ENIs, newest first), then DrainIps
//!   (ENIs, address counts)                     (fewest pods first)
//! ```
//!
//! # Which target rules
//!
//! * `WARM_IP_TARGET` or `MINIMUM_IP_TARGET` above 0: the pool is short by
//!   `max(WARM_IP_TARGET − available, MINIMUM_IP_TARGET − total)` and over by
//!   `min(available − WARM_IP_TARGET, total − MINIMUM_IP_TARGET)`; `WARM_ENI_TARGET` is ignored. A
//!   new ENI gets only the addresses still short (at most an ENI's worth); an existing one only
//!   what is short. Excess warm addresses are drained, idle ENIs detached, never below either target.
//! * Otherwise `WARM_ENI_TARGET` (default 1): keep `WARM_ENI_TARGET × addresses per ENI` available
//!   (with 0: keep at least one); grow by filling ENIs completely, a new ENI with all its slots.
//!   Addresses are never drained; an idle ENI is detached once `(WARM_ENI_TARGET + 1) × addresses
//!   per ENI` are available.
//! * `MAX_ENI` caps the ENIs (the primary and the trunk included) below the instance's limit.
//!
//! # What counts
//!
//! Per ENI: `bound` (pods), `warm` (free), `cooling` (released, in their cooldown), `pending`
//! (planned, EC2 not done) and `draining` (being unassigned). Over the ENIs that carry pod
//! addresses, *total* = bound + warm + cooling + pending and *available* = warm + pending: planned
//! work counts as if done, so a plan is never made twice while EC2 is still working; draining
//! addresses are already leaving. An ENI takes `ipv4_per_eni − 1` pod addresses (its own primary
//! address is not for pods).
//!
//! ENIs: the primary ENI always holds device slot 0, whether listed or not, and is never detached.
//! With custom networking it carries no pods (its address counts are ignored), so the pool is at most
//! `(max ENIs − 1) × (IPs per ENI − 1)`. With security groups for pods (`pod_eni`) on a type with
//! trunking, a slot stays free for the trunk ENI until the trunk exists, like `ipamd`'s
//! `hasRoomForEni` and the server's `plan_eni`. A trunk ENI carries no pod addresses, is never
//! planned or detached here.
//!
//! # Where the behaviour comes from
//!
//! The VPC CNI, `aws/amazon-vpc-cni-k8s` at `b52188387f2e2f10bf289ace929d6a63b176a4fa` (v1.23.1), read
//! for behaviour, no code copied: `README.md` (the four variables), `docs/eni-and-ip-target.md` (the
//! worked examples the tests reproduce), `pkg/ipamd/ipamd.go` (`datastoreTargetState`,
//! `isDatastorePoolTooLow`, `isDatastorePoolTooHigh`, `shouldRemoveExtraENIs`, `tryAssignIPs`,
//! `GetENIResourcesToAllocate`, `hasRoomForEni`, `getMaxENI`, `tryUnassignCidrsFromAll`) and
//! `pkg/ipamd/datastore/data_store.go` (`getDeletableENI`, `isRequiredForWarmIPTarget`,
//! `isRequiredForMinimumIPTarget`, `GetIPStats`).
//!
//! # Where it differs, and why
//!
//! * Cooling addresses are not *available* (ipamd counts them: `available = total − assigned`). A
//!   cooling address cannot serve a pod before its cooldown ends, and the warm pool exists so that a
//!   pod gets an address at once; the server cannot drain a cooling address either. They still count
//!   in *total* (for `MINIMUM_IP_TARGET`), and an ENI holding one is not detached (as ipamd).
//! * Negative or non-numeric values are refused with an error naming the variable; ipamd silently
//!   falls back to the default. 0 keeps ipamd's meaning (unset, for the IP targets and `MAX_ENI`).
//! * With `WARM_ENI_TARGET=0` an idle ENI is not detached if that would leave nothing available
//!   (ipamd would detach it and then create one again).
//! * The plan may fill several ENIs at once and detach several idle ENIs; ipamd does one step per
//!   5-second tick. It still creates at most one ENI per plan, and none while one is pending.
//! * Time-based throttles stay with the executor: ipamd drains at most once per 30 s and keeps a new
//!   ENI for a minute (`minENILifeTime`); the latter arrives here as [`EniView::young`].
//! * Prefix delegation (`WARM_PREFIX_TARGET`) and multiple network cards are not supported.

use std::cmp::Ordering;
use std::fmt;

use ipam_core::ids::EniRef;
use ipam_core::limits::InstanceLimits;
use ipam_core::state::EniState;

/// The variable of the ENIs' worth of free addresses to keep (default [`DEFAULT_WARM_ENI_TARGET`]).
pub const WARM_ENI_TARGET: &str = "WARM_ENI_TARGET";
/// The variable of the free addresses to keep.
pub const WARM_IP_TARGET: &str = "WARM_IP_TARGET";
/// The variable of the least total addresses to hold.
pub const MINIMUM_IP_TARGET: &str = "MINIMUM_IP_TARGET";
/// The variable of the most ENIs to attach (the instance's limit when unset or 0).
pub const MAX_ENI: &str = "MAX_ENI";
/// `WARM_ENI_TARGET` when nothing is set, as in the VPC CNI.
pub const DEFAULT_WARM_ENI_TARGET: u32 = 1;

/// Why the targets' variables cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetsError {
    /// A negative number. The VPC CNI would silently ignore it; here it is taken for a mistake.
    #[error("{var}={value}: must not be negative (unset it, or use 0)")]
    Negative {
        /// The variable.
        var: &'static str,
        /// What it was set to.
        value: String,
    },
    /// A number too large for a count of addresses or ENIs.
    #[error("{var}={value}: larger than {max}", max = u32::MAX)]
    TooLarge {
        /// The variable.
        var: &'static str,
        /// What it was set to.
        value: String,
    },
    /// Not a whole number.
    #[error("{var}={value:?}: not a whole number")]
    NotANumber {
        /// The variable.
        var: &'static str,
        /// What it was set to.
        value: String,
    },
}

/// This module's results.
pub type Result<T, E = TargetsError> = std::result::Result<T, E>;

/// The warm-pool targets, as the VPC CNI's variables of the same names. `None` is unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Targets {
    /// `WARM_ENI_TARGET`: ENIs' worth of free addresses to keep; ignored when an IP target is set.
    pub warm_eni: Option<u32>,
    /// `WARM_IP_TARGET`: free addresses to keep (0 is the same as unset).
    pub warm_ip: Option<u32>,
    /// `MINIMUM_IP_TARGET`: least total addresses (0 is the same as unset).
    pub minimum_ip: Option<u32>,
    /// `MAX_ENI`: most ENIs, the primary included, capped by the instance's limit (0 is the same as unset).
    pub max_eni: Option<u32>,
}

impl Targets {
    /// Reads the four variables through `var` (`main` passes `|k| std::env::var(k).ok()`; tests a
    /// map). An unset or empty variable is `None`.
    ///
    /// # Errors
    ///
    /// The first variable that is negative, too large or not a whole number, as a [`TargetsError`].
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        Ok(Self {
            warm_eni: parse(WARM_ENI_TARGET, var(WARM_ENI_TARGET))?,
            warm_ip: parse(WARM_IP_TARGET, var(WARM_IP_TARGET))?,
            minimum_ip: parse(MINIMUM_IP_TARGET, var(MINIMUM_IP_TARGET))?,
            max_eni: parse(MAX_ENI, var(MAX_ENI))?,
        })
    }

    /// Which rule applies: the IP targets when either is above 0, else `WARM_ENI_TARGET`.
    #[must_use]
    pub fn mode(&self) -> Mode {
        let warm_ip = self.warm_ip.unwrap_or(0);
        let minimum_ip = self.minimum_ip.unwrap_or(0);
        if warm_ip > 0 || minimum_ip > 0 {
            Mode::Ips { warm_ip, minimum_ip }
        } else {
            Mode::Enis {
                warm_eni: self.warm_eni.unwrap_or(DEFAULT_WARM_ENI_TARGET),
            }
        }
    }

    /// The most ENIs the node may have, its primary ENI included: the instance's limit, lowered by
    /// `MAX_ENI` when that is set above 0 (ipamd's `getMaxENI`).
    #[must_use]
    pub fn max_enis(&self, limits: &InstanceLimits) -> u32 {
        let instance = u32::from(limits.max_enis);
        match self.max_eni {
            Some(max) if max >= 1 => max.min(instance),
            _ => instance,
        }
    }
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode() {
            Mode::Ips { .. } => {
                write!(
                    f,
                    "{WARM_IP_TARGET}={}, {MINIMUM_IP_TARGET}={}",
                    show(self.warm_ip),
                    show(self.minimum_ip)
                )?;
                if let Some(n) = self.warm_eni {
                    write!(f, " ({WARM_ENI_TARGET}={n} ignored)")?;
                }
                Ok(())
            }
            Mode::Enis { warm_eni } if self.warm_eni.is_none() => write!(f, "{WARM_ENI_TARGET}={warm_eni} (default)"),
            Mode::Enis { warm_eni } => write!(f, "{WARM_ENI_TARGET}={warm_eni}"),
        }
    }
}

fn show(value: Option<u32>) -> String {
    value.map_or_else(|| "unset".to_owned(), |n| n.to_string())
}

fn parse(var: &'static str, value: Option<String>) -> Result<Option<u32>> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(n) = value.parse::<u32>() {
        return Ok(Some(n));
    }
    let (negative, digits) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix('+').unwrap_or(&value)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetsError::NotANumber { var, value });
    }
    if digits.bytes().all(|b| b == b'0') {
        return Ok(Some(0)); // "-0"
    }
    if negative {
        Err(TargetsError::Negative { var, value })
    } else {
        Err(TargetsError::TooLarge { var, value })
    }
}

/// The rule the targets select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `WARM_ENI_TARGET`: keep this many ENIs' worth of addresses available.
    Enis {
        /// ENIs' worth of free addresses.
        warm_eni: u32,
    },
    /// `WARM_IP_TARGET` and `MINIMUM_IP_TARGET` (unset is 0).
    Ips {
        /// Free addresses to keep.
        warm_ip: u32,
        /// Least total addresses.
        minimum_ip: u32,
    },
}

/// What an ENI is to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EniRole {
    /// The instance's own ENI (device 0): never detached; carries pods only without custom networking.
    Primary,
    /// A secondary ENI whose addresses serve pods (in the ENIConfig subnet under custom networking).
    Secondary,
    /// The trunk ENI of security groups for pods: takes a slot, carries no pod addresses.
    Trunk,
}

/// One ENI as the planner sees it: what it is, where it is in its life, and its pod addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EniView {
    /// The server's handle (the server does not track the primary ENI; the agent gives it its own).
    pub eni: EniRef,
    /// Primary, secondary or trunk.
    pub role: EniRole,
    /// Planned (EC2 not done), attached, or detaching.
    pub state: EniState,
    /// Attached too recently to be detached (ipamd keeps a new ENI for a minute, so that the pool does
    /// not flap when pods come back); the executor decides.
    pub young: bool,
    /// Addresses bound to pods.
    pub bound: u16,
    /// Free addresses, ready for a pod.
    pub warm: u16,
    /// Released addresses still in their cooldown.
    pub cooling: u16,
    /// Planned addresses EC2 has not assigned yet.
    pub pending: u16,
    /// Addresses being unassigned.
    pub draining: u16,
}

impl EniView {
    /// An attached ENI without pod addresses.
    #[must_use]
    pub const fn attached(eni: EniRef, role: EniRole) -> Self {
        Self {
            eni,
            role,
            state: EniState::Attached,
            young: false,
            bound: 0,
            warm: 0,
            cooling: 0,
            pending: 0,
            draining: 0,
        }
    }

    /// A secondary ENI planned with `pending` addresses, EC2 not done.
    #[must_use]
    pub const fn planned(eni: EniRef, pending: u16) -> Self {
        Self {
            state: EniState::Planned,
            pending,
            ..Self::attached(eni, EniRole::Secondary)
        }
    }

    /// Slots of the ENI its pod addresses take, in any state.
    #[must_use]
    pub fn used(&self) -> u32 {
        [self.bound, self.warm, self.cooling, self.pending, self.draining]
            .iter()
            .map(|&n| u32::from(n))
            .sum()
    }

    /// Nothing on it stops a detach: no pods, nothing cooling, nothing in flight.
    fn idle(&self) -> bool {
        self.bound == 0 && self.cooling == 0 && self.pending == 0 && self.draining == 0
    }
}

/// The node as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The instance type's limits.
    pub limits: InstanceLimits,
    /// Custom networking (`AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG`): pod ENIs in the ENIConfig's subnet,
    /// the primary ENI carries no pods.
    pub custom_networking: bool,
    /// Security groups for pods (`ENABLE_POD_ENI`): a slot is kept for the trunk ENI.
    pub pod_eni: bool,
    /// kubelet's max pods: the pool does not grow once it holds this many addresses (ipamd since
    /// v1.17.1); `None` is no cap.
    pub max_pods: Option<u32>,
    /// Its ENIs, in any order. The primary ENI may be left out (it holds device slot 0 either way);
    /// branch ENIs are not listed (they take no device slot).
    pub enis: Vec<EniView>,
}

impl Node {
    /// Whether `eni`'s addresses belong to the pod pool.
    #[must_use]
    pub fn carries_pods(&self, eni: &EniView) -> bool {
        eni.state != EniState::Detaching
            && match eni.role {
                EniRole::Primary => !self.custom_networking,
                EniRole::Secondary => true,
                EniRole::Trunk => false,
            }
    }

    /// The pod pool's address counts.
    #[must_use]
    pub fn stats(&self) -> PoolStats {
        self.enis
            .iter()
            .filter(|e| self.carries_pods(e))
            .fold(PoolStats::default(), |s, e| PoolStats {
                bound: s.bound + u32::from(e.bound),
                warm: s.warm + u32::from(e.warm),
                cooling: s.cooling + u32::from(e.cooling),
                pending: s.pending + u32::from(e.pending),
            })
    }

    /// The most pod addresses the node can hold under `targets`: pod ENIs (ENI limit or `MAX_ENI`,
    /// less the primary under custom networking, less the trunk's slot with security groups for
    /// pods) times addresses per ENI.
    #[must_use]
    pub fn capacity(&self, targets: &Targets) -> u32 {
        let mut enis = targets.max_enis(&self.limits);
        if self.custom_networking {
            enis = enis.saturating_sub(1);
        }
        if self.pod_eni && self.limits.trunking {
            enis = enis.saturating_sub(1);
        }
        enis * u32::from(self.limits.pod_ips_per_eni())
    }
}

/// The pod pool's counts, in the VPC CNI's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Bound to pods (ipamd's assigned).
    pub bound: u32,
    /// Free.
    pub warm: u32,
    /// In their cooldown.
    pub cooling: u32,
    /// Planned, EC2 not done.
    pub pending: u32,
}

impl PoolStats {
    /// Addresses held or on their way: bound + warm + cooling + pending.
    #[must_use]
    pub const fn total(&self) -> u32 {
        self.bound + self.warm + self.cooling + self.pending
    }

    /// Addresses a pod could have now or once EC2 is done: warm + pending.
    #[must_use]
    pub const fn available(&self) -> u32 {
        self.warm + self.pending
    }
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} addresses ({} bound, {} warm, {} pending, {} cooling)",
            self.total(),
            self.bound,
            self.warm,
            self.pending,
            self.cooling
        )
    }
}

/// One step for the executor; each is one server command (then EC2 calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Plan a new secondary ENI (`PlanEni`), in the ENIConfig's subnet with its security groups,
    /// carrying `ips` pod addresses besides its own primary address.
    PlanEni {
        /// Pod addresses (1 ..= IPv4 per ENI − 1).
        ips: u16,
    },
    /// Plan more addresses on an attached ENI (`PlanIps`).
    PlanIps {
        /// The ENI.
        eni: EniRef,
        /// How many (at least 1, at most its free slots).
        count: u16,
    },
    /// Unassign warm addresses from an attached ENI (`DrainIps`).
    DrainIps {
        /// The ENI.
        eni: EniRef,
        /// How many (at least 1, at most its warm addresses).
        count: u16,
    },
    /// Detach and delete an idle secondary ENI (`PlanEniDetach`).
    DetachEni {
        /// The ENI.
        eni: EniRef,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PlanEni { ips } => write!(f, "a new ENI with {ips}"),
            Self::PlanIps { eni, count } => write!(f, "{count} more on ENI {eni}"),
            Self::DrainIps { eni, count } => write!(f, "drain {count} from ENI {eni}"),
            Self::DetachEni { eni } => write!(f, "detach ENI {eni}"),
        }
    }
}

/// Why the pool stays short of its targets after the plan's actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The pool already holds kubelet's max pods in addresses.
    MaxPods {
        /// kubelet's max pods.
        max_pods: u32,
    },
    /// A new ENI is needed, but another is still being created; one at a time.
    EniPending {
        /// The ENI being created.
        eni: EniRef,
    },
    /// A new ENI is needed and the node has no slot for it.
    EniLimit {
        /// The most ENIs (instance limit or `MAX_ENI`), the primary included.
        max_enis: u32,
        /// Whether a slot is kept free for the trunk ENI.
        reserved_for_trunk: bool,
    },
    /// The instance type has no pod addresses per ENI (one IPv4 address per ENI).
    NoPodAddresses,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MaxPods { max_pods } => write!(f, "max pods reached ({max_pods})"),
            Self::EniPending { eni } => write!(f, "waiting for ENI {eni}, still being created"),
            Self::EniLimit {
                max_enis,
                reserved_for_trunk,
            } => {
                write!(f, "ENI limit reached ({max_enis} ENIs")?;
                if *reserved_for_trunk {
                    write!(f, ", one slot kept for the trunk ENI")?;
                }
                write!(f, ")")
            }
            Self::NoPodAddresses => write!(f, "the instance type has no pod addresses per ENI"),
        }
    }
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What to do, in order; empty when the targets are met or nothing can be done yet.
    pub actions: Vec<Action>,
    /// Why the pool stays short, when it does.
    pub blocked: Option<Blocked>,
    /// One line for logs: the targets, the counts, the verdict.
    pub why: String,
}

impl Plan {
    /// Nothing to do (the targets are met, or only waiting).
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Decides what the node's warm pool needs now. Deterministic: the order of `node.enis` does not
/// matter (ENIs are taken by handle).
#[must_use]
pub fn plan(targets: &Targets, node: &Node) -> Plan {
    Planner::new(targets, node).plan()
}

/// Everything [`plan`] derives once from its inputs.
struct Planner<'a> {
    targets: &'a Targets,
    node: &'a Node,
    /// The primary first, then by handle.
    enis: Vec<&'a EniView>,
    mode: Mode,
    per_eni: u16,
    stats: PoolStats,
    max_enis: u32,
    reserved_for_trunk: bool,
    /// Slots left for new ENIs.
    free_slots: u32,
}

impl<'a> Planner<'a> {
    fn new(targets: &'a Targets, node: &'a Node) -> Self {
        let mut enis: Vec<&EniView> = node.enis.iter().collect();
        enis.sort_by(|a, b| by_handle(a, b));
        let max_enis = targets.max_enis(&node.limits);
        let reserved_for_trunk = node.pod_eni && node.limits.trunking && !enis.iter().any(|e| e.role == EniRole::Trunk);
        // The primary holds slot 0 whether listed or not; every other listed ENI holds one until
        // EC2 has detached it.
        let used = 1 + enis.iter().filter(|e| e.role != EniRole::Primary).count();
        let used = u32::try_from(used).unwrap_or(u32::MAX);
        Self {
            targets,
            node,
            enis,
            mode: targets.mode(),
            per_eni: node.limits.pod_ips_per_eni(),
            stats: node.stats(),
            max_enis,
            reserved_for_trunk,
            free_slots: max_enis.saturating_sub(used + u32::from(reserved_for_trunk)),
        }
    }

    fn plan(&self) -> Plan {
        let short = self.short();
        let (actions, blocked, verdict) = if short > 0 { self.grow(short) } else { self.shrink() };
        Plan {
            why: format!("{}; {}: {verdict}", self.targets, self.stats),
            actions,
            blocked,
        }
    }

    /// Addresses the pool lacks (`isDatastorePoolTooLow` / `datastoreTargetState`).
    fn short(&self) -> u32 {
        let available = self.stats.available();
        match self.mode {
            Mode::Ips { warm_ip, minimum_ip } => {
                let warm = warm_ip.saturating_sub(available);
                warm.max(minimum_ip.saturating_sub(self.stats.total()))
            }
            Mode::Enis { warm_eni } => self.eni_floor(warm_eni).saturating_sub(available),
        }
    }

    /// Addresses to keep available under `WARM_ENI_TARGET`; with 0, still one (ipamd grows when
    /// nothing is available).
    fn eni_floor(&self, warm_eni: u32) -> u32 {
        warm_eni.saturating_mul(u32::from(self.per_eni)).max(1)
    }

    /// Free pod slots of an ENI.
    fn room(&self, eni: &EniView) -> u16 {
        let room = u32::from(self.per_eni).saturating_sub(eni.used());
        u16::try_from(room).unwrap_or(self.per_eni)
    }

    /// ENIs that take more addresses now: attached, in the pod pool, in fill order.
    fn growable(&self) -> impl Iterator<Item = &'a EniView> + '_ {
        self.enis
            .iter()
            .copied()
            .filter(|e| e.state == EniState::Attached && self.node.carries_pods(e))
    }

    /// Idle secondary ENIs that may be detached, newest first (`getDeletableENI`).
    fn detachable(&self) -> impl Iterator<Item = &'a EniView> + '_ {
        self.enis
            .iter()
            .rev()
            .copied()
            .filter(|e| e.role == EniRole::Secondary && e.state == EniState::Attached && !e.young && e.idle())
    }

    fn grow(&self, short: u32) -> (Vec<Action>, Option<Blocked>, String) {
        if let Some(max_pods) = self.node.max_pods
            && self.stats.total() >= max_pods
        {
            let blocked = Blocked::MaxPods { max_pods };
            return (Vec::new(), Some(blocked), format!("{short} short, but {blocked}"));
        }
        let whole_enis = matches!(self.mode, Mode::Enis { .. });
        let mut actions = Vec::new();
        let mut left = short;
        for eni in self.growable() {
            if left == 0 {
                break;
            }
            let room = self.room(eni);
            if room == 0 {
                continue;
            }
            let count = if whole_enis { room } else { room.min(clamp_u16(left)) };
            actions.push(Action::PlanIps { eni: eni.eni, count });
            left = left.saturating_sub(u32::from(count));
        }
        let mut blocked = None;
        if left > 0 {
            let pending = self
                .enis
                .iter()
                .find(|e| e.role != EniRole::Primary && e.state == EniState::Planned);
            if self.per_eni == 0 {
                blocked = Some(Blocked::NoPodAddresses);
            } else if let Some(pending) = pending {
                blocked = Some(Blocked::EniPending { eni: pending.eni });
            } else if self.free_slots == 0 {
                blocked = Some(Blocked::EniLimit {
                    max_enis: self.max_enis,
                    reserved_for_trunk: self.reserved_for_trunk,
                });
            } else {
                let ips = if whole_enis {
                    self.per_eni
                } else {
                    self.per_eni.min(clamp_u16(left))
                };
                actions.push(Action::PlanEni { ips });
                left = left.saturating_sub(u32::from(ips));
            }
        }
        let mut verdict = format!("{short} short");
        if !actions.is_empty() {
            verdict.push_str(": ");
            verdict.push_str(&list(&actions));
        }
        if let Some(blocked) = blocked {
            verdict.push_str(&format!("; {left} still short: {blocked}"));
        } else if left > 0 {
            verdict.push_str(&format!("; {left} more once the new ENI is attached"));
        }
        (actions, blocked, verdict)
    }

    fn shrink(&self) -> (Vec<Action>, Option<Blocked>, String) {
        match self.mode {
            Mode::Ips { warm_ip, minimum_ip } => self.shrink_ips(warm_ip, minimum_ip),
            Mode::Enis { warm_eni } => self.shrink_enis(warm_eni),
        }
    }

    /// Under the IP targets: detach idle ENIs whose addresses are all excess, then drain the rest of
    /// the excess (`tryFreeENI`, `tryUnassignCidrsFromAll`).
    fn shrink_ips(&self, warm_ip: u32, minimum_ip: u32) -> (Vec<Action>, Option<Blocked>, String) {
        let available = self.stats.available().saturating_sub(warm_ip);
        let over = available.min(self.stats.total().saturating_sub(minimum_ip));
        let mut left = over;
        let mut actions = Vec::new();
        let mut detached = Vec::new();
        for eni in self.detachable() {
            // Without it, the others still hold WARM_IP_TARGET available and MINIMUM_IP_TARGET in
            // total (`isRequiredForWarmIPTarget`, `isRequiredForMinimumIPTarget`).
            if u32::from(eni.warm) <= left {
                left -= u32::from(eni.warm);
                actions.push(Action::DetachEni { eni: eni.eni });
                detached.push(eni.eni);
            }
        }
        let mut drainable: Vec<&EniView> = self
            .growable()
            .filter(|e| e.warm > 0 && !detached.contains(&e.eni))
            .collect();
        // ENIs with the fewest pods first, so that they empty and can go; then the newest.
        drainable.sort_by(|a, b| a.bound.cmp(&b.bound).then_with(|| by_handle(b, a)));
        for eni in drainable {
            if left == 0 {
                break;
            }
            let count = eni.warm.min(clamp_u16(left));
            actions.push(Action::DrainIps { eni: eni.eni, count });
            left -= u32::from(count);
        }
        let mut verdict = if over == 0 {
            "targets met".to_owned()
        } else {
            format!("{over} over")
        };
        if !actions.is_empty() {
            verdict.push_str(": ");
            verdict.push_str(&list(&actions));
        }
        if left > 0 {
            verdict.push_str(&format!(
                "; {left} more are pending, drained once EC2 has assigned them"
            ));
        }
        (actions, None, verdict)
    }

    /// Under `WARM_ENI_TARGET`: no address is drained; an idle ENI goes while `WARM_ENI_TARGET + 1`
    /// ENIs' worth are available (`shouldRemoveExtraENIs`), never leaving fewer than the target.
    fn shrink_enis(&self, warm_eni: u32) -> (Vec<Action>, Option<Blocked>, String) {
        let per_eni = u32::from(self.per_eni);
        let high = warm_eni.saturating_add(1).saturating_mul(per_eni);
        let floor = self.eni_floor(warm_eni);
        let mut available = self.stats.available();
        let mut actions = Vec::new();
        for eni in self.detachable() {
            let warm = u32::from(eni.warm);
            if available >= high && available.saturating_sub(warm) >= floor {
                available -= warm;
                actions.push(Action::DetachEni { eni: eni.eni });
            }
        }
        let verdict = if actions.is_empty() {
            "targets met".to_owned()
        } else {
            format!(
                "{} available, {high} or more is an ENI too many: {}",
                self.stats.available(),
                list(&actions)
            )
        };
        (actions, None, verdict)
    }
}

/// The primary first, then by handle (then the rest, so that equal handles order alike).
fn by_handle(a: &EniView, b: &EniView) -> Ordering {
    (a.role != EniRole::Primary, a.eni, a.role).cmp(&(b.role != EniRole::Primary, b.eni, b.role))
}

fn clamp_u16(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn list(actions: &[Action]) -> String {
    actions.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    fn read(pairs: &[(&str, &str)]) -> Result<Targets> {
        Targets::from_vars(vars(pairs))
    }

    #[test]
    fn nothing_set_is_warm_eni_target_1() {
        let targets = read(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(targets, Targets::default());
        assert_eq!(targets.mode(), Mode::Enis { warm_eni: 1 });
        assert_eq!(targets.to_string(), "WARM_ENI_TARGET=1 (default)");
    }

    #[test]
    fn all_four_are_read() {
        let targets = read(&[
            ("WARM_ENI_TARGET", "2"),
            ("WARM_IP_TARGET", "5"),
            ("MINIMUM_IP_TARGET", "10"),
            ("MAX_ENI", "3"),
            ("WARM_PREFIX_TARGET", "7"),
        ]);
        let expected = Targets {
            warm_eni: Some(2),
            warm_ip: Some(5),
            minimum_ip: Some(10),
            max_eni: Some(3),
        };
        assert_eq!(targets, Ok(expected));
    }

    #[test]
    fn an_ip_target_overrides_warm_eni_target() {
        let both = Targets {
            warm_eni: Some(3),
            warm_ip: Some(2),
            ..Targets::default()
        };
        assert_eq!(
            both.mode(),
            Mode::Ips {
                warm_ip: 2,
                minimum_ip: 0
            }
        );
        assert_eq!(
            both.to_string(),
            "WARM_IP_TARGET=2, MINIMUM_IP_TARGET=unset (WARM_ENI_TARGET=3 ignored)"
        );
        let minimum_only = Targets {
            warm_eni: Some(3),
            minimum_ip: Some(10),
            ..Targets::default()
        };
        assert_eq!(
            minimum_only.mode(),
            Mode::Ips {
                warm_ip: 0,
                minimum_ip: 10
            }
        );
    }

    #[test]
    fn zero_ip_targets_are_unset() {
        // README: "Setting this to a non-positive value is the same as setting this to 0 or not
        // setting the variable"; ipamd's noWarmIPTarget and noMinimumIPTarget are 0.
        let targets = read(&[
            ("WARM_IP_TARGET", "0"),
            ("MINIMUM_IP_TARGET", "0"),
            ("WARM_ENI_TARGET", "2"),
        ]);
        assert_eq!(targets.map(|t| t.mode()), Ok(Mode::Enis { warm_eni: 2 }));
        let zero_eni = read(&[("WARM_ENI_TARGET", "0")]);
        assert_eq!(zero_eni.map(|t| t.mode()), Ok(Mode::Enis { warm_eni: 0 }));
    }

    #[test]
    fn empty_is_unset_and_minus_zero_is_zero() {
        assert_eq!(read(&[("WARM_IP_TARGET", "")]), Ok(Targets::default()));
        assert_eq!(read(&[("MAX_ENI", "-0")]).map(|t| t.max_eni), Ok(Some(0)));
        assert_eq!(read(&[("MAX_ENI", "+4")]).map(|t| t.max_eni), Ok(Some(4)));
    }

    #[test]
    fn bad_numbers_are_refused_naming_the_variable() {
        let negative = read(&[("WARM_IP_TARGET", "-1")]);
        assert_eq!(
            negative,
            Err(TargetsError::Negative {
                var: WARM_IP_TARGET,
                value: "-1".to_owned()
            })
        );
        let message = negative.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(message, "WARM_IP_TARGET=-1: must not be negative (unset it, or use 0)");

        for (var, value) in [
            (WARM_ENI_TARGET, "one"),
            (MINIMUM_IP_TARGET, "1.5"),
            (MAX_ENI, " 3"),
            (WARM_IP_TARGET, "-"),
            (WARM_IP_TARGET, "0x10"),
        ] {
            let got = read(&[(var, value)]);
            let want = TargetsError::NotANumber {
                var,
                value: value.to_owned(),
            };
            assert_eq!(got, Err(want), "{var}={value:?}");
        }
        let huge = read(&[(MINIMUM_IP_TARGET, "4294967296")]);
        assert!(
            matches!(
                huge,
                Err(TargetsError::TooLarge {
                    var: MINIMUM_IP_TARGET,
                    ..
                })
            ),
            "{huge:?}"
        );
        let very_negative = read(&[(MAX_ENI, "-99999999999999999999999999999999999999999")]);
        assert!(
            matches!(very_negative, Err(TargetsError::Negative { var: MAX_ENI, .. })),
            "{very_negative:?}"
        );
        let message = read(&[(WARM_ENI_TARGET, "one")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(message, "WARM_ENI_TARGET=\"one\": not a whole number");
    }

    #[test]
    fn max_eni_caps_the_instance_limit_and_zero_is_unset() {
        let limits = InstanceLimits {
            max_enis: 4,
            ipv4_per_eni: 15,
            branch_enis: 18,
            trunking: true,
        };
        let with = |max_eni| Targets {
            max_eni,
            ..Targets::default()
        };
        assert_eq!(with(None).max_enis(&limits), 4);
        assert_eq!(with(Some(0)).max_enis(&limits), 4);
        assert_eq!(with(Some(2)).max_enis(&limits), 2);
        assert_eq!(with(Some(9)).max_enis(&limits), 4);
    }

    #[test]
    fn stats_count_the_pod_pool_only() {
        let node = Node {
            limits: InstanceLimits {
                max_enis: 4,
                ipv4_per_eni: 10,
                branch_enis: 0,
                trunking: false,
            },
            custom_networking: true,
            pod_eni: false,
            max_pods: None,
            enis: vec![
                EniView {
                    warm: 4, // ignored: the primary carries no pods under custom networking
                    ..EniView::attached(0, EniRole::Primary)
                },
                EniView {
                    bound: 2,
                    warm: 1,
                    cooling: 3,
                    pending: 1,
                    draining: 2,
                    ..EniView::attached(5, EniRole::Secondary)
                },
                EniView::planned(6, 4),
                EniView {
                    warm: 7,
                    state: EniState::Detaching,
                    ..EniView::attached(7, EniRole::Secondary)
                },
            ],
        };
        let stats = node.stats();
        assert_eq!(
            stats,
            PoolStats {
                bound: 2,
                warm: 1,
                cooling: 3,
                pending: 5
            }
        );
        assert_eq!((stats.total(), stats.available()), (11, 6));
        assert_eq!(node.enis[1].used(), 9);
        assert_eq!(
            stats.to_string(),
            "11 addresses (2 bound, 1 warm, 5 pending, 3 cooling)"
        );
    }
}
