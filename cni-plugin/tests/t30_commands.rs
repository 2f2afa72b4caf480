//! Every command through `run`, against a fake `agent.v1.CniBackend` served on a unix socket in
//! the test (tonic) and a fake plumber; one test uses the kernel plumbing with a namespace that
//! does not exist (no privileges needed) to see the rollback.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

use ipam_cni_plugin::Outcome;
use ipam_cni_plugin::PlumbFailure;
use ipam_cni_plugin::Plumber;
use ipam_cni_plugin::plumbing::Plumbed;
use ipam_cni_plugin::plumbing::PlumbedInterface;
use ipam_cni_plugin::plumbing::PodLink;
use ipam_cni_plugin::spec::ErrorResult;
use ipam_cni_plugin::spec::SuccessResult;
use ipam_cni_plugin::spec::Version;
use ipam_proto::agent::v1 as api;
use ipam_proto::agent::v1::cni_backend_server::CniBackend;
use ipam_proto::agent::v1::cni_backend_server::CniBackendServer;
use serde_json::Value;
use serde_json::json;
use tonic::Request;
use tonic::Response;
use tonic::Status;

const LEASE: u64 = 812;
const POD_IP: &str = "10.0.3.7";
const NETNS: &str = "/var/run/netns/cni-test";
const HOST_VETH: &str = "enic440f455693";

// ---------------------------------------------------------------------------------------------
// The fake agent

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Add(api::AddRequest),
    Del(api::DelRequest),
    Check(api::CheckRequest),
    Status,
    Gc(api::GcRequest),
}

/// What the fake answers; `del` answers are taken in order, then `Ok(released)`.
#[derive(Debug)]
struct Script {
    add: Result<api::AddResponse, Status>,
    del: VecDeque<Result<api::DelResponse, Status>>,
    check: Result<api::CheckResponse, Status>,
    status: Result<api::StatusResponse, Status>,
    gc: Result<api::GcResponse, Status>,
}

fn add_response() -> api::AddResponse {
    api::AddResponse {
        lease_id: LEASE,
        ip: POD_IP.into(),
        prefix_length: 32,
        gateway: "169.254.1.1".into(),
        routes: vec![api::Route {
            dst: "0.0.0.0/0".into(),
            gw: "169.254.1.1".into(),
        }],
        mtu: 9001,
        host_veth_name: HOST_VETH.into(),
        route_table_id: 3,
        subnet_cidr: "10.0.0.0/16".into(),
        eni_id: "eni-0abc".into(),
        security_group_ids: vec!["sg-1".into()],
        branch: None,
    }
}

impl Default for Script {
    fn default() -> Self {
        Self {
            add: Ok(add_response()),
            del: VecDeque::new(),
            check: Ok(api::CheckResponse {
                ok: true,
                reason: String::new(),
            }),
            status: Ok(api::StatusResponse {
                ready: true,
                reason: String::new(),
            }),
            gc: Ok(api::GcResponse { released: 2 }),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct FakeAgent {
    calls: Arc<Mutex<Vec<Call>>>,
    script: Arc<Mutex<Script>>,
}

impl FakeAgent {
    fn record(&self, call: Call) {
        self.calls.lock().expect("calls").push(call);
    }
}

#[tonic::async_trait]
impl CniBackend for FakeAgent {
    async fn add(&self, request: Request<api::AddRequest>) -> Result<Response<api::AddResponse>, Status> {
        self.record(Call::Add(request.into_inner()));
        self.script.lock().expect("script").add.clone().map(Response::new)
    }

    async fn del(&self, request: Request<api::DelRequest>) -> Result<Response<api::DelResponse>, Status> {
        self.record(Call::Del(request.into_inner()));
        let next = self.script.lock().expect("script").del.pop_front();
        next.unwrap_or(Ok(api::DelResponse { released: true }))
            .map(Response::new)
    }

    async fn check(&self, request: Request<api::CheckRequest>) -> Result<Response<api::CheckResponse>, Status> {
        self.record(Call::Check(request.into_inner()));
        self.script.lock().expect("script").check.clone().map(Response::new)
    }

    async fn status(&self, _request: Request<api::StatusRequest>) -> Result<Response<api::StatusResponse>, Status> {
        self.record(Call::Status);
        self.script.lock().expect("script").status.clone().map(Response::new)
    }

    async fn gc(&self, request: Request<api::GcRequest>) -> Result<Response<api::GcResponse>, Status> {
        self.record(Call::Gc(request.into_inner()));
        self.script.lock().expect("script").gc.clone().map(Response::new)
    }
}

/// A socket path of its own for each test, removed at the end.
struct SocketPath(PathBuf);

impl SocketPath {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ipam-eks-t30-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The fake agent, serving on its socket until dropped.
struct Agent {
    fake: FakeAgent,
    socket: SocketPath,
    server: tokio::task::JoinHandle<()>,
}

impl Agent {
    fn start() -> Self {
        let fake = FakeAgent::default();
        let socket = SocketPath::new();
        let listener = tokio::net::UnixListener::bind(&socket.0).expect("bind the fake agent's socket");
        let service = CniBackendServer::new(fake.clone());
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
                .expect("fake agent");
        });
        Self { fake, socket, server }
    }

    fn script(&self, edit: impl FnOnce(&mut Script)) {
        edit(&mut self.fake.script.lock().expect("script"));
    }

    fn calls(&self) -> Vec<Call> {
        self.fake.calls.lock().expect("calls").clone()
    }

    fn socket(&self) -> &Path {
        &self.socket.0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A socket path nothing listens on.
fn nowhere() -> SocketPath {
    SocketPath::new()
}

// ---------------------------------------------------------------------------------------------
// The fake plumber

#[derive(Debug, Clone, PartialEq)]
enum PlumbCall {
    Plumb(PodLink),
    Unplumb {
        netns: Option<PathBuf>,
        ifname: String,
        host_veth: String,
        ip: Option<Ipv4Addr>,
    },
    Check(PodLink),
}

#[derive(Debug, Default)]
struct FakePlumber {
    calls: Mutex<Vec<PlumbCall>>,
    fail: Option<PlumbFailure>,
}

impl FakePlumber {
    fn failing(message: &str, netns_missing: bool) -> Self {
        Self {
            calls: Mutex::default(),
            fail: Some(PlumbFailure {
                message: message.into(),
                netns_missing,
                interface_exists: false,
            }),
        }
    }

    fn calls(&self) -> Vec<PlumbCall> {
        self.calls.lock().expect("calls").clone()
    }

    fn result(&self) -> Result<(), PlumbFailure> {
        self.fail.clone().map_or(Ok(()), Err)
    }
}

impl Plumber for FakePlumber {
    async fn plumb(&self, link: &PodLink) -> Result<Plumbed, PlumbFailure> {
        self.calls.lock().expect("calls").push(PlumbCall::Plumb(link.clone()));
        self.result()?;
        Ok(Plumbed {
            host: PlumbedInterface {
                name: link.host_veth.clone(),
                mac: "aa:bb:cc:00:00:01".into(),
                sandbox: None,
            },
            container: PlumbedInterface {
                name: link.ifname.clone(),
                mac: "aa:bb:cc:00:00:02".into(),
                sandbox: Some(link.netns.display().to_string()),
            },
        })
    }

    async fn unplumb(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_veth: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<(), PlumbFailure> {
        self.calls.lock().expect("calls").push(PlumbCall::Unplumb {
            netns: netns.map(Path::to_owned),
            ifname: ifname.into(),
            host_veth: host_veth.into(),
            ip,
        });
        self.result()
    }

    async fn check(&self, link: &PodLink) -> Result<(), PlumbFailure> {
        self.calls.lock().expect("calls").push(PlumbCall::Check(link.clone()));
        self.result()
    }
}

// ---------------------------------------------------------------------------------------------
// Invocations

fn vars(command: &str) -> BTreeMap<&'static str, String> {
    [
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", "c0ffee".to_owned()),
        ("CNI_NETNS", NETNS.to_owned()),
        ("CNI_IFNAME", "eth0".to_owned()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx;K8S_POD_INFRA_CONTAINER_ID=c0ffee;\
             K8S_POD_UID=u-1"
                .to_owned(),
        ),
        ("CNI_PATH", "/opt/cni/bin".to_owned()),
    ]
    .into_iter()
    .collect()
}

fn main_config(socket: &Path, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "pods",
        "type": "ipam-eks",
        "socket": socket,
        "timeoutSeconds": 5,
        "dns": {"nameservers": ["10.100.0.10"]}
    })
}

fn ipam_config(socket: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "br",
        "type": "bridge",
        "bridge": "cni0",
        "ipam": {"type": "ipam-eks", "socket": socket, "timeoutSeconds": 5}
    })
}

fn with(mut config: Value, key: &str, value: Value) -> Value {
    config[key] = value;
    config
}

async fn invoke(vars: &BTreeMap<&'static str, String>, config: &Value, plumber: &FakePlumber) -> Outcome {
    let env = |name: &str| vars.get(name).cloned();
    ipam_cni_plugin::run_with(&env, config.to_string().as_bytes(), plumber).await
}

fn ok_json(outcome: &Outcome) -> Value {
    assert_eq!(
        outcome.exit_code,
        0,
        "expected success, got {}",
        String::from_utf8_lossy(&outcome.stdout)
    );
    serde_json::from_slice(&outcome.stdout).expect("result JSON")
}

fn ok_empty(outcome: &Outcome) {
    assert_eq!(
        (outcome.exit_code, String::from_utf8_lossy(&outcome.stdout).into_owned()),
        (0, String::new())
    );
}

fn error(outcome: &Outcome) -> ErrorResult {
    assert_eq!(outcome.exit_code, 1);
    serde_json::from_slice(&outcome.stdout).expect("error JSON")
}

fn dels(agent: &Agent) -> Vec<api::DelRequest> {
    agent
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Del(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// ADD's result as the runtime hands it back: through a typed consumer (spec keys only).
async fn added(agent: &Agent, version: &str) -> Value {
    let plumber = FakePlumber::default();
    let result = ok_json(&invoke(&vars("ADD"), &main_config(agent.socket(), version), &plumber).await);
    let typed = SuccessResult::from_value(&result).expect("typed");
    typed.to_json(Version::parse(version).expect("version"))
}

// ---------------------------------------------------------------------------------------------
// ADD

#[tokio::test]
async fn add_leases_plumbs_and_answers_the_pod() {
    let agent = Agent::start();
    let plumber = FakePlumber::default();
    let result = ok_json(&invoke(&vars("ADD"), &main_config(agent.socket(), "1.1.0"), &plumber).await);

    assert_eq!(
        agent.calls(),
        vec![Call::Add(api::AddRequest {
            attachment: Some(api::Attachment {
                container_id: "c0ffee".into(),
                ifname: "eth0".into()
            }),
            netns_path: NETNS.into(),
            pod: Some(api::PodRef {
                namespace: "default".into(),
                name: "nginx".into(),
                uid: "u-1".into()
            }),
            cni_version: "1.1.0".into(),
            network_name: "pods".into(),
        })]
    );
    assert_eq!(
        plumber.calls(),
        vec![PlumbCall::Plumb(PodLink {
            netns: NETNS.into(),
            ifname: "eth0".into(),
            host_veth: HOST_VETH.into(),
            ip: POD_IP.parse().expect("ip"),
            gateway: "169.254.1.1".parse().expect("gw"),
            mtu: 9001,
        })]
    );
    assert_eq!(
        result,
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": HOST_VETH, "mac": "aa:bb:cc:00:00:01", "mtu": 9001},
                {"name": "eth0", "mac": "aa:bb:cc:00:00:02", "mtu": 9001, "sandbox": NETNS},
                {"name": "ipam-eks:eth0", "mac": "lease=812,table=3,eni=eni-0abc,vlan=0,mtu=9001"}
            ],
            "ips": [{"address": "10.0.3.7/32", "gateway": "169.254.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {"nameservers": ["10.100.0.10"]}
        })
    );
}

#[tokio::test]
async fn add_answers_in_the_configs_version_and_mtu() {
    let agent = Agent::start();
    agent.script(|s| {
        s.add = Ok(api::AddResponse {
            route_table_id: 107,
            ..add_response()
        });
    });
    let plumber = FakePlumber::default();
    let config = with(main_config(agent.socket(), "0.4.0"), "mtu", json!(1500));
    let result = ok_json(&invoke(&vars("ADD"), &config, &plumber).await);
    assert_eq!(result["cniVersion"], "0.4.0");
    assert_eq!(result["ips"][0]["version"], "4");
    assert!(result["interfaces"][0].get("mtu").is_none());
    assert_eq!(
        result["interfaces"][2]["mac"],
        "lease=812,table=107,eni=eni-0abc,vlan=0,mtu=1500"
    );
    assert!(matches!(&plumber.calls()[0], PlumbCall::Plumb(link) if link.mtu == 1500));

    let result = ok_json(&invoke(&vars("ADD"), &main_config(agent.socket(), "1.0.0"), &plumber).await);
    assert_eq!(result["cniVersion"], "1.0.0");
    assert!(result["ips"][0].get("version").is_none());
}

#[tokio::test]
async fn add_in_a_chain_keeps_the_previous_result() {
    let agent = Agent::start();
    let plumber = FakePlumber::default();
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "dummy0", "sandbox": "/x"}],
        "ips": [{"address": "192.168.9.9/24", "interface": 0}],
        "dns": {}
    });
    let config = with(main_config(agent.socket(), "1.1.0"), "prevResult", prev);
    let result = ok_json(&invoke(&vars("ADD"), &config, &plumber).await);
    assert_eq!(result["interfaces"][0]["name"], "dummy0");
    assert_eq!(result["interfaces"][2]["name"], "eth0");
    assert_eq!(result["ips"][0]["address"], "192.168.9.9/24");
    assert_eq!(
        result["ips"][1],
        json!({"address": "10.0.3.7/32", "gateway": "169.254.1.1", "interface": 2})
    );
}

#[tokio::test]
async fn add_in_ipam_only_mode_answers_addresses_and_plumbs_nothing() {
    let agent = Agent::start();
    let plumber = FakePlumber::default();
    let result = ok_json(&invoke(&vars("ADD"), &ipam_config(agent.socket()), &plumber).await);
    // The subnet's prefix and first address: an on-link gateway for bridge and ptp.
    assert_eq!(
        result,
        json!({
            "cniVersion": "1.1.0",
            "ips": [{"address": "10.0.3.7/16", "gateway": "10.0.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    );
    assert!(plumber.calls().is_empty());
    assert!(matches!(&agent.calls()[..], [Call::Add(_)]));

    // Without a subnet holding the address, the agent's own shape is all there is.
    agent.script(|s| {
        s.add = Ok(api::AddResponse {
            subnet_cidr: "192.168.0.0/24".into(),
            ..add_response()
        });
    });
    let result = ok_json(&invoke(&vars("ADD"), &ipam_config(agent.socket()), &plumber).await);
    assert_eq!(
        result["ips"][0],
        json!({"address": "10.0.3.7/32", "gateway": "169.254.1.1"})
    );
    assert_eq!(result["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}));
}

#[tokio::test]
async fn add_with_the_agent_unreachable_is_try_again_later() {
    let socket = nowhere();
    let plumber = FakePlumber::default();
    for config in [main_config(&socket.0, "1.1.0"), ipam_config(&socket.0)] {
        let e = error(&invoke(&vars("ADD"), &config, &plumber).await);
        assert_eq!(e.code, 11, "{e:?}");
        assert_eq!(e.cni_version, "1.1.0");
        assert!(
            e.msg.contains("cannot reach the node agent") && e.msg.contains("retry"),
            "{}",
            e.msg
        );
    }
    assert!(plumber.calls().is_empty());
}

#[tokio::test]
async fn add_maps_the_agents_codes() {
    let agent = Agent::start();
    let plumber = FakePlumber::default();
    for (status, code) in [
        (Status::resource_exhausted("no warm address"), 11),
        (Status::unavailable("not registered"), 11),
        (Status::deadline_exceeded("slow"), 11),
        (Status::invalid_argument("netns_path is empty"), 4),
        (Status::failed_precondition("bound to another pod"), 100),
        (Status::internal("boom"), 101),
    ] {
        let message = status.message().to_owned();
        agent.script(|s| s.add = Err(status));
        let e = error(&invoke(&vars("ADD"), &main_config(agent.socket(), "1.1.0"), &plumber).await);
        assert_eq!(e.code, code, "{e:?}");
        assert!(e.msg.contains(&message), "{}", e.msg);
    }
    assert!(plumber.calls().is_empty());
    assert!(dels(&agent).is_empty(), "nothing leased, nothing to roll back");
}

#[tokio::test]
async fn add_without_the_pod_in_cni_args_is_code_4_and_asks_nothing() {
    let agent = Agent::start();
    let mut vars = vars("ADD");
    vars.insert("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=nginx".into());
    let e = error(&invoke(&vars, &main_config(agent.socket(), "1.1.0"), &FakePlumber::default()).await);
    assert_eq!(e.code, 4);
    assert!(e.msg.contains("K8S_POD_NAMESPACE"), "{}", e.msg);
    vars.remove("CNI_NETNS");
    let e = error(&invoke(&vars, &main_config(agent.socket(), "1.1.0"), &FakePlumber::default()).await);
    assert_eq!(e.code, 4);
    assert!(e.msg.contains("CNI_NETNS"), "{}", e.msg);
    assert!(agent.calls().is_empty());
}

#[tokio::test]
async fn add_whose_plumbing_fails_rolls_the_lease_back() {
    let agent = Agent::start();
    for (plumber, code) in [
        (FakePlumber::failing("the namespace is gone", true), 3),
        (FakePlumber::failing("EEXIST eth0", false), 102),
    ] {
        let e = error(&invoke(&vars("ADD"), &main_config(agent.socket(), "1.1.0"), &plumber).await);
        assert_eq!(e.code, code, "{e:?}");
        assert!(e.msg.contains("lease 812 was released"), "{}", e.msg);
        assert!(e.details.as_deref().is_some_and(|d| !d.is_empty()));
    }
    let rolled_back = dels(&agent);
    assert_eq!(rolled_back.len(), 2);
    for del in rolled_back {
        assert_eq!(del.lease_id, LEASE);
        assert_eq!(del.ip, POD_IP);
        assert_eq!(del.attachment.map(|a| a.container_id), Some("c0ffee".into()));
    }
}

#[tokio::test]
async fn a_repeated_add_whose_interface_exists_keeps_the_lease() {
    let agent = Agent::start();
    let plumber = FakePlumber {
        calls: Mutex::default(),
        fail: Some(PlumbFailure {
            message: "eth0 already exists".into(),
            netns_missing: false,
            interface_exists: true,
        }),
    };
    let e = error(&invoke(&vars("ADD"), &main_config(agent.socket(), "1.1.0"), &plumber).await);
    assert_eq!(e.code, 102, "{e:?}");
    assert!(e.msg.contains("lease 812 is kept"), "{}", e.msg);
    assert!(dels(&agent).is_empty(), "the lease in use must not be released");
}

#[tokio::test]
async fn a_branch_eni_pod_is_refused_until_its_plumbing_exists() {
    let agent = Agent::start();
    agent.script(|s| {
        s.add = Ok(api::AddResponse {
            branch: Some(api::BranchEni {
                vlan_id: 7,
                ..api::BranchEni::default()
            }),
            ..add_response()
        });
    });
    let plumber = FakePlumber::default();
    let e = error(&invoke(&vars("ADD"), &main_config(agent.socket(), "1.1.0"), &plumber).await);
    assert!(e.msg.contains("branch ENI"), "{}", e.msg);
    assert!(plumber.calls().is_empty(), "nothing plumbed");
    assert_eq!(dels(&agent).len(), 1, "the lease is released again");
}

#[tokio::test]
async fn add_whose_rollback_fails_too_says_so() {
    let agent = Agent::start();
    agent.script(|s| s.del.push_back(Err(Status::unavailable("server down"))));
    let plumber = FakePlumber::failing("the namespace is gone", true);
    let e = error(&invoke(&vars("ADD"), &main_config(agent.socket(), "1.1.0"), &plumber).await);
    assert_eq!(e.code, 102, "not 3: the runtime must still DEL");
    assert!(e.msg.contains("releasing lease 812 failed too"), "{}", e.msg);
}

#[tokio::test]
async fn add_with_the_kernel_plumbing_and_no_namespace_rolls_back() {
    let agent = Agent::start();
    let mut vars = vars("ADD");
    vars.insert("CNI_NETNS", "/nonexistent/ipam-eks-t30/netns".into());
    let env = |name: &str| vars.get(name).cloned();
    let config = main_config(agent.socket(), "1.1.0").to_string();
    let e = error(&ipam_cni_plugin::run(&env, config.as_bytes()).await);
    assert!(matches!(e.code, 3 | 102), "{e:?}");
    let rolled_back = dels(&agent);
    assert_eq!(rolled_back.len(), 1, "{:?}", agent.calls());
    assert_eq!(rolled_back[0].lease_id, LEASE);
}

#[tokio::test]
async fn add_with_an_unusable_answer_rolls_back() {
    let agent = Agent::start();
    agent.script(|s| {
        s.add = Ok(api::AddResponse {
            ip: "not-an-ip".into(),
            ..add_response()
        });
    });
    let plumber = FakePlumber::default();
    let e = error(&invoke(&vars("ADD"), &main_config(agent.socket(), "1.1.0"), &plumber).await);
    assert_eq!(e.code, 101);
    assert!(plumber.calls().is_empty());
    assert_eq!(dels(&agent).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// DEL

#[tokio::test]
async fn del_releases_the_lease_of_prev_result_and_unplumbs() {
    let agent = Agent::start();
    let prev = added(&agent, "1.1.0").await;
    let plumber = FakePlumber::default();
    let config = with(main_config(agent.socket(), "1.1.0"), "prevResult", prev);
    ok_empty(&invoke(&vars("DEL"), &config, &plumber).await);
    assert_eq!(
        dels(&agent),
        vec![api::DelRequest {
            attachment: Some(api::Attachment {
                container_id: "c0ffee".into(),
                ifname: "eth0".into()
            }),
            lease_id: LEASE,
            pod: Some(api::PodRef {
                namespace: "default".into(),
                name: "nginx".into(),
                uid: "u-1".into()
            }),
            ip: POD_IP.into(),
        }]
    );
    assert_eq!(
        plumber.calls(),
        vec![PlumbCall::Unplumb {
            netns: Some(NETNS.into()),
            ifname: "eth0".into(),
            host_veth: HOST_VETH.into(),
            ip: Some(POD_IP.parse().expect("ip")),
        }]
    );
}

#[tokio::test]
async fn del_round_trips_in_every_version() {
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let agent = Agent::start();
        let prev = added(&agent, version).await;
        let config = with(main_config(agent.socket(), version), "prevResult", prev);
        ok_empty(&invoke(&vars("DEL"), &config, &FakePlumber::default()).await);
        assert_eq!(dels(&agent).first().map(|d| d.lease_id), Some(LEASE), "{version}");
    }
}

#[tokio::test]
async fn del_with_the_agent_down_still_unplumbs_and_succeeds() {
    let agent = Agent::start();
    let prev = added(&agent, "1.1.0").await;
    let socket = nowhere();
    let plumber = FakePlumber::default();
    let config = with(main_config(&socket.0, "1.1.0"), "prevResult", prev);
    ok_empty(&invoke(&vars("DEL"), &config, &plumber).await);
    assert!(
        matches!(&plumber.calls()[..], [PlumbCall::Unplumb { host_veth, .. }] if host_veth == HOST_VETH),
        "{:?}",
        plumber.calls()
    );
    // An agent that answers UNAVAILABLE is the same.
    agent.script(|s| s.del.push_back(Err(Status::unavailable("server down"))));
    let config = with(
        main_config(agent.socket(), "1.1.0"),
        "prevResult",
        added(&agent, "1.1.0").await,
    );
    ok_empty(&invoke(&vars("DEL"), &config, &FakePlumber::default()).await);
}

#[tokio::test]
async fn del_is_idempotent_and_needs_no_prev_result_or_netns() {
    let agent = Agent::start();
    agent.script(|s| s.del.extend((0..2).map(|_| Ok(api::DelResponse { released: false }))));
    let mut vars = vars("DEL");
    vars.remove("CNI_NETNS");
    let plumber = FakePlumber::default();
    for _ in 0..2 {
        ok_empty(&invoke(&vars, &main_config(agent.socket(), "1.1.0"), &plumber).await);
    }
    let dels = dels(&agent);
    assert_eq!(dels.len(), 2);
    assert!(dels.iter().all(|d| d.lease_id == 0 && d.ip.is_empty()));
    assert!(
        plumber.calls().is_empty(),
        "no namespace, no host veth: nothing to unplumb"
    );
}

#[tokio::test]
async fn del_with_a_stale_lease_releases_by_attachment() {
    let agent = Agent::start();
    let prev = added(&agent, "1.1.0").await;
    agent.script(|s| {
        s.del
            .push_back(Err(Status::failed_precondition("lease 812 is another attachment's")))
    });
    let config = with(main_config(agent.socket(), "1.1.0"), "prevResult", prev);
    ok_empty(&invoke(&vars("DEL"), &config, &FakePlumber::default()).await);
    let leases: Vec<u64> = dels(&agent).iter().map(|d| d.lease_id).collect();
    assert_eq!(leases, [LEASE, 0]);
}

#[tokio::test]
async fn del_failures_that_are_not_transient_are_reported_after_unplumbing() {
    let agent = Agent::start();
    let prev = added(&agent, "1.1.0").await;
    agent.script(|s| s.del.push_back(Err(Status::internal("boom"))));
    let config = with(main_config(agent.socket(), "1.1.0"), "prevResult", prev.clone());
    let plumber = FakePlumber::default();
    assert_eq!(error(&invoke(&vars("DEL"), &config, &plumber).await).code, 101);
    assert_eq!(plumber.calls().len(), 1, "unplumbed anyway");

    let plumber = FakePlumber::failing("EBUSY", false);
    let e = error(&invoke(&vars("DEL"), &config, &plumber).await);
    assert_eq!(e.code, 102);
    assert_eq!(e.details.as_deref(), Some("EBUSY"));
    // A namespace that is gone is not a failure: DEL is best effort.
    let plumber = FakePlumber::failing("gone", true);
    ok_empty(&invoke(&vars("DEL"), &config, &plumber).await);
}

#[tokio::test]
async fn del_removes_no_host_link_that_is_not_ours() {
    let agent = Agent::start();
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0"}, {"name": "eth0", "sandbox": NETNS}],
        "ips": [{"address": "10.0.3.7/32", "interface": 1}]
    });
    let plumber = FakePlumber::default();
    let config = with(main_config(agent.socket(), "1.1.0"), "prevResult", prev);
    ok_empty(&invoke(&vars("DEL"), &config, &plumber).await);
    assert!(
        matches!(&plumber.calls()[..], [PlumbCall::Unplumb { host_veth, .. }] if host_veth.is_empty()),
        "{:?}",
        plumber.calls()
    );
}

#[tokio::test]
async fn del_with_a_malformed_prev_result_still_deletes() {
    let agent = Agent::start();
    let config = with(
        main_config(agent.socket(), "1.1.0"),
        "prevResult",
        json!({"ips": "nope"}),
    );
    ok_empty(&invoke(&vars("DEL"), &config, &FakePlumber::default()).await);
    assert_eq!(dels(&agent).first().map(|d| d.lease_id), Some(0));
}

#[tokio::test]
async fn del_in_ipam_only_mode_releases_and_plumbs_nothing() {
    let agent = Agent::start();
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": NETNS}],
        "ips": [{"address": "10.0.3.7/32", "gateway": "169.254.1.1", "interface": 2}]
    });
    let plumber = FakePlumber::default();
    let config = with(ipam_config(agent.socket()), "prevResult", prev);
    ok_empty(&invoke(&vars("DEL"), &config, &plumber).await);
    let dels = dels(&agent);
    assert_eq!((dels[0].lease_id, dels[0].ip.as_str()), (0, POD_IP));
    assert!(plumber.calls().is_empty());
}

// ---------------------------------------------------------------------------------------------
// CHECK

#[tokio::test]
async fn check_asks_the_agent_and_the_plumbing() {
    let agent = Agent::start();
    let prev = added(&agent, "1.1.0").await;
    let plumber = FakePlumber::default();
    let config = with(main_config(agent.socket(), "1.1.0"), "prevResult", prev);
    ok_empty(&invoke(&vars("CHECK"), &config, &plumber).await);
    assert!(agent.calls().contains(&Call::Check(api::CheckRequest {
        attachment: Some(api::Attachment {
            container_id: "c0ffee".into(),
            ifname: "eth0".into()
        }),
        lease_id: LEASE,
        ip: POD_IP.into(),
    })));
    assert_eq!(
        plumber.calls(),
        vec![PlumbCall::Check(PodLink {
            netns: NETNS.into(),
            ifname: "eth0".into(),
            host_veth: HOST_VETH.into(),
            ip: POD_IP.parse().expect("ip"),
            gateway: "169.254.1.1".parse().expect("gw"),
            mtu: 9001,
        })]
    );
}

#[tokio::test]
async fn check_fails_when_either_side_is_wrong() {
    let agent = Agent::start();
    let prev = added(&agent, "1.1.0").await;
    let config = with(main_config(agent.socket(), "1.1.0"), "prevResult", prev.clone());

    let e = error(&invoke(&vars("CHECK"), &config, &FakePlumber::failing("no route", false)).await);
    assert_eq!(e.code, 103);
    let e = error(&invoke(&vars("CHECK"), &config, &FakePlumber::failing("gone", true)).await);
    assert_eq!(e.code, 3);

    agent.script(|s| {
        s.check = Ok(api::CheckResponse {
            ok: false,
            reason: "lease 812 is cooling".into(),
        });
    });
    let plumber = FakePlumber::default();
    let e = error(&invoke(&vars("CHECK"), &config, &plumber).await);
    assert_eq!(e.code, 103);
    assert!(e.msg.contains("lease 812 is cooling"), "{}", e.msg);
    assert!(plumber.calls().is_empty());

    let socket = nowhere();
    let down = with(main_config(&socket.0, "1.1.0"), "prevResult", prev);
    assert_eq!(
        error(&invoke(&vars("CHECK"), &down, &FakePlumber::default()).await).code,
        11
    );
}

#[tokio::test]
async fn check_needs_a_prev_result_with_our_record() {
    let agent = Agent::start();
    let e = error(
        &invoke(
            &vars("CHECK"),
            &main_config(agent.socket(), "1.1.0"),
            &FakePlumber::default(),
        )
        .await,
    );
    assert_eq!(e.code, 7);
    assert!(e.msg.contains("prevResult"), "{}", e.msg);
    let foreign = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.0.3.7/32"}]});
    let config = with(main_config(agent.socket(), "1.1.0"), "prevResult", foreign);
    let e = error(&invoke(&vars("CHECK"), &config, &FakePlumber::default()).await);
    assert_eq!(e.code, 7);
    assert!(e.msg.contains("ipam-eks:eth0"), "{}", e.msg);
    assert!(agent.calls().is_empty());
}

// ---------------------------------------------------------------------------------------------
// STATUS, GC, VERSION

#[tokio::test]
async fn status_is_the_agents_readiness() {
    let agent = Agent::start();
    let config = main_config(agent.socket(), "1.1.0");
    ok_empty(&invoke(&vars("STATUS"), &config, &FakePlumber::default()).await);

    agent.script(|s| {
        s.status = Ok(api::StatusResponse {
            ready: false,
            reason: "not registered with the IPAM server".into(),
        });
    });
    let e = error(&invoke(&vars("STATUS"), &config, &FakePlumber::default()).await);
    assert_eq!(e.code, 50);
    assert!(e.msg.contains("not registered with the IPAM server"), "{}", e.msg);

    let socket = nowhere();
    let e = error(
        &invoke(
            &vars("STATUS"),
            &main_config(&socket.0, "1.1.0"),
            &FakePlumber::default(),
        )
        .await,
    );
    assert_eq!(e.code, 50);
    assert!(e.msg.contains("cannot reach the node agent"), "{}", e.msg);
}

#[tokio::test]
async fn status_and_gc_need_1_1_0() {
    let agent = Agent::start();
    for command in ["STATUS", "GC"] {
        let e = error(
            &invoke(
                &vars(command),
                &main_config(agent.socket(), "1.0.0"),
                &FakePlumber::default(),
            )
            .await,
        );
        assert_eq!(e.code, 1, "{command}");
        assert_eq!(e.cni_version, "1.0.0");
    }
    assert!(agent.calls().is_empty());
}

#[tokio::test]
async fn gc_as_an_ipam_plugin_releases_nothing() {
    let agent = Agent::start();
    let config = with(
        ipam_config(agent.socket()),
        "cni.dev/valid-attachments",
        json!([{"containerID": "a1", "ifname": "net1"}]),
    );
    let vars: BTreeMap<_, _> = [
        ("CNI_COMMAND", "GC".to_owned()),
        ("CNI_PATH", "/opt/cni/bin".to_owned()),
    ]
    .into_iter()
    .collect();
    ok_empty(&invoke(&vars, &config, &FakePlumber::default()).await);
    assert!(
        agent.calls().is_empty(),
        "another network's valid list must not free this node's leases"
    );
}

#[tokio::test]
async fn gc_passes_the_valid_attachments() {
    let agent = Agent::start();
    let attachments = json!([{"containerID": "a1", "ifname": "eth0"}, {"containerID": "b2", "ifname": "net1"}]);
    let config = with(
        main_config(agent.socket(), "1.1.0"),
        "cni.dev/valid-attachments",
        attachments,
    );
    let vars: BTreeMap<_, _> = [
        ("CNI_COMMAND", "GC".to_owned()),
        ("CNI_PATH", "/opt/cni/bin".to_owned()),
    ]
    .into_iter()
    .collect();
    ok_empty(&invoke(&vars, &config, &FakePlumber::default()).await);
    assert_eq!(
        agent.calls(),
        vec![Call::Gc(api::GcRequest {
            valid_attachments: vec![
                api::Attachment {
                    container_id: "a1".into(),
                    ifname: "eth0".into()
                },
                api::Attachment {
                    container_id: "b2".into(),
                    ifname: "net1".into()
                },
            ]
        })]
    );

    // Without the list nothing is released.
    let e = error(&invoke(&vars, &main_config(agent.socket(), "1.1.0"), &FakePlumber::default()).await);
    assert_eq!(e.code, 7);
    assert_eq!(agent.calls().len(), 1);

    let socket = nowhere();
    let down = with(main_config(&socket.0, "1.1.0"), "cni.dev/valid-attachments", json!([]));
    assert_eq!(error(&invoke(&vars, &down, &FakePlumber::default()).await).code, 11);
    agent.script(|s| s.gc = Err(Status::unavailable("server down")));
    let config = with(
        main_config(agent.socket(), "1.1.0"),
        "cni.dev/valid-attachments",
        json!([]),
    );
    assert_eq!(error(&invoke(&vars, &config, &FakePlumber::default()).await).code, 11);
}

#[tokio::test]
async fn version_needs_no_config_and_no_agent() {
    let vars: BTreeMap<_, _> = [("CNI_COMMAND", "VERSION".to_owned())].into_iter().collect();
    let env = |name: &str| vars.get(name).cloned();
    for (stdin, asked) in [
        (&br#"{"cniVersion":"1.0.0"}"#[..], "1.0.0"),
        (b"", "1.1.0"),
        (b"junk", "1.1.0"),
    ] {
        let outcome = ipam_cni_plugin::run(&env, stdin).await;
        assert_eq!(
            ok_json(&outcome),
            json!({"cniVersion": asked, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
    }
}

#[tokio::test]
async fn a_bad_command_or_config_is_an_error_result() {
    let plumber = FakePlumber::default();
    let socket = nowhere();
    let mut bad = vars("ADD");
    bad.insert("CNI_COMMAND", "FROB".into());
    let e = error(&invoke(&bad, &main_config(&socket.0, "0.4.0"), &plumber).await);
    assert_eq!((e.code, e.cni_version.as_str()), (4, "0.4.0"));
    let e = error(
        &invoke(
            &vars("ADD"),
            &with(main_config(&socket.0, "1.1.0"), "bogus", json!(1)),
            &plumber,
        )
        .await,
    );
    assert_eq!(e.code, 2);
    assert!(e.msg.contains("bogus"), "{}", e.msg);
}

#[tokio::test]
async fn logs_go_to_the_log_file_not_stdout() {
    let agent = Agent::start();
    let log = std::env::temp_dir().join(format!("ipam-eks-t30-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let config = with(main_config(agent.socket(), "1.1.0"), "logFile", json!(log));
    let config = with(config, "logLevel", json!("debug"));
    let result = ok_json(&invoke(&vars("ADD"), &config, &FakePlumber::default()).await);
    assert_eq!(result["ips"][0]["address"], "10.0.3.7/32");
    let written = std::fs::read_to_string(&log).expect("log file");
    let _ = std::fs::remove_file(&log);
    assert!(
        written.contains("ADD default/nginx eth0 lease 812 ip 10.0.3.7"),
        "{written}"
    );
    assert!(written.contains("DEBUG"), "{written}");
}

#[test]
fn the_binary_prints_only_the_result_and_exits_by_the_spec() {
    use std::io::Write;
    use std::process::Stdio;

    let run = |command: &str, stdin: &[u8]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ipam-eks"))
            .env_clear()
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ipam-eks");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write stdin");
        child.wait_with_output().expect("ipam-eks output")
    };
    let out = run("VERSION", br#"{"cniVersion":"1.1.0"}"#);
    assert_eq!(out.status.code(), Some(0));
    let version: Value = serde_json::from_slice(&out.stdout).expect("version JSON");
    assert_eq!(version["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));

    let socket = nowhere();
    let out = run("STATUS", main_config(&socket.0, "1.1.0").to_string().as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let e: ErrorResult = serde_json::from_slice(&out.stdout).expect("only the error JSON on stdout");
    assert_eq!(e.code, 50);
    assert!(!out.stderr.is_empty(), "the log line goes to stderr");
}
