//! Opening a state machine on a test directory, for the tests that drive one directly.

use ipam_server::raft::StateMachine;
use ipam_server::raft::state_machine::Options;

use super::TempDir;

/// Opens (or reopens) the sled database and state machine in `dir`.
///
/// A reopen in the same process ("a restart") can find the previous handle's file lock still
/// held for a moment by sled's background threads, which a real restart (a new process) never
/// does; it is retried for a bounded while.
pub async fn open(dir: &TempDir) -> (sled::Db, StateMachine) {
    open_with(dir, Options::default()).await
}

/// [`open`] with `options`.
pub async fn open_with(dir: &TempDir, options: Options) -> (sled::Db, StateMachine) {
    let path = dir.0.join("sled");
    let mut attempts = 0;
    let db = loop {
        match sled::open(&path) {
            Ok(db) => break db,
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") && attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open sled at {}: {e}", path.display()),
        }
    };
    let sm = StateMachine::open_with(&db, dir.0.join("snapshots"), options)
        .await
        .unwrap_or_else(|e| panic!("open state machine: {e}"));
    (db, sm)
}
