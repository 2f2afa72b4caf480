//! openraft's own storage test suite, run on the sled log store and state machine.

use ipam_server::raft::LogStore;
use ipam_server::raft::StateMachine;
use ipam_server::raft::TypeConfig;
use openraft::AnyError;
use openraft::StorageError;
use openraft::StorageIOError;
use openraft::testing::StoreBuilder;
use openraft::testing::Suite;

mod common;
use common::TempDir;

/// A fresh sled database and snapshot directory per test case, removed when the case ends.
struct SledBuilder;

fn io(e: &(impl std::error::Error + 'static)) -> StorageError<u64> {
    StorageIOError::write(AnyError::new(e)).into()
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, (sled::Db, TempDir)> for SledBuilder {
    async fn build(&self) -> Result<((sled::Db, TempDir), LogStore, StateMachine), StorageError<u64>> {
        let dir = TempDir::new("t10-suite");
        let db = sled::Config::new().temporary(true).open().map_err(|e| io(&e))?;
        let log = LogStore::open(&db).map_err(|e| io(&e))?;
        let sm = StateMachine::open(&db, dir.0.join("snapshots"))
            .await
            .map_err(|e| io(&e))?;
        Ok(((db, dir), log, sm))
    }
}

#[test]
fn sled_store_passes_the_openraft_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite: {e}");
    }
}
