//! ADD+DEL latency of the `ipam-eks` plugin against Debian's `ptp` + `host-local`, in the same run,
//! on the same node namespace, interleaved pod by pod so that both see the same machine noise.
//!
//! Ours commits every lease to the IPAM server (Raft on sled, fsync) through the node agent and
//! plumbs the pod through netlink; `ptp` plumbs with netlink too and `host-local` writes a file.
//!
//! ```sh
//! cargo build --release -p ipam-cni-plugin --bin ipam-eks --example add_del_bench
//! sudo target/release/examples/add_del_bench --pods 500
//! ```
//!
//! Needs root (namespaces) and Debian's containernetworking-plugins
//! (scripts/install-cni-plugins.sh). Prints one JSON line with p50/p99 of each and the ratios.

#[path = "../../node-agent/tests/agent_world/mod.rs"]
mod agent_world;
#[path = "../tests/cni_runtime/mod.rs"]
mod cni_runtime;
#[path = "../../node-agent/tests/netns/mod.rs"]
mod netns;
#[path = "../tests/stack/mod.rs"]
mod stack;

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use cni_runtime::Attachment;
use serde_json::json;
use stack::Pods;
use stack::Stack;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut pods_wanted = 500usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pods" => pods_wanted = args.next().and_then(|n| n.parse().ok()).expect("--pods takes a number"),
            other => panic!("unknown argument {other:?} (use --pods N)"),
        }
    }
    let plugin: PathBuf = std::env::current_exe()
        .expect("current exe")
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("ipam-eks"))
        .expect("target directory");
    assert!(
        plugin.is_file(),
        "build the plugin first: {} is missing",
        plugin.display()
    );
    let warm = u32::try_from(pods_wanted).expect("pods");
    let Some(mut stack) = Stack::start_on("add_del_bench", warm, &plugin, "m5.24xlarge", "100.64.4.0/22").await else {
        panic!("the benchmark needs root, network namespaces and Debian's CNI plugins");
    };
    stack.runtime.direct = true;
    // The steady state the warm pool exists for: every ADD finds a warm address (an m5.24xlarge
    // holds 735 pod addresses, and the pool is filled before the clock starts), so the figures are
    // the plugin's, the agent's and the server's, not EC2's. Released addresses cool (30 s) and
    // are not reused during the run, as host-local hands out the next address of its /16.
    for _ in 0..1200 {
        if agent_world::warm_count(&stack.world.node_view().await) >= pods_wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        agent_world::warm_count(&stack.world.node_view().await) >= pods_wanted,
        "the warm pool did not fill in 2 minutes"
    );
    let ours = json!({
        "cniVersion": "1.0.0",
        "name": "ipam-eks",
        "plugins": [ { "type": "ipam-eks", "socket": stack.socket() } ]
    });
    let data_dir = stack.world.dir.0.join("host-local");
    let anchor = json!({
        "cniVersion": "1.0.0",
        "name": "ptp-host-local",
        "plugins": [ {
            "type": "ptp", "ipMasq": false, "mtu": 9001,
            "ipam": { "type": "host-local", "subnet": "10.99.0.0/16", "dataDir": data_dir }
        } ]
    });
    let mut pods = Pods(Vec::new());
    let pod_ns = pods.add("bench");
    let runtime = stack.runtime.clone();
    let pod_ns_for_run = pod_ns.clone();
    let (mut our_times, mut anchor_times) = tokio::task::spawn_blocking(move || {
        let mut ours_t = Vec::with_capacity(pods_wanted);
        let mut anchor_t = Vec::with_capacity(pods_wanted);
        for i in 0..pods_wanted {
            for (list, times, tag) in [(&ours, &mut ours_t, "o"), (&anchor, &mut anchor_t, "a")] {
                let pod = Attachment::new(&format!("bench-{tag}-{i}"), &pod_ns_for_run);
                let started = Instant::now();
                let result = runtime.add(list, &pod).unwrap_or_else(|e| panic!("{e}"));
                runtime.del(list, &pod, Some(&result)).unwrap_or_else(|e| panic!("{e}"));
                times.push(started.elapsed());
            }
        }
        (ours_t, anchor_t)
    })
    .await
    .expect("join");
    our_times.sort();
    anchor_times.sort();
    let (o50, o99) = (percentile(&our_times, 0.5), percentile(&our_times, 0.99));
    let (a50, a99) = (percentile(&anchor_times, 0.5), percentile(&anchor_times, 0.99));
    println!(
        "{}",
        json!({
            "pods": pods_wanted,
            "ipam_eks_ms": { "p50": ms(o50), "p99": ms(o99) },
            "ptp_host_local_ms": { "p50": ms(a50), "p99": ms(a99) },
            "ratio": {
                "p50": (o50.as_secs_f64() / a50.as_secs_f64() * 100.0).round() / 100.0,
                "p99": (o99.as_secs_f64() / a99.as_secs_f64() * 100.0).round() / 100.0,
            }
        })
    );
    drop(pods);
    stack.stop().await;
}
