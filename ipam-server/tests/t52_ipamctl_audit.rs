//! `ipamctl`'s audit commands against a real single-replica `ipam-server` process: a history is
//! made through the agent API (a node registers, an ENI attaches, web-1 binds and is released,
//! web-2 binds), then `export`, `watch` (bounded: a few lines, then killed; and resumed across a
//! server restart), `who-had` and `history` are checked against it, and bad input is exit code 2
//! before any call.

use std::io::BufRead;
use std::io::BufReader;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread::sleep;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::agent_service_client::AgentServiceClient;
use serde_json::Value;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

mod common;
use common::TempDir;

const IPAMCTL: &str = env!("CARGO_BIN_EXE_ipamctl");
const SERVER: &str = env!("CARGO_BIN_EXE_ipam-server");

const NODE: &str = "ip-10-0-1-10.us-west-2.compute.internal";
const INSTANCE: &str = "i-0123456789abcdef0";
const ENI: &str = "eni-0123456789abcdef0";
/// The seed ENIConfig's security group.
const SG: &str = "sg-0dff111a1d11c1c11";
/// How long a line of a streaming command may take.
const LINE_WAIT: Duration = Duration::from_secs(20);

/// A fixture file's path.
fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A child process, killed when the test ends (also when it fails).
struct Killed(Child);

impl Drop for Killed {
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

/// An ipamctl command against `server`, with the environment cleared of ipamctl's variables.
fn command(server: &str, args: &[&str]) -> Command {
    let mut command = Command::new(IPAMCTL);
    command
        .arg("--server")
        .arg(server)
        .args(args)
        .env_remove("IPAMCTL_SERVER")
        .env_remove("IPAMCTL_OUTPUT")
        .env_remove("IPAMCTL_TIMEOUT")
        .env_remove("IPAMCTL_RETRIES")
        .env_remove("IPAMCTL_CONSISTENCY")
        .env("IPAMCTL_OPERATOR", "t52")
        .stdin(Stdio::null());
    command
}

/// Runs ipamctl to its end.
fn ipamctl(server: &str, args: &[&str]) -> Run {
    let output = command(server, args)
        .output()
        .unwrap_or_else(|e| panic!("run ipamctl: {e}"));
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "ipamctl {args:?} panicked: {run:?}");
    run
}

/// Runs ipamctl and requires exit code 0.
fn ok(server: &str, args: &[&str]) -> Run {
    let run = ipamctl(server, args);
    assert_eq!(run.code, Some(0), "ipamctl {args:?}: {run:?}");
    run
}

/// JSON lines.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect()
}

/// Parses JSON output.
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The `seq` of each event.
fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap_or(0)).collect()
}

/// The `kind` of each event.
fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap_or("")).collect()
}

/// A running `ipamctl watch` (or any streaming run): its stdout lines as they come.
struct Streaming {
    child: Killed,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    /// Starts ipamctl with `args`.
    fn start(server: &str, args: &[&str]) -> Self {
        let mut child = command(server, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start ipamctl: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child: Killed(child),
            lines,
        }
    }

    /// The next `count` lines, each within [`LINE_WAIT`].
    fn take(&mut self, count: usize) -> Vec<String> {
        (0..count)
            .map(|i| {
                self.lines.recv_timeout(LINE_WAIT).unwrap_or_else(|e| {
                    let status = self.child.0.try_wait();
                    panic!(
                        "line {} of {count} did not come within {LINE_WAIT:?} ({e}); ipamctl: {status:?}",
                        i + 1
                    )
                })
            })
            .collect()
    }

    /// Kills it and returns what it wrote on stderr.
    fn stop(mut self) -> String {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let mut stderr = String::new();
        if let Some(pipe) = self.child.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut BufReader::new(pipe), &mut stderr);
        }
        stderr
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"))
        .port()
}

/// Starts (or restarts) a single-replica server on `address` with its data in `dir`, and waits
/// until it leads itself.
fn start_server(dir: &TempDir, address: &str) -> Killed {
    std::fs::create_dir_all(&dir.0).unwrap_or_else(|e| panic!("{e}"));
    let child = Command::new(SERVER)
        .args(["--listen", address, "--no-http", "--data-dir"])
        .arg(dir.0.join("data"))
        .current_dir(&dir.0)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start ipam-server: {e}"));
    let server = Killed(child);
    let start = Instant::now();
    loop {
        let run = ipamctl(address, &["--retries", "0", "cluster", "status", "-o", "json"]);
        if run.code == Some(0) && json(&run.stdout)["cluster"]["leader_id"] == 1 {
            return server;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no leader at {address} after 30 s: {run:?}"
        );
        sleep(Duration::from_millis(200));
    }
}

/// Stops a server with SIGTERM (as an operator would), so that it shuts down cleanly.
fn stop_server(mut server: Killed) {
    let status = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill -TERM: {e}"));
    assert!(status.success());
    let start = Instant::now();
    while server.0.try_wait().ok().flatten().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the server did not stop on SIGTERM"
        );
        sleep(Duration::from_millis(50));
    }
}

/// A time in ms as RFC 3339 UTC to the millisecond.
fn rfc3339_ms(unix_ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0)))
        .to_string()
}

/// The local clock in ms.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

/// What [`make_history`] did.
#[derive(Debug)]
struct Story {
    /// web-1's address, released since.
    ip1: String,
    /// web-1's lease.
    lease1: u64,
    /// When web-1 was bound (leader time).
    bound1_at: i64,
    /// A time after web-1's bind and at or before its release.
    released1_after: i64,
    /// web-2's address, still bound.
    ip2: String,
}

/// A bind request of the test node for `pod` in `default`.
fn bind_request(epoch: u64, request_id: &str, pod: &str, container_id: &str) -> pb::BindRequest {
    pb::BindRequest {
        node: NODE.to_owned(),
        epoch,
        request_id: request_id.to_owned(),
        pod: Some(pb::PodRef {
            namespace: "default".to_owned(),
            name: pod.to_owned(),
            uid: format!("uid-{pod}"),
        }),
        pod_labels: Default::default(),
        service_account: String::new(),
        service_account_labels: Default::default(),
        attachment: Some(pb::Attachment {
            container_id: container_id.to_owned(),
            ifname: "eth0".to_owned(),
        }),
    }
}

/// The seed subnet config, a node, an attached ENI, web-1 bound then released, web-2 bound.
fn make_history(address: &str) -> Story {
    let applied = ok(
        address,
        &["apply", "-f", &fixture("pool.yaml"), "-f", &fixture("seed.yaml")],
    );
    assert!(applied.stdout.contains("eniconfig/us-west-2a created"), "{applied:?}");
    // Long enough that neither the node expires nor web-1's address cools during the test.
    ok(
        address,
        &["settings", "set", "--heartbeat-ttl", "10m", "--ip-cooldown", "10m"],
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    runtime.block_on(async {
        let channel: Channel = Endpoint::from_shared(format!("http://{address}"))
            .unwrap_or_else(|e| panic!("endpoint: {e}"))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let mut agent = AgentServiceClient::new(channel);
        let epoch = agent
            .register_node(pb::RegisterNodeRequest {
                node: NODE.to_owned(),
                request_id: "reg-1".to_owned(),
                instance_id: INSTANCE.to_owned(),
                instance_type: "m5.xlarge".to_owned(),
                availability_zone: "us-west-2a".to_owned(),
                limits: Some(pb::NodeLimits {
                    max_enis: 4,
                    ipv4_per_eni: 10,
                    branch_enis: 0,
                    trunking: false,
                }),
                labels: Default::default(),
                subnet_config: "us-west-2a".to_owned(),
                pod_eni_enabled: false,
                primary_ip: "10.0.1.10".to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("RegisterNode: {e}"))
            .into_inner()
            .epoch;
        let plan = agent
            .plan_eni(pb::PlanEniRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "plan-1".to_owned(),
                kind: pb::EniKind::Secondary.into(),
                ip_count: 3,
            })
            .await
            .unwrap_or_else(|e| panic!("PlanEni: {e}"))
            .into_inner();
        agent
            .report_eni_attached(pb::ReportEniAttachedRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "att-1".to_owned(),
                eni_ref: plan.eni_ref,
                eni_id: ENI.to_owned(),
                mac: "0a:1b:2c:3d:4e:5f".to_owned(),
                attachment_id: "eni-attach-0123456789abcdef0".to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("ReportEniAttached: {e}"));
        let lease1 = agent
            .bind(bind_request(epoch, "bind-1", "web-1", "c0ffee01"))
            .await
            .unwrap_or_else(|e| panic!("Bind web-1: {e}"))
            .into_inner()
            .lease
            .unwrap_or_else(|| panic!("Bind web-1: no lease"));
        // web-1 holds its address for a while before it goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before_release = now_ms();
        let released = agent
            .release(pb::ReleaseRequest {
                node: NODE.to_owned(),
                epoch,
                request_id: "rel-1".to_owned(),
                lease_id: lease1.lease_id,
                attachment: Some(pb::Attachment {
                    container_id: "c0ffee01".to_owned(),
                    ifname: "eth0".to_owned(),
                }),
                reason: pb::ReleaseReason::CniDel.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("Release web-1: {e}"))
            .into_inner();
        assert!(released.released, "{released:?}");
        let lease2 = agent
            .bind(bind_request(epoch, "bind-2", "web-2", "c0ffee02"))
            .await
            .unwrap_or_else(|e| panic!("Bind web-2: {e}"))
            .into_inner()
            .lease
            .unwrap_or_else(|| panic!("Bind web-2: no lease"));
        assert_ne!(lease2.ip, lease1.ip, "web-1's address is cooling");
        Story {
            ip1: lease1.ip.clone(),
            lease1: lease1.lease_id,
            bound1_at: lease1.bound_at_unix_ms,
            // The server and this test share a clock: the release was stamped at or after this.
            released1_after: before_release,
            ip2: lease2.ip,
        }
    })
}

#[test]
fn export_and_watch_stream_the_ledger() {
    let dir = TempDir::new("t52-stream");
    let address = format!("127.0.0.1:{}", free_port());
    let _server = start_server(&dir, &address);
    let server = address.as_str();
    let story = make_history(server);

    // export: every event as a JSON line, seq 1 up, gapless; the summary on stderr (not a tty).
    let exported = ok(server, &["export"]);
    let events = json_lines(&exported.stdout);
    assert!(events.len() >= 8, "{}", exported.stdout);
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs(&events), expected);
    let kinds_seen = kinds(&events);
    for kind in [
        "PoolCreated",
        "SubnetConfigUpserted",
        "NodeRegistered",
        "EniPlanned",
        "EniAttached",
        "IpBound",
        "IpReleased",
    ] {
        assert!(kinds_seen.contains(&kind), "{kind} not in {kinds_seen:?}");
    }
    let bound: Vec<&Value> = events.iter().filter(|e| e["kind"] == "IpBound").collect();
    assert_eq!(bound.len(), 2, "{bound:?}");
    assert_eq!(bound[0]["pod"]["name"], "web-1");
    assert_eq!(bound[0]["ips"][0], story.ip1.as_str());
    assert_eq!(bound[0]["lease_id"], story.lease1);
    assert_eq!(bound[0]["actor"]["kind"], "ACTOR_KIND_AGENT");
    assert!(bound[0]["payload"].is_object(), "payload_json is parsed: {}", bound[0]);
    let released = events
        .iter()
        .find(|e| e["kind"] == "IpReleased")
        .unwrap_or_else(|| panic!("no IpReleased"));
    assert_eq!(released["cause"], "cni_del", "{released}");
    assert!(
        exported
            .stderr
            .contains(&format!("export done: {} events written", events.len())),
        "{exported:?}"
    );
    assert!(
        !exported.stderr.contains('\r'),
        "no progress redraws when stderr is not a tty"
    );

    // A range: from web-1's release on (the leader stamped it after released1_after).
    let since = rfc3339_ms(story.released1_after);
    let later = json_lines(&ok(server, &["export", "--since", &since]).stdout);
    assert_eq!(
        later.first().map(|e| e["kind"].clone()),
        Some("IpReleased".into()),
        "{later:?}"
    );
    let future = ok(server, &["export", "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(future.stdout, "");
    let past = ok(server, &["export", "--until", "2000-01-01T00:00:00+01:00"]);
    assert_eq!(past.stdout, "");

    // watch --from 1: the same events, in the same order, then it keeps waiting.
    let mut watch = Streaming::start(server, &["watch", "--from", "1", "-o", "json"]);
    let watched = json_lines(&watch.take(events.len()).join("\n"));
    assert_eq!(seqs(&watched), seqs(&events));
    assert_eq!(kinds(&watched), kinds(&events));
    assert!(
        watch.child.0.try_wait().ok().flatten().is_none(),
        "watch does not end by itself"
    );
    watch.stop();

    // watch --filter: web-1's events only; --kind: binds only.
    let mut watch = Streaming::start(
        server,
        &["watch", "--from", "1", "--filter", "pod=default/web-1", "-o", "json"],
    );
    let web1 = json_lines(&watch.take(2).join("\n"));
    assert_eq!(kinds(&web1), ["IpBound", "IpReleased"]);
    watch.stop();
    let mut watch = Streaming::start(server, &["watch", "--from", "1", "--kind", "IpBound", "-o", "json"]);
    let binds = json_lines(&watch.take(2).join("\n"));
    assert_eq!(kinds(&binds), ["IpBound", "IpBound"]);
    assert_eq!(binds[1]["pod"]["name"], "web-2");
    watch.stop();

    // The table: a header, then a row per event.
    let mut watch = Streaming::start(
        server,
        &["watch", "--from", "1", "--filter", &format!("ip={}", story.ip2)],
    );
    let lines = watch.take(2);
    assert!(lines[0].trim_start().starts_with("SEQ   TIME"), "{lines:?}");
    assert!(lines[1].contains(&story.ip2), "{lines:?}");
    watch.stop();
}

#[test]
fn a_watch_resumes_after_the_server_restarts() {
    let dir = TempDir::new("t52-resume");
    let address = format!("127.0.0.1:{}", free_port());
    let server = start_server(&dir, &address);
    ok(
        &address,
        &["apply", "-f", &fixture("pool.yaml"), "-f", &fixture("seed.yaml")],
    );
    let count = json_lines(&ok(&address, &["export"]).stdout).len();
    assert!(count >= 2);

    let mut watch = Streaming::start(&address, &["--retries", "30", "watch", "--from", "1", "-o", "json"]);
    assert_eq!(
        seqs(&json_lines(&watch.take(count).join("\n"))).last(),
        Some(&(count as u64))
    );
    stop_server(server);
    let _server = start_server(&dir, &address);
    ok(&address, &["settings", "set", "--ip-cooldown", "5s"]);
    let next = json_lines(&watch.take(1).join("\n"));
    assert_eq!(seqs(&next), [count as u64 + 1], "resumed after the last seq, no repeat");
    assert_eq!(kinds(&next), ["SettingsUpdated"]);
    assert_eq!(next[0]["actor"]["name"], "t52");
    let stderr = watch.stop();
    assert!(stderr.contains(&format!("resuming from seq {}", count + 1)), "{stderr}");
}

/// WhoHad and History, as ipamctl prints them.
#[test]
fn who_had_and_history_answer_from_the_ledger() {
    let dir = TempDir::new("t52-query");
    let address = format!("127.0.0.1:{}", free_port());
    let _server = start_server(&dir, &address);
    let server = address.as_str();
    let story = make_history(server);
    let ip1 = story.ip1.as_str();

    // who-had while web-1 held it: every field of the binding.
    let at = rfc3339_ms(story.bound1_at + 1);
    let run = ok(server, &["who-had", ip1, "--at", &at]);
    let text = &run.stdout;
    assert!(
        text.starts_with(&format!("{ip1} at {at}: lease {}\n", story.lease1)),
        "{text}"
    );
    for field in [
        "  Pod:             default/web-1\n",
        "  Pod UID:         uid-web-1\n",
        "  Container ID:    c0ffee01\n",
        "  Interface:       eth0\n",
        &format!("  Node:            {NODE}\n"),
        &format!("  Instance ID:     {INSTANCE}\n"),
        &format!("  ENI:             {ENI}\n"),
        &format!("  Security groups: {SG}\n"),
        &format!("  Bound since:     {}\n", rfc3339_ms(story.bound1_at)),
    ] {
        assert!(text.contains(field), "{field:?} not in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("  Released:        ") && l.ends_with(" (cni_del)")),
        "{text}"
    );
    // The same instant written with an offset, and read from any replica.
    let in_paris = format!(
        "{}+01:00",
        rfc3339_ms(story.bound1_at + 1 + 3_600_000).trim_end_matches('Z')
    );
    let same = ok(server, &["who-had", ip1, "--at", &in_paris, "--consistency", "stale"]);
    assert_eq!(same.stdout, run.stdout);
    let value = json(&ok(server, &["who-had", ip1, "--at", &at, "-o", "json"]).stdout);
    assert_eq!(value["bindings"].as_array().map(Vec::len), Some(1), "{value}");
    assert_eq!(value["bindings"][0]["release_reason"], "RELEASE_REASON_CNI_DEL");
    assert_eq!(value["bindings"][0]["instance_id"], INSTANCE);
    assert_eq!(value["bindings"][0]["lease"]["owner"]["pod"]["uid"], "uid-web-1");

    // Now: web-1's address is cooling (nobody), web-2's is bound.
    let nobody = ok(server, &["who-had", ip1]);
    assert!(
        nobody.stdout.starts_with(&format!("nobody held {ip1} at ")),
        "{nobody:?}"
    );
    let before = ok(server, &["who-had", ip1, "--at", "2020-01-01T00:00:00Z"]);
    assert_eq!(
        before.stdout,
        format!("nobody held {ip1} at 2020-01-01T00:00:00.000Z\n")
    );
    let web2 = ok(server, &["who-had", &story.ip2]);
    assert!(web2.stdout.contains("  Pod:             default/web-2\n"), "{web2:?}");
    assert!(web2.stdout.contains("  Released:        still bound\n"), "{web2:?}");

    // history of the address: bound, then released, every event touching it.
    let events = json_lines(&ok(server, &["history", "ip", ip1, "-o", "json"]).stdout);
    let kinds_seen = kinds(&events);
    let bound = kinds_seen.iter().position(|k| *k == "IpBound");
    let released = kinds_seen.iter().position(|k| *k == "IpReleased");
    assert!(bound.is_some() && bound < released, "{kinds_seen:?}");
    assert!(
        events
            .iter()
            .all(|e| e["ips"].as_array().is_some_and(|ips| ips.contains(&ip1.into())))
    );
    assert!(seqs(&events).windows(2).all(|w| w[0] < w[1]), "oldest first");
    let table = ok(server, &["history", "pod", "default/web-1"]).stdout;
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("SEQ   TIME"), "{table}");
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[1].contains("IpBound") && rows[2].contains("IpReleased"), "{table}");
    let web2 = json_lines(&ok(server, &["history", "pod-uid", "uid-web-2", "-o", "json"]).stdout);
    assert_eq!(kinds(&web2), ["IpBound"]);
    let eni = json_lines(&ok(server, &["history", "eni", ENI, "-o", "json"]).stdout);
    assert!(kinds(&eni).contains(&"EniAttached"), "{eni:?}");
    let sg = json_lines(&ok(server, &["history", "sg", SG, "-o", "json"]).stdout);
    assert!(kinds(&sg).contains(&"SubnetConfigUpserted"), "{sg:?}");
    let since = rfc3339_ms(story.released1_after);
    let after = json_lines(&ok(server, &["history", "ip", ip1, "--since", &since, "-o", "json"]).stdout);
    assert_eq!(kinds(&after).first(), Some(&"IpReleased"), "{after:?}");

    // --limit stops early and prints the token; --page-token continues where it stopped.
    let all = json_lines(&ok(server, &["history", "node", NODE, "--limit", "0", "-o", "json"]).stdout);
    assert!(all.len() >= 4, "{all:?}");
    let first = ok(server, &["history", "node", NODE, "--limit", "2", "-o", "json"]);
    let head = json_lines(&first.stdout);
    assert_eq!(seqs(&head), seqs(&all[..2]));
    let token = first
        .stderr
        .split("--page-token ")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("no token: {first:?}"));
    let rest = json_lines(
        &ok(
            server,
            &[
                "history",
                "node",
                NODE,
                "--page-token",
                token,
                "--limit",
                "0",
                "-o",
                "json",
            ],
        )
        .stdout,
    );
    assert_eq!(seqs(&rest), seqs(&all[2..]));
    let none = ok(server, &["history", "node", "nobody"]);
    assert_eq!(none.stdout, "");
    assert!(none.stderr.contains("No events found."), "{none:?}");
}

#[test]
fn bad_input_is_exit_code_2_before_any_call() {
    // Nobody listens here: exit code 2 (not 1) shows ipamctl stopped before calling.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let cases: [(&[&str], &str); 13] = [
        (
            &["who-had", "::1"],
            "ipamctl manages IPv4 (the 100.64 CGNAT pools); `::1` is not an IPv4 address",
        ),
        (&["who-had", "100.64.3"], "`100.64.3` is not an IPv4 address"),
        (&["history", "ip", "100.64.3"], "`100.64.3` is not an IPv4 address"),
        (&["history", "pod", "web-1"], "NAMESPACE/NAME"),
        (&["history", "ip", "100.64.0.9", "--since", "yesterday"], "--since"),
        (&["history", "ip", "100.64.0.9", "--until", "soon"], "1h30m"),
        (
            &["who-had", "100.64.0.9", "--at", "2026-11-24T14:02:00"],
            "no UTC offset",
        ),
        (&["who-had", "100.64.0.9", "--at", "2026-11-31T14:02:00Z"], "RFC 3339"),
        (
            &["history", "ip", "100.64.0.9", "--since", "1h", "--until", "2h"],
            "--until",
        ),
        (&["export", "--since", "now", "--until", "1d"], "is before --since"),
        (&["watch", "--filter", "ip=::1"], "`::1` is not an IPv4 address"),
        (&["watch", "--filter", "colour=red"], "KIND=KEY"),
        (&["history", "widget", "x"], "widget"),
    ];
    for (args, says) in cases {
        let mut all = vec!["--retries", "0", "--timeout", "1s"];
        all.extend_from_slice(args);
        let run = ipamctl(&nowhere, &all);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.contains(says), "{args:?} says {says:?}: {run:?}");
        assert_eq!(run.stdout, "", "{args:?}");
    }
    // The same commands with good input do call, and fail to reach the server: 1.
    let run = ipamctl(
        &nowhere,
        &["--retries", "0", "--timeout", "1s", "export", "--since", "1h"],
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.starts_with("error: cannot reach the IPAM server"), "{run:?}");
}
