//! A small container runtime's CNI side, as libcni does it, for the chaining tests and the
//! benchmark: run a conflist's plugins in order for ADD (each gets the previous result as
//! `prevResult`), in reverse for DEL and in order for CHECK (both with the cached result), with the runtime
//! capabilities a plugin asks for (`portMappings`). Plugins run inside the test's "host"
//! namespace (`ip netns exec`), so the machine's own networking is never touched.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use serde_json::json;

/// Where Debian's containernetworking-plugins live.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// One pod attachment.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub namespace: String,
    pub name: String,
}

impl Attachment {
    /// A pod `name` in namespace "default" whose network namespace is `/run/netns/<netns>`.
    pub fn new(name: &str, netns: &str) -> Self {
        Self {
            container_id: format!("ctr-{name}"),
            netns: PathBuf::from("/run/netns").join(netns),
            ifname: "eth0".to_owned(),
            namespace: "default".to_owned(),
            name: name.to_owned(),
        }
    }

    fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=uid-{}",
            self.namespace, self.name, self.container_id, self.name
        )
    }
}

/// A plugin's failure: its exit status and the error JSON (or whatever it printed).
#[derive(Debug, Clone)]
pub struct PluginError {
    pub plugin: String,
    pub command: String,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} failed: {} (stderr: {})",
            self.plugin, self.command, self.stdout, self.stderr
        )
    }
}

/// The runtime: where plugins are found and which namespace is the host.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `CNI_PATH`: our binary's directory and Debian's.
    pub cni_path: String,
    /// The namespace plugins run in (`ip netns exec`), standing for the node.
    pub host_netns: String,
    /// Port mappings handed to plugins with the `portMappings` capability.
    pub port_mappings: Vec<Value>,
    /// Start plugins from a thread inside the host namespace (a child inherits it) instead of
    /// through `ip netns exec` (which also gives them a matching /sys, at a few ms per call): the
    /// benchmark's way, so that the launcher's cost does not blur the comparison.
    pub direct: bool,
}

impl Runtime {
    /// Plugins from Debian's directory and from the directory of `ours` (the `ipam-eks` binary).
    pub fn new(ours: &Path, host_netns: &str) -> Self {
        let dir = ours.parent().expect("binary directory").display().to_string();
        Self {
            cni_path: format!("{dir}:{DEBIAN_CNI_DIR}"),
            host_netns: host_netns.to_owned(),
            port_mappings: Vec::new(),
            direct: false,
        }
    }

    fn find(&self, plugin: &str) -> PathBuf {
        for dir in self.cni_path.split(':') {
            let path = Path::new(dir).join(plugin);
            if path.is_file() {
                return path;
            }
        }
        panic!("no plugin {plugin} in {}", self.cni_path)
    }

    /// Runs one plugin; Ok with its result JSON (empty for DEL/CHECK), Err with what it said.
    pub fn exec(&self, command: &str, config: &Value, attachment: &Attachment) -> Result<Value, PluginError> {
        let plugin = config["type"].as_str().expect("plugin type").to_owned();
        let path = self.find(&plugin);
        let mut cmd = if self.direct {
            Command::new(&path)
        } else {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.host_netns]).arg(&path);
            cmd
        };
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &attachment.container_id)
            .env("CNI_NETNS", &attachment.netns)
            .env("CNI_IFNAME", &attachment.ifname)
            .env("CNI_ARGS", attachment.cni_args())
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = if self.direct {
            let ns = self.host_netns.clone();
            in_netns(&ns, move || cmd.spawn())
        } else {
            cmd.spawn()
        }
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(config.to_string().as_bytes())
            .expect("write the config");
        let output = wait_bounded(child, Duration::from_secs(60));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            if stdout.trim().is_empty() {
                Ok(Value::Null)
            } else {
                Ok(
                    serde_json::from_str(&stdout)
                        .unwrap_or_else(|e| panic!("{plugin} printed no JSON ({e}): {stdout}")),
                )
            }
        } else {
            Err(PluginError {
                plugin,
                command: command.to_owned(),
                stdout,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        }
    }

    /// The config of plugin `index` of `list` as libcni hands it over.
    fn plugin_config(&self, list: &Value, index: usize, prev: Option<&Value>) -> Value {
        let mut config = list["plugins"][index].clone();
        config["name"] = list["name"].clone();
        config["cniVersion"] = list["cniVersion"].clone();
        if let Some(prev) = prev {
            config["prevResult"] = prev.clone();
        }
        if config["capabilities"]["portMappings"] == json!(true) && !self.port_mappings.is_empty() {
            config["runtimeConfig"] = json!({ "portMappings": self.port_mappings });
        }
        config
    }

    /// ADD through the list; the final result.
    pub fn add(&self, list: &Value, attachment: &Attachment) -> Result<Value, PluginError> {
        let mut prev: Option<Value> = None;
        for index in 0..plugins(list) {
            let config = self.plugin_config(list, index, prev.as_ref());
            prev = Some(self.exec("ADD", &config, attachment)?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL through the list in reverse, with the cached result (None: the runtime lost it).
    pub fn del(&self, list: &Value, attachment: &Attachment, cached: Option<&Value>) -> Result<(), PluginError> {
        for index in (0..plugins(list)).rev() {
            let config = self.plugin_config(list, index, cached);
            self.exec("DEL", &config, attachment)?;
        }
        Ok(())
    }

    /// CHECK through the list, with the cached result.
    pub fn check(&self, list: &Value, attachment: &Attachment, cached: &Value) -> Result<(), PluginError> {
        for index in 0..plugins(list) {
            let config = self.plugin_config(list, index, Some(cached));
            self.exec("CHECK", &config, attachment)?;
        }
        Ok(())
    }
}

fn plugins(list: &Value) -> usize {
    list["plugins"].as_array().map_or(0, Vec::len)
}

/// Waits for the plugin, reading its output as it comes (a chatty plugin cannot fill a pipe and
/// stall), and kills it after `limit`.
fn wait_bounded(child: std::process::Child, limit: Duration) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("plugin output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("a plugin ran longer than {limit:?}");
        }
    }
}

/// Runs `f` on a fresh thread inside network namespace `ns` (sockets made there stay there).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A TCP server in a namespace that answers every connection with `greeting`; stops on drop.
#[derive(Debug)]
pub struct Greeter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Greeter {
    /// Listens on 0.0.0.0:`port` in `ns`.
    pub fn start(ns: &str, port: u16, greeting: &str) -> Self {
        let listener = in_netns(ns, move || std::net::TcpListener::bind(("0.0.0.0", port)))
            .unwrap_or_else(|e| panic!("listen on {port}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let greeting = greeting.to_owned();
        std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.write_all(greeting.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { stop }
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Connects from `ns` to `to` and reads what the server says (bounded: 2 s).
pub fn hello(ns: &str, to: std::net::SocketAddr) -> Result<String, String> {
    in_netns(ns, move || {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .map_err(|e| format!("connect {to}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .map_err(|e| format!("read from {to}: {e}"))?;
        Ok(text)
    })
}
