//! Fuzz: whatever the environment and stdin, `run` never panics and always answers with either
//! a valid result (exit 0) or a valid CNI error result (code, msg, cniVersion; exit 1).
//!
//! No agent listens on the sockets the configurations name, and the structured cases plumb
//! through a no-op plumber: nothing here touches the host's links even when run as root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;

use ipam_cni_plugin::Outcome;
use ipam_cni_plugin::PlumbFailure;
use ipam_cni_plugin::Plumber;
use ipam_cni_plugin::plumbing::Plumbed;
use ipam_cni_plugin::plumbing::PlumbedInterface;
use ipam_cni_plugin::plumbing::PodLink;
use ipam_cni_plugin::spec::ErrorCode;
use ipam_cni_plugin::spec::ErrorResult;
use ipam_cni_plugin::spec::SuccessResult;
use ipam_cni_plugin::spec::Version;
use ipam_cni_plugin::spec::VersionResult;
use ipam_proto::agent::v1 as api;
use ipam_proto::agent::v1::cni_backend_server::CniBackend;
use ipam_proto::agent::v1::cni_backend_server::CniBackendServer;
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest::test_runner::TestRunner;
use serde_json::Value;
use serde_json::json;
use tonic::Request;
use tonic::Response;
use tonic::Status;

const CASES: u32 = 512;

/// A socket nobody serves: every agent call fails at once.
const NO_AGENT: &str = "/nonexistent/ipam-eks-t40/agent.sock";

#[derive(Debug)]
struct NoopPlumber;

impl Plumber for NoopPlumber {
    async fn plumb(&self, link: &PodLink) -> Result<Plumbed, PlumbFailure> {
        Ok(Plumbed {
            host: PlumbedInterface {
                name: link.host_veth.clone(),
                mac: String::new(),
                sandbox: None,
            },
            container: PlumbedInterface {
                name: link.ifname.clone(),
                mac: String::new(),
                sandbox: None,
            },
        })
    }

    async fn unplumb(&self, _: Option<&Path>, _: &str, _: &str, _: Option<Ipv4Addr>) -> Result<(), PlumbFailure> {
        Ok(())
    }

    async fn check(&self, _: &PodLink) -> Result<(), PlumbFailure> {
        Ok(())
    }
}

/// The property: exit 0 with nothing, a result or a version result; or exit 1 with an error.
fn assert_valid(outcome: &Outcome, command: Option<&str>) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(&outcome.stdout).into_owned();
    match outcome.exit_code {
        0 => {
            if outcome.stdout.is_empty() {
                prop_assert!(
                    matches!(command, Some("DEL" | "CHECK" | "STATUS" | "GC")),
                    "empty success for {command:?}"
                );
                return Ok(());
            }
            let value: Value =
                serde_json::from_slice(&outcome.stdout).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            if command == Some("VERSION") {
                let version: VersionResult =
                    serde_json::from_value(value).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
                prop_assert_eq!(version.supported_versions, ["0.4.0", "1.0.0", "1.1.0"]);
            } else {
                prop_assert_eq!(command, Some("ADD"), "only ADD prints a result: {}", text);
                let version = value["cniVersion"].as_str().and_then(Version::parse);
                prop_assert!(version.is_some(), "result without a supported cniVersion: {}", text);
                SuccessResult::from_value(&value).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            }
        }
        1 => {
            let error: ErrorResult =
                serde_json::from_slice(&outcome.stdout).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            prop_assert!(ErrorCode::from_code(error.code).is_some(), "unknown code: {}", text);
            prop_assert!(!error.msg.is_empty(), "empty msg: {}", text);
            prop_assert!(Version::parse(&error.cni_version).is_some(), "bad cniVersion: {}", text);
        }
        other => prop_assert!(false, "exit code {other}: {text}"),
    }
    Ok(())
}

fn command() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => prop::sample::select(vec!["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"])
            .prop_map(|c| Some(c.to_owned())),
        1 => Just(None),
        1 => ".{0,12}".prop_map(Some),
    ]
}

/// Env values: mostly plausible, sometimes anything. Namespace paths never exist.
fn environment() -> impl Strategy<Value = BTreeMap<&'static str, String>> {
    let id = prop_oneof![4 => Just("c0ffee".to_owned()), 1 => ".{0,20}", 1 => "[a-z0-9][a-z0-9_.-]{0,30}"];
    let netns = prop_oneof![
        4 => Just("/nonexistent/ipam-eks-t40/netns".to_owned()),
        1 => Just(String::new()),
        1 => "/nonexistent/[a-z]{1,8}",
    ];
    let ifname = prop_oneof![4 => Just("eth0".to_owned()), 1 => ".{0,20}"];
    let args = prop_oneof![
        4 => Just("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx".to_owned()),
        1 => "[A-Za-z_=;0-9]{0,40}",
        1 => ".{0,40}",
    ];
    (command(), id, netns, ifname, args).prop_map(|(command, id, netns, ifname, args)| {
        let mut vars = BTreeMap::new();
        if let Some(command) = command {
            vars.insert("CNI_COMMAND", command);
        }
        vars.insert("CNI_CONTAINERID", id);
        vars.insert("CNI_NETNS", netns);
        vars.insert("CNI_IFNAME", ifname);
        vars.insert("CNI_ARGS", args);
        vars
    })
}

/// Arbitrary JSON values, shallow.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "name",
                    "mac",
                    "sandbox",
                    "address",
                    "gateway",
                    "interface",
                    "dst",
                    "gw",
                    "x"
                ]),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// Previous results: well-formed ones (with and without our record, with odd indices) and junk.
fn prev_result() -> impl Strategy<Value = Value> {
    let interface = (
        prop::sample::select(vec!["eth0", "enic440f455693", "ipam-eks:eth0", "lo", "x"]),
        prop::option::of(prop_oneof![Just("lease=812,table=3,mtu=9001".to_owned()), ".{0,24}"]),
        prop::option::of(prop_oneof![
            Just("/nonexistent/ipam-eks-t40/netns".to_owned()),
            Just(String::new())
        ]),
    )
        .prop_map(|(name, mac, sandbox)| json!({"name": name, "mac": mac, "sandbox": sandbox}));
    let ip = (
        prop_oneof![
            Just("10.0.3.7/32".to_owned()),
            Just("fd00::1/128".to_owned()),
            ".{0,18}"
        ],
        prop::option::of(prop_oneof![Just("169.254.1.1".to_owned()), ".{0,10}"]),
        prop::option::of(0u32..6),
    )
        .prop_map(
            |(address, gateway, interface)| json!({"address": address, "gateway": gateway, "interface": interface}),
        );
    prop_oneof![
        3 => (prop::collection::vec(interface, 0..5), prop::collection::vec(ip, 0..3))
            .prop_map(|(interfaces, ips)| json!({"cniVersion": "1.1.0", "interfaces": interfaces, "ips": ips})),
        1 => any_json(),
    ]
}

/// Configurations that are nearly right: mostly valid keys (so that the commands run), sometimes
/// a wrong one.
fn config() -> impl Strategy<Value = Value> {
    let version = prop_oneof![
        8 => prop::sample::select(vec!["0.4.0", "1.0.0", "1.1.0"]).prop_map(|v| json!(v)),
        1 => any_json(),
    ];
    // (type, ipam): main plugin, IPAM-only under bridge, or something else.
    let shape = prop_oneof![
        5 => Just((json!("ipam-eks"), None)),
        3 => Just((json!("bridge"), Some(json!({"type": "ipam-eks", "socket": NO_AGENT})))),
        1 => Just((json!("bridge"), Some(json!({"type": "ipam-eks", "subnet": "10.0.0.0/16"})))),
        1 => Just((json!("ipam-eks"), Some(json!({"type": "host-local"})))),
        1 => (any_json(), prop::option::of(any_json())),
    ];
    let socket = prop_oneof![8 => Just(json!(NO_AGENT)), 1 => Just(json!("relative.sock")), 1 => any_json()];
    let number = prop_oneof![Just(json!(1500)), Just(json!(0)), any_json()];
    let attachments = prop_oneof![
        3 => Just(json!([{"containerID": "c0ffee", "ifname": "eth0"}])),
        1 => Just(json!([])),
        1 => any_json(),
    ];
    let extras = prop::collection::btree_map(
        prop::sample::select(vec![
            "dns",
            "runtimeConfig",
            "capabilities",
            "args",
            "ipMasq",
            "bogus",
            "cni.dev/x",
            "logLevel",
        ]),
        any_json(),
        0..2,
    );
    (
        prop::option::weighted(0.95, version),
        shape,
        socket,
        prop::option::weighted(0.2, number.clone()),
        prop::option::weighted(0.2, number),
        prop::option::weighted(0.6, prev_result()),
        prop::option::weighted(0.8, attachments),
        prop::option::weighted(0.3, extras),
    )
        .prop_map(
            |(version, (plugin_type, ipam), socket, mtu, timeout, prev, attachments, extras)| {
                let mut config = serde_json::Map::new();
                config.insert("name".into(), json!("pods"));
                config.insert("type".into(), plugin_type);
                // Any string socket is one nobody serves.
                let socket = match socket {
                    Value::String(s) if s != "relative.sock" => json!(NO_AGENT),
                    other => other,
                };
                config.insert("socket".into(), socket);
                for (key, value) in [
                    ("cniVersion", version),
                    ("ipam", ipam),
                    ("mtu", mtu),
                    ("timeoutSeconds", timeout),
                    ("prevResult", prev),
                    ("cni.dev/valid-attachments", attachments),
                ] {
                    if let Some(value) = value {
                        config.insert(key.into(), value);
                    }
                }
                for (key, value) in extras.unwrap_or_default() {
                    config.insert(key.into(), value);
                }
                Value::Object(config)
            },
        )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn arbitrary_stdin_and_environment_never_panic() {
    let rt = runtime();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let stdin = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        ".{0,200}".prop_map(String::into_bytes),
    ];
    runner
        .run(&(environment(), stdin), |(vars, stdin)| {
            let env = |name: &str| vars.get(name).cloned();
            let outcome = rt.block_on(ipam_cni_plugin::run(&env, &stdin));
            assert_valid(&outcome, vars.get("CNI_COMMAND").map(String::as_str))
        })
        .expect("property");
}

#[test]
fn structured_but_wrong_configs_never_panic() {
    let rt = runtime();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(environment(), config()), |(vars, config)| {
            let env = |name: &str| vars.get(name).cloned();
            let stdin = config.to_string();
            let outcome = rt.block_on(ipam_cni_plugin::run_with(&env, stdin.as_bytes(), &NoopPlumber));
            assert_valid(&outcome, vars.get("CNI_COMMAND").map(String::as_str))
        })
        .expect("property");
}

/// The agent's answers for one case: a reply or a status with any code, for every call.
#[derive(Debug, Clone)]
struct Answers {
    add: Result<api::AddResponse, (i32, String)>,
    del: Result<bool, (i32, String)>,
    check: Result<(bool, String), (i32, String)>,
    status: Result<(bool, String), (i32, String)>,
    gc: Result<u32, (i32, String)>,
}

fn status((code, message): &(i32, String)) -> Status {
    Status::new(tonic::Code::from_i32(*code), message.clone())
}

#[derive(Debug, Clone)]
struct FuzzedAgent(Arc<Mutex<Option<Answers>>>);

impl FuzzedAgent {
    fn answers(&self) -> Result<Answers, Status> {
        self.0
            .lock()
            .expect("answers")
            .clone()
            .ok_or_else(|| Status::internal("no answers"))
    }
}

#[tonic::async_trait]
impl CniBackend for FuzzedAgent {
    async fn add(&self, _: Request<api::AddRequest>) -> Result<Response<api::AddResponse>, Status> {
        self.answers()?.add.map(Response::new).map_err(|e| status(&e))
    }

    async fn del(&self, _: Request<api::DelRequest>) -> Result<Response<api::DelResponse>, Status> {
        let released = self.answers()?.del.map_err(|e| status(&e))?;
        Ok(Response::new(api::DelResponse { released }))
    }

    async fn check(&self, _: Request<api::CheckRequest>) -> Result<Response<api::CheckResponse>, Status> {
        let (ok, reason) = self.answers()?.check.map_err(|e| status(&e))?;
        Ok(Response::new(api::CheckResponse { ok, reason }))
    }

    async fn status(&self, _: Request<api::StatusRequest>) -> Result<Response<api::StatusResponse>, Status> {
        let (ready, reason) = self.answers()?.status.map_err(|e| status(&e))?;
        Ok(Response::new(api::StatusResponse { ready, reason }))
    }

    async fn gc(&self, _: Request<api::GcRequest>) -> Result<Response<api::GcResponse>, Status> {
        let released = self.answers()?.gc.map_err(|e| status(&e))?;
        Ok(Response::new(api::GcResponse { released }))
    }
}

fn failure() -> impl Strategy<Value = (i32, String)> {
    (0i32..20, ".{0,24}")
}

fn add_response() -> impl Strategy<Value = api::AddResponse> {
    let ip = prop_oneof![3 => Just("10.0.3.7".to_owned()), 1 => ".{0,16}"];
    let gateway = prop_oneof![3 => Just("169.254.1.1".to_owned()), 1 => ".{0,16}"];
    let veth = prop_oneof![3 => Just("enic440f455693".to_owned()), 1 => ".{0,20}"];
    let next_hop = prop_oneof![Just("10.0.0.1".to_owned()), Just("169.254.1.1".to_owned()), ".{0,12}"];
    let route = (".{0,12}", next_hop).prop_map(|(dst, gw)| api::Route { dst, gw });
    let subnet = prop::sample::select(vec![
        "10.0.0.0/16",
        "10.0.3.7/32",
        "10.0.3.6/31",
        "0.0.0.0/0",
        "10.0.0.0/33",
        "",
        "x/8",
    ])
    .prop_map(str::to_owned);
    (
        (0u64..3, ip, 0u32..40, gateway),
        (prop::collection::vec(route, 0..3), any::<u32>(), veth, any::<u32>()),
        (".{0,12}", prop::option::of((any::<u32>(), ".{0,8}")), subnet),
    )
        .prop_map(
            |(
                (lease_id, ip, prefix_length, gateway),
                (routes, mtu, host_veth_name, route_table_id),
                (eni_id, branch, subnet_cidr),
            )| {
                api::AddResponse {
                    lease_id,
                    ip,
                    prefix_length,
                    gateway,
                    routes,
                    mtu,
                    host_veth_name,
                    route_table_id,
                    subnet_cidr,
                    eni_id,
                    security_group_ids: Vec::new(),
                    branch: branch.map(|(vlan_id, vlan_link)| api::BranchEni {
                        vlan_id,
                        vlan_link,
                        ..api::BranchEni::default()
                    }),
                }
            },
        )
}

fn answers() -> impl Strategy<Value = Answers> {
    (
        prop_oneof![3 => add_response().prop_map(Ok), 1 => failure().prop_map(Err)],
        prop_oneof![3 => any::<bool>().prop_map(Ok), 1 => failure().prop_map(Err)],
        prop_oneof![3 => (any::<bool>(), ".{0,16}").prop_map(Ok), 1 => failure().prop_map(Err)],
        prop_oneof![3 => (any::<bool>(), ".{0,16}").prop_map(Ok), 1 => failure().prop_map(Err)],
        prop_oneof![3 => any::<u32>().prop_map(Ok), 1 => failure().prop_map(Err)],
    )
        .prop_map(|(add, del, check, status, gc)| Answers {
            add,
            del,
            check,
            status,
            gc,
        })
}

#[test]
fn whatever_the_agent_answers_never_panics() {
    let rt = runtime();
    let socket = std::env::temp_dir().join(format!("ipam-eks-t40-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let agent = FuzzedAgent(Arc::default());
    let server = {
        let _guard = rt.enter();
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let service = CniBackendServer::new(agent.clone());
        rt.spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await;
        })
    };
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let mode = prop_oneof![
        Just(json!({"cniVersion": "1.1.0", "name": "pods", "type": "ipam-eks", "socket": socket})),
        Just(json!({"cniVersion": "0.4.0", "name": "pods", "type": "ipam-eks", "socket": socket})),
        Just(json!({
            "cniVersion": "1.1.0", "name": "br", "type": "bridge",
            "ipam": {"type": "ipam-eks", "socket": socket}
        })),
    ];
    let result = runner.run(
        &(environment(), mode, prop::option::of(prev_result()), answers()),
        |(vars, mut config, prev, answers)| {
            *agent.0.lock().expect("answers") = Some(answers);
            if let Some(prev) = prev {
                config["prevResult"] = prev;
            }
            config["cni.dev/valid-attachments"] = json!([]);
            let env = |name: &str| vars.get(name).cloned();
            let stdin = config.to_string();
            let outcome = rt.block_on(ipam_cni_plugin::run_with(&env, stdin.as_bytes(), &NoopPlumber));
            assert_valid(&outcome, vars.get("CNI_COMMAND").map(String::as_str))
        },
    );
    server.abort();
    let _ = std::fs::remove_file(&socket);
    result.expect("property");
}
