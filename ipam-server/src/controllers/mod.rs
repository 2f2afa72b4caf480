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
//! something is due and asks. Every replica runs the loop; only the leader acts. A Tick proposed
//! by a leader that is deposed before it commits is simply lost; the next leader's does the work.
//!
//! **Grace after an election.** While there was no leader (an outage, a rolling restart of every
//! replica), agents could not heartbeat, so their deadlines passed through no fault of theirs. A
//! new leader therefore proposes no Tick until it has led for one heartbeat TTL: every live agent
//! has heartbeated by then (agents heartbeat every TTL/3), and only the really silent nodes are
//! expired. Expiring the others would release the addresses of running pods, to be handed out
//! again after the cooldown: duplicate IPs.

use std::time::Duration;
use std::time::Instant;

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

/// Whether a tick at `now` has something to do in `state`, for a leader that has led for
/// `leading_for`: nothing during the grace of one heartbeat TTL after its election (see the
/// module's doc), then whenever a deadline or a cooldown end has passed.
pub fn tick_due(state: &State, now: Timestamp, leading_for: Duration) -> bool {
    let grace = Duration::from_millis(state.settings.heartbeat_ttl_ms);
    if leading_for < grace {
        return false;
    }
    let deadline_due = state.deadlines.first().is_some_and(|(deadline, _)| *deadline <= now);
    let cooldown_due = state.cooling.first().is_some_and(|(until, _)| *until <= now);
    deadline_due || cooldown_due
}

/// When this replica's current term of leadership began, as the tick loop sees it.
#[derive(Debug, Default)]
pub struct Leadership {
    since: Option<(u64, Instant)>,
}

impl Leadership {
    /// How long this replica has led, or `None` when it does not lead.
    pub fn leading_for(&mut self, replica: &Replica) -> Option<Duration> {
        let (leader, term) = {
            let metrics = replica.raft().metrics();
            let metrics = metrics.borrow();
            (metrics.current_leader, metrics.current_term)
        };
        if leader != Some(replica.id()) {
            self.since = None;
            return None;
        }
        let since = match self.since {
            Some((t, since)) if t == term => since,
            _ => {
                let now = Instant::now();
                self.since = Some((term, now));
                now
            }
        };
        Some(since.elapsed())
    }
}

/// Runs the tick controller until `shutdown` turns true.
pub fn spawn_ticker(replica: Replica, every: Duration, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut leadership = Leadership::default();
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
            if let Some(leading_for) = leadership.leading_for(&replica) {
                tick_once(&replica, leading_for).await;
            }
        }
    })
}

/// One round of the tick controller on a replica that has led for `leading_for`: proposes a
/// `Tick` when something is due. Failures are logged; the next round tries again.
pub async fn tick_once(replica: &Replica, leading_for: Duration) -> Option<Reply> {
    let now = now_ms();
    // The leader's own applied state: stale at worst by entries still in flight, which a later
    // round sees.
    let due = replica
        .read(Consistency::Stale, |applied| tick_due(&applied.state, now, leading_for))
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

#[cfg(test)]
mod tests {
    use ipam_core::state::CoolingTarget;

    use super::*;

    fn state_with_overdue_node_and_cooled_address() -> State {
        let mut state = State::default();
        state.deadlines.insert((1_000, "node-a".to_owned()));
        state.cooling.insert((
            1_000,
            CoolingTarget::Subnet {
                subnet_id: "subnet-1".to_owned(),
                ip: std::net::Ipv4Addr::new(100, 64, 0, 10),
            },
        ));
        state
    }

    #[test]
    fn a_new_leader_waits_one_heartbeat_ttl_before_expiring_anyone() {
        let state = state_with_overdue_node_and_cooled_address();
        let ttl = Duration::from_millis(state.settings.heartbeat_ttl_ms);
        assert!(!tick_due(&state, 5_000, Duration::ZERO), "just elected: grace");
        assert!(
            !tick_due(&state, 5_000, ttl - Duration::from_millis(1)),
            "still in grace"
        );
        assert!(
            tick_due(&state, 5_000, ttl),
            "after one TTL of leading, the overdue node is due"
        );
    }

    #[test]
    fn nothing_due_means_no_tick() {
        let state = state_with_overdue_node_and_cooled_address();
        let long = Duration::from_secs(3_600);
        assert!(!tick_due(&state, 999, long), "deadline and cooldown end at 1000");
        assert!(tick_due(&state, 1_000, long));
        assert!(
            !tick_due(&State::default(), u64::MAX, long),
            "an empty cluster has nothing to do"
        );
    }
}
