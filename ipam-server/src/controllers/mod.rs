//! Leader-only controllers: commands the cluster proposes to itself.
//!
//! ```text
//!   every tick (controllers.tick_ms), on every replica:
//!     not the leader ──▶ nothing
//!     leader ──▶ read the applied state: first heartbeat deadline ≤ now? first cooldown end ≤ now?
//!                  no  ──▶ nothing (an idle cluster writes nothing)
//!                  yes ──▶ propose Tick, stamped with the leader's clock:
//!                          decide() expires the overdue nodes (their leases released, reason
//!                          `expired`) and returns cooled addresses to their nodes' warm pools
//! ```
//!
//! The decision stays in the domain (`Tick` in `ipam-core`): the controller only notices that
//! something is due and asks. Every replica runs the loop; only the leader acts, so a new leader
//! takes over within one tick of its election. A Tick proposed by a leader that is deposed
//! before it commits is simply lost; the next leader's tick does the same work.

use std::time::Duration;

use ipam_core::CommandBody;
use ipam_core::Reply;
use ipam_core::State;
use ipam_core::ids::Actor;
use ipam_core::ids::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::replica::Consistency;
use crate::replica::Replica;
use crate::replica::now_ms;

/// Whether a tick at `now` has something to do in `state`.
pub fn tick_due(state: &State, now: Timestamp) -> bool {
    let deadline_due = state.deadlines.first().is_some_and(|(deadline, _)| *deadline <= now);
    let cooldown_due = state.cooling.first().is_some_and(|(until, _)| *until <= now);
    deadline_due || cooldown_due
}

/// Runs the tick controller until `shutdown` turns true.
pub fn spawn_ticker(replica: Replica, every: Duration, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            tick_once(&replica).await;
        }
    })
}

/// One round of the tick controller: proposes a `Tick` when this replica leads and something is
/// due. Failures are logged; the next round tries again.
pub async fn tick_once(replica: &Replica) -> Option<Reply> {
    if !replica.is_leader() {
        return None;
    }
    let now = now_ms();
    // The leader's own applied state: stale at worst by entries still in flight, which a later
    // round sees.
    let due = replica
        .read(Consistency::Stale, |applied| tick_due(&applied.state, now))
        .await
        .ok()?;
    if !due {
        return None;
    }
    match replica.write(Actor::Controller, None, CommandBody::Tick).await {
        Ok(reply) => {
            if let Reply::Ticked { expired, cooled } = &reply {
                if !expired.is_empty() {
                    tracing::info!(?expired, "nodes expired: heartbeat deadline passed, leases released");
                }
                tracing::debug!(cooled, "cooldowns ended");
            }
            Some(reply)
        }
        Err(error) => {
            tracing::warn!(%error, "tick not committed; retrying next round");
            None
        }
    }
}
