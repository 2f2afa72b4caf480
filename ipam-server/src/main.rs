//! `ipam-server`: one replica of the IPAM cluster.

fn main() {}
