//! openraft's own storage test suite, run on the sled log store and state machine.

use ipam_server::raft::LogStore;
use ipam_server::raft::StateMachine;
use ipam_server::raft::TypeConfig;
use openraft::AnyError;
use openraft::StorageError;
use openraft::StorageIOError;
use openraft::testing::StoreBuilder;
use openraft::testing::Suite;

/// A fresh, temporary sled database per test case; sled removes it when the last handle drops.
struct SledBuilder;

fn io(e: &(impl std::error::Error + 'static)) -> StorageError<u64> {
    StorageIOError::write(AnyError::new(e)).into()
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, sled::Db> for SledBuilder {
    async fn build(&self) -> Result<(sled::Db, LogStore, StateMachine), StorageError<u64>> {
        let db = sled::Config::new().temporary(true).open().map_err(|e| io(&e))?;
        let log = LogStore::open(&db).map_err(|e| io(&e))?;
        let sm = StateMachine::open(&db).map_err(|e| io(&e))?;
        Ok((db, log, sm))
    }
}

#[test]
fn sled_store_passes_the_openraft_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite: {e}");
    }
}
