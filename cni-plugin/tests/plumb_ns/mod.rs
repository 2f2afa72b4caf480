//! Network namespaces for the privileged plumbing tests: made with `ip netns add`, removed by a
//! guard even when a test panics, and read back with `ip -json` (an oracle that is not our code).
//!
//! Every test makes its own "host" namespace and plumbs into it, so the machine's own network is
//! never touched.

#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::process::Output;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;

use nix::sched::CloneFlags;
use serde_json::Value;

/// Whether the privileged tests can run: root and `ip`. Locally they skip with a printed reason;
/// with `CI=true` a missing privilege is a failure, never a silent skip.
pub fn privileged(test: &str) -> bool {
    let reason = if effective_uid() != Some(0) {
        Some("not running as root")
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("the `ip` command is missing")
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {reason}, and CI=true: the privileged netns tests must run in CI")
        }
        Some(reason) => {
            eprintln!("SKIPPED {test}: {reason} (the test needs root to make network namespaces)");
            false
        }
    }
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace of the test's own, deleted when dropped.
#[derive(Debug)]
pub struct TestNs {
    pub name: String,
    pub path: PathBuf,
}

impl TestNs {
    /// `ip netns add t20-<pid>-<n>`, with `lo` up.
    pub fn new() -> Self {
        let name = format!("t20-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self {
            path: PathBuf::from(format!("/var/run/netns/{name}")),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args…`, which must succeed; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `ip -n <ns> args…`, whatever its outcome.
    pub fn try_ip(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("run ip")
    }

    /// `ip -json -details -n <ns> args…` as JSON (an array).
    pub fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let out = run(Command::new("ip")
            .args(["-json", "-details", "-n", &self.name])
            .args(args));
        if out.trim().is_empty() {
            return Vec::new();
        }
        match serde_json::from_str(&out).expect("ip -json prints JSON") {
            Value::Array(items) => items,
            other => panic!("ip -json printed {other}"),
        }
    }

    /// The link named `name`, if any.
    pub fn link(&self, name: &str) -> Option<Value> {
        self.ip_json(&["link", "show"])
            .into_iter()
            .find(|l| l["ifname"] == name)
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&self) -> Vec<Value> {
        self.ip_json(&["-4", "route", "show", "table", "main"])
    }

    /// The value of `/proc/sys/<key>` inside the namespace.
    pub fn sysctl(&self, key: &str) -> String {
        let key = key.to_owned();
        on_thread_in(self, move || {
            std::fs::read_to_string(format!("/proc/sys/{key}")).expect("read sysctl")
        })
        .trim()
        .to_owned()
    }

    /// Writes `/proc/sys/<key>` inside the namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) {
        let (key, value) = (key.to_owned(), value.to_owned());
        on_thread_in(self, move || {
            std::fs::write(format!("/proc/sys/{key}"), value).expect("write sysctl");
        });
    }

    /// Deletes the namespace now (the guard then has nothing to do).
    pub fn delete(&self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        self.delete();
    }
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("run ip");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a new thread inside `ns` (the thread is discarded after, never switched back).
pub fn on_thread_in<R: Send>(ns: &TestNs, f: impl FnOnce() -> R + Send) -> R {
    let file = File::open(&ns.path).expect("open the namespace");
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                drop(file);
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs a future to completion on a current-thread runtime on the calling thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// The `flags` of an `ip -json` object contain `flag`.
pub fn has_flag(item: &Value, flag: &str) -> bool {
    item["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|f| f == flag))
}

/// A child process living in `ns` (so `/proc/<pid>/ns/net` names it), killed when dropped.
pub struct NsHolder(std::process::Child);

impl NsHolder {
    pub fn new(ns: &TestNs) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sleep", "60"])
            .spawn()
            .expect("spawn sleep");
        let holder = Self(child);
        // Until `ip` has entered the namespace and exec'd, the child is in ours: wait (bounded).
        let want = on_thread_in(ns, || {
            std::fs::read_link("/proc/thread-self/ns/net").expect("own netns")
        });
        for _ in 0..250 {
            if std::fs::read_link(holder.netns_path()).ok().as_ref() == Some(&want) {
                return holder;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the holder process never entered {}", ns.name);
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.0.id()))
    }
}

impl Drop for NsHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
