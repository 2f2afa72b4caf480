//! `ipamctl`: the operator's command line for an ipam-server cluster.

fn main() {}
