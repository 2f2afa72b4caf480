//! The commands, and [`run`]: one invocation from environment and stdin to stdout and exit code.
//!
//! ```text
//!   env, stdin ─▶ CNI_COMMAND ─┬─ VERSION ─────────────────────────────▶ version result
//!                              └─ config::parse ─▶ ADD | DEL | CHECK | STATUS | GC
//!                                     │                 │
//!                                     │     AgentClient (unix socket) + Plumber (netlink)
//!                                     ▼                 ▼
//!                        error JSON (code, msg) ◀── Err | Ok ──▶ result JSON (ADD) or nothing
//! ```
//!
//! Only the result goes to stdout; logs go to stderr or the configured `logFile`.

mod add;
mod check;
mod del;
mod gc;
mod status;
mod version;

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::SystemTime;

use ipam_proto::agent::v1 as api;

use crate::agent_client::AgentClient;
use crate::agent_client::AgentError;
use crate::config;
use crate::config::LogLevel;
use crate::config::NetConf;
use crate::plumbing;
use crate::plumbing::Plumbed;
use crate::plumbing::PodLink;
use crate::spec::AttachmentEnv;
use crate::spec::CniError;
use crate::spec::Command;
use crate::spec::Env;
use crate::spec::ErrorCode;
use crate::spec::Version;

/// What one invocation prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The bytes for stdout: a result, a version result, an error result, or nothing.
    pub stdout: Vec<u8>,
    /// The process' exit code: 0 on success, 1 with an error result.
    pub exit_code: i32,
}

impl Outcome {
    /// Success with `stdout`.
    pub fn success(stdout: Vec<u8>) -> Self {
        Self { stdout, exit_code: 0 }
    }

    /// Failure: the error result in `version`'s format, exit code 1.
    pub fn failure(error: &CniError, version: Version) -> Self {
        Self {
            stdout: error.to_json(version),
            exit_code: 1,
        }
    }
}

/// Why plumbing failed, as the commands need it (the plumbing module's error, flattened so that
/// fakes can make one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PlumbFailure {
    /// What failed.
    pub message: String,
    /// Whether the pod's network namespace does not exist.
    pub netns_missing: bool,
    /// Whether the pod already has an interface of that name (an ADD repeated without a DEL):
    /// its lease is in use, so the failed ADD must not release it.
    pub interface_exists: bool,
}

impl From<plumbing::PlumbError> for PlumbFailure {
    fn from(error: plumbing::PlumbError) -> Self {
        Self {
            netns_missing: error.netns_missing(),
            interface_exists: matches!(error, plumbing::PlumbError::IfnameTaken { .. }),
            message: error.to_string(),
        }
    }
}

/// The pod's network plumbing: the kernel in production ([`KernelPlumber`]), a fake in tests.
pub trait Plumber {
    /// Creates the veth pair and configures both ends; undoes its own work when it fails.
    fn plumb(&self, link: &PodLink) -> impl Future<Output = Result<Plumbed, PlumbFailure>>;

    /// Removes what `plumb` made; absent things are fine.
    fn unplumb(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_veth: &str,
        ip: Option<Ipv4Addr>,
    ) -> impl Future<Output = Result<(), PlumbFailure>>;

    /// Verifies what `plumb` made is still there.
    fn check(&self, link: &PodLink) -> impl Future<Output = Result<(), PlumbFailure>>;
}

/// The real plumbing ([`crate::plumbing`], rtnetlink in the pod's namespace).
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelPlumber;

impl Plumber for KernelPlumber {
    async fn plumb(&self, link: &PodLink) -> Result<Plumbed, PlumbFailure> {
        Ok(plumbing::plumb(link).await?)
    }

    async fn unplumb(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_veth: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<(), PlumbFailure> {
        Ok(plumbing::unplumb(netns, ifname, host_veth, ip).await?)
    }

    async fn check(&self, link: &PodLink) -> Result<(), PlumbFailure> {
        Ok(plumbing::check(link).await?)
    }
}

/// Runs one CNI invocation with the kernel's plumbing. `env` reads a variable (`std::env::var` in
/// the binary); `stdin` is the network configuration.
pub async fn run(env: &impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    run_with(env, stdin, &KernelPlumber).await
}

/// Runs one CNI invocation with `plumber` doing the pod's plumbing.
pub async fn run_with(env: &impl Fn(&str) -> Option<String>, stdin: &[u8], plumber: &impl Plumber) -> Outcome {
    let env = Env::read(env);
    let hint = config::version_hint(stdin);
    let command = match env.command() {
        Ok(command) => command,
        Err(error) => {
            Logger::stderr(LogLevel::Error, "-", None).error(&error.msg);
            return Outcome::failure(&error, hint);
        }
    };
    if command == Command::Version {
        return Outcome::success(version::run(stdin));
    }
    let conf = match config::parse(stdin) {
        Ok(conf) => conf,
        Err(error) => {
            let error = CniError::from(error);
            Logger::stderr(LogLevel::Error, command.as_str(), env.container_id.as_deref()).error(&error.msg);
            return Outcome::failure(&error, hint);
        }
    };
    let log = Logger::open(&conf, command, env.container_id.as_deref());
    let ctx = Context {
        env: &env,
        conf: &conf,
        log: &log,
    };
    let version = conf.cni_version;
    let result = if matches!(command, Command::Status | Command::Gc) && !version.has_status_and_gc() {
        Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("{command} needs cniVersion 1.1.0 or later; the configuration has {version}"),
        ))
    } else {
        match command {
            Command::Add => add::run(&ctx, plumber).await,
            Command::Del => del::run(&ctx, plumber).await,
            Command::Check => check::run(&ctx, plumber).await,
            Command::Status => status::run(&ctx).await,
            Command::Gc => gc::run(&ctx).await,
            Command::Version => Ok(version::run(stdin)),
        }
    };
    match result {
        Ok(stdout) => {
            log.debug("done");
            Outcome::success(stdout)
        }
        Err(error) => {
            let details = error.details.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
            log.error(&format!("code {}: {}{details}", error.code.code(), error.msg));
            Outcome::failure(&error, version)
        }
    }
}

/// What a command runs with.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    /// The CNI variables.
    pub env: &'a Env,
    /// The configuration.
    pub conf: &'a NetConf,
    /// Where logs go.
    pub log: &'a Logger,
}

impl Context<'_> {
    /// Connects to the agent the configuration names.
    pub async fn agent(&self) -> Result<AgentClient, AgentError> {
        AgentClient::connect(&self.conf.plugin.socket, self.conf.plugin.timeout()).await
    }
}

/// The CNI error for a failed agent call in `what` (e.g. "ADD").
pub(crate) fn agent_error(what: &str, error: &AgentError) -> CniError {
    CniError::new(error.cni_code(), format!("{what}: {error}; {}", error.advice()))
}

/// The attachment of the agent's protocol.
pub(crate) fn attachment(env: &AttachmentEnv) -> api::Attachment {
    api::Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

/// The pod CNI_ARGS names; with `required`, namespace and name must be there.
pub(crate) fn pod_ref(env: &AttachmentEnv, required: bool) -> Result<api::PodRef, CniError> {
    let args = &env.args;
    let namespace = args.pod_namespace.clone().unwrap_or_default();
    let name = args.pod_name.clone().unwrap_or_default();
    if required && (namespace.is_empty() || name.is_empty()) {
        let missing: Vec<&str> = [("K8S_POD_NAMESPACE", &namespace), ("K8S_POD_NAME", &name)]
            .into_iter()
            .filter(|(_, v)| v.is_empty())
            .map(|(k, _)| k)
            .collect();
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "CNI_ARGS lacks {}; ipam-eks leases addresses to Kubernetes pods and needs the pod's namespace \
                 and name from the runtime",
                missing.join(" and ")
            ),
        ));
    }
    Ok(api::PodRef {
        namespace,
        name,
        uid: args.pod_uid.clone().unwrap_or_default(),
    })
}

/// Log lines to stderr or to the configured file, filtered by level.
#[derive(Debug)]
pub(crate) struct Logger {
    level: LogLevel,
    file: Option<File>,
    prefix: String,
}

impl Logger {
    fn stderr(level: LogLevel, command: &str, container: Option<&str>) -> Self {
        Self {
            level,
            file: None,
            prefix: prefix(command, container),
        }
    }

    fn open(conf: &NetConf, command: Command, container: Option<&str>) -> Self {
        let mut logger = Self::stderr(conf.plugin.log_level, command.as_str(), container);
        if let Some(path) = &conf.plugin.log_file {
            match std::fs::OpenOptions::new().create(true).append(true).open(path) {
                Ok(file) => logger.file = Some(file),
                // Logging must never fail a command: fall back to stderr.
                Err(error) => logger.warn(&format!(
                    "cannot open logFile {}: {error}; logging to stderr",
                    path.display()
                )),
            }
        }
        logger
    }

    fn write(&self, level: LogLevel, label: &str, message: &str) {
        if level > self.level {
            return;
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let line = format!("{now:.3} {label} {} {message}\n", self.prefix);
        let written = match &self.file {
            Some(file) => {
                let mut file: &File = file;
                file.write_all(line.as_bytes()).is_ok()
            }
            None => false,
        };
        if !written {
            eprint!("{line}");
        }
    }

    /// A failure.
    pub fn error(&self, message: &str) {
        self.write(LogLevel::Error, "ERROR", message);
    }

    /// Something undone or unexpected that the command got past.
    pub fn warn(&self, message: &str) {
        self.write(LogLevel::Warn, "WARN", message);
    }

    /// A command's outcome.
    pub fn info(&self, message: &str) {
        self.write(LogLevel::Info, "INFO", message);
    }

    /// Detail.
    pub fn debug(&self, message: &str) {
        self.write(LogLevel::Debug, "DEBUG", message);
    }
}

fn prefix(command: &str, container: Option<&str>) -> String {
    let container = container
        .map(|c| crate::spec::clip(c, 16))
        .unwrap_or_else(|| "-".to_owned());
    format!(
        "ipam-eks[{} pid={}] {command} container={container}:",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    )
}
