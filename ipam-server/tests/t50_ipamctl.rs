//! `ipamctl` against a real single-replica `ipam-server` process: the seed manifests and a pool
//! applied (then applied again: unchanged), `get`, `stats`, `settings`, `cluster status`,
//! `delete`, and the exit codes of a refusal (1), an invalid manifest (2) and an unreachable
//! server (1).

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::thread::sleep;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;

mod common;
use common::TempDir;

const IPAMCTL: &str = env!("CARGO_BIN_EXE_ipamctl");
const SERVER: &str = env!("CARGO_BIN_EXE_ipam-server");

/// A fixture file's path.
fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// The server process, killed when the test ends (also when it fails).
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one ipamctl run did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs ipamctl against `server` with `args`, feeding `stdin`.
fn ipamctl(server: &str, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(IPAMCTL)
        .arg("--server")
        .arg(server)
        .args(args)
        .env_remove("IPAMCTL_SERVER")
        .env_remove("IPAMCTL_OUTPUT")
        .env_remove("IPAMCTL_NAMESPACE")
        .env_remove("IPAMCTL_TIMEOUT")
        .env_remove("IPAMCTL_RETRIES")
        .env("IPAMCTL_OPERATOR", "t50")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start ipamctl: {e}"));
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .unwrap_or_else(|e| panic!("write ipamctl's stdin: {e}"));
    }
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("run ipamctl: {e}"));
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "ipamctl {args:?} panicked: {run:?}");
    run
}

/// Runs ipamctl and requires exit code 0.
fn ok(server: &str, args: &[&str]) -> String {
    let run = ipamctl(server, args, "");
    assert_eq!(run.code, Some(0), "ipamctl {args:?}: {run:?}");
    run.stdout
}

/// Parses JSON output.
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"))
        .port()
}

/// Starts a single-replica server and waits until it leads itself.
fn start_server(dir: &TempDir) -> (ServerProcess, String) {
    std::fs::create_dir_all(&dir.0).unwrap_or_else(|e| panic!("{e}"));
    let address = format!("127.0.0.1:{}", free_port());
    let child = Command::new(SERVER)
        .args(["--listen", &address, "--no-http", "--data-dir"])
        .arg(dir.0.join("data"))
        .current_dir(&dir.0)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start ipam-server: {e}"));
    let server = ServerProcess(child);
    let start = Instant::now();
    loop {
        let run = ipamctl(&address, &["--retries", "0", "cluster", "status", "-o", "json"], "");
        if run.code == Some(0) && json(&run.stdout)["cluster"]["leader_id"] == 1 {
            return (server, address);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no leader at {address} after 30 s: {run:?}"
        );
        sleep(Duration::from_millis(200));
    }
}

#[test]
fn ipamctl_drives_a_single_replica() {
    let dir = TempDir::new("t50-ipamctl");
    let (_server, address) = start_server(&dir);
    let server = address.as_str();

    // The seed manifests, unchanged, with the pool that gives the ENIConfig's subnet its CIDR.
    let (pool, seed) = (fixture("pool.yaml"), fixture("seed.yaml"));
    let first = ipamctl(server, &["apply", "-f", &pool, "-f", &seed], "");
    assert!(first.stdout.contains("pool/100-64 created\n"), "{first:?}");
    assert!(first.stdout.contains("eniconfig/us-west-2a created\n"), "{first:?}");
    // The seed's policy applies unchanged, placeholder group id `example_sg` included (the AWS
    // CRD takes any string; EC2 judges the id when a branch ENI is made with it).
    let sgp = "securitygrouppolicy/my-namespace/my-security-group-policy";
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(first.stdout.contains(&format!("{sgp} created\n")), "{first:?}");
    let policies = json(&ok(server, &["get", "sg-policies", "-n", "my-namespace", "-o", "json"]));
    assert_eq!(
        policies["policies"][0]["security_group_ids"][0], "example_sg",
        "{policies}"
    );

    let again = ipamctl(server, &["apply", "-f", &pool, "-f", &seed], "");
    assert!(again.stdout.contains("pool/100-64 unchanged\n"), "{again:?}");
    assert!(again.stdout.contains("eniconfig/us-west-2a unchanged\n"), "{again:?}");
    assert!(again.stdout.contains(&format!("{sgp} unchanged\n")), "{again:?}");

    // A policy with EC2-shaped ids, from stdin, without a namespace (the default namespace).
    let policy = "apiVersion: vpcresources.k8s.aws/v1beta1\nkind: SecurityGroupPolicy\nmetadata:\n  name: web\n\
                  spec:\n  podSelector:\n    matchExpressions:\n    - {key: app, operator: In, values: [web]}\n  \
                  securityGroups:\n    groupIds: [sg-0123456789abcdef0]\n";
    let applied = ipamctl(server, &["apply", "-f", "-"], policy);
    assert_eq!(applied.code, Some(0), "{applied:?}");
    assert_eq!(applied.stdout, "securitygrouppolicy/default/web created\n");
    let policies = json(&ok(server, &["get", "sg-policies", "-n", "default", "-o", "json"]));
    assert_eq!(policies["policies"][0]["name"], "web", "{policies}");
    assert_eq!(
        policies["policies"][0]["pod_selector"]["match_expressions"][0]["operator"],
        "LABEL_SELECTOR_OPERATOR_IN"
    );

    let subnets = json(&ok(server, &["get", "subnets", "-o", "json"]));
    let config = &subnets["subnet_configs"][0];
    assert_eq!(config["name"], "us-west-2a", "{subnets}");
    assert_eq!(config["subnet_id"], "subnet-011b111c1f11fdf11");
    assert_eq!(config["subnet_cidr"], "100.64.0.0/19");
    assert_eq!(config["availability_zone"], "us-west-2a");
    assert_eq!(config["security_group_ids"][0], "sg-0dff111a1d11c1c11");
    let table = ok(server, &["get", "subnets"]);
    assert!(table.starts_with("NAME "), "{table}");
    assert!(table.contains("subnet-011b111c1f11fdf11"), "{table}");
    assert!(ok(server, &["get", "pools"]).contains("100.64.0.0/16"));

    // 100.64.0.0/19 holds 8192 addresses, AWS reserves 5.
    let stats = ok(server, &["stats"]);
    let header = stats.lines().next().unwrap_or_default();
    assert!(header.starts_with("NAME ") && header.contains("FREE"), "{stats}");
    let row = stats.lines().nth(1).unwrap_or_default();
    assert!(row.starts_with("us-west-2a ") && row.contains(" 8187 "), "{stats}");
    let stats = json(&ok(server, &["stats", "-o", "json"]));
    assert_eq!(stats["subnets"][0]["total_usable"], 8187, "{stats}");

    let status = ok(server, &["cluster", "status"]);
    assert!(
        status.starts_with(&format!("replica 1: leader 1 at {address}, term ")),
        "{status}"
    );
    assert!(
        status.lines().any(|l| l.contains("voter") && l.contains('*')),
        "{status}"
    );

    let settings = json(&ok(server, &["settings", "set", "--ip-cooldown", "5s", "-o", "json"]));
    assert_eq!(settings["settings"]["ip_cooldown_ms"], 5000, "{settings}");
    let settings = json(&ok(server, &["settings", "get", "-o", "json"]));
    assert_eq!(settings["settings"]["ip_cooldown_ms"], 5000, "{settings}");
    // A refusal: exit code 1 and the gRPC code.
    let refused = ipamctl(server, &["settings", "set", "--branch-cooldown", "10s"], "");
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.starts_with("error: INVALID_ARGUMENT: "), "{refused:?}");

    // An invalid manifest: exit code 2, nothing sent.
    let invalid = "apiVersion: crd.k8s.amazonaws.com/v1alpha1\nkind: ENIConfig\nmetadata:\n  name: us-west-2b\n\
                   spec:\n  subnet: subnet-0123456789abcdef0\n  securityGroup: [sg-11111111]\n";
    let rejected = ipamctl(server, &["apply", "-f", "-"], invalid);
    assert_eq!(rejected.code, Some(2), "{rejected:?}");
    assert!(
        rejected.stderr.contains("spec.securityGroup: unknown field"),
        "{rejected:?}"
    );
    assert!(rejected.stderr.contains("nothing was sent"), "{rejected:?}");
    let unknown_subnet = "apiVersion: crd.k8s.amazonaws.com/v1alpha1\nkind: ENIConfig\nmetadata:\n  name: us-west-2b\n\
                          spec:\n  subnet: subnet-0123456789abcdef0\n";
    let rejected = ipamctl(server, &["apply", "-f", "-"], unknown_subnet);
    assert_eq!(rejected.code, Some(2), "{rejected:?}");
    assert!(rejected.stderr.contains("add it to a Pool"), "{rejected:?}");
    let subnets = json(&ok(server, &["get", "subnets", "-o", "json"]));
    assert_eq!(subnets["subnet_configs"].as_array().map(Vec::len), Some(1), "{subnets}");

    // delete -f: the policy goes; a second time it is not found (1), unless ignored (0).
    let deleted = ipamctl(server, &["delete", "-f", "-"], policy);
    assert_eq!(deleted.code, Some(0), "{deleted:?}");
    assert_eq!(deleted.stdout, "securitygrouppolicy/default/web deleted\n");
    let missing = ipamctl(server, &["delete", "-f", "-"], policy);
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(missing.stderr.contains("NOT_FOUND"), "{missing:?}");
    let ignored = ipamctl(server, &["delete", "--ignore-not-found", "-f", "-"], policy);
    assert_eq!(ignored.code, Some(0), "{ignored:?}");
}

#[test]
fn an_unreachable_server_is_exit_code_1_with_a_clear_message() {
    let address = format!("127.0.0.1:{}", free_port());
    let run = ipamctl(&address, &["--retries", "0", "--timeout", "2s", "get", "pools"], "");
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.starts_with("error: cannot reach the IPAM server"), "{run:?}");
    assert!(run.stderr.contains(&address), "{run:?}");
}
