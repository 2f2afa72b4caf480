//! Chaos tests, the load generator and the etcd comparison benchmark.
