//! The Kubernetes module without a cluster: the watchers against a fake API server (kube's client
//! over `tower_test::mock`, answering list and watch calls with the JSON the API server sends), and
//! the file source against YAML fixtures (`tests/kube_fixtures/`) and temporary directories.
//!
//! Every wait is bounded by [`WAIT`].

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Request;
use http::Response;
use ipam_core::policy::security_groups_for;
use ipam_node_agent::kube::ClusterView;
use ipam_node_agent::kube::EniConfigSelector;
use ipam_node_agent::kube::FilesError;
use ipam_node_agent::kube::files::load_sources;
use ipam_node_agent::kube::load_files;
use ipam_node_agent::kube::watch_cluster;
use ipam_node_agent::kube::watch_files;
use kube::Client;
use kube::client::Body;
use serde_json::Value;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::sync::watch;

/// The longest any test waits for the view to converge. Generous: a recovery waits out
/// kube-runtime's first backoff (up to 0.8 s) and the machine may be busy building.
const WAIT: Duration = Duration::from_secs(20);
/// The node the agent runs on.
const NODE: &str = "node-a";
/// The default ENIConfig key.
const ENI_KEY: &str = "k8s.amazonaws.com/eniConfig";

fn custom_networking() -> EniConfigSelector {
    EniConfigSelector {
        custom_networking: true,
        ..EniConfigSelector::default()
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

// ------------------------------------------------------------------------------------------------
// A fake API server
// ------------------------------------------------------------------------------------------------

/// The collections the agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Res {
    Nodes,
    EniConfigs,
    SgPolicies,
    Pods,
    ServiceAccounts,
}

impl Res {
    const ALL: [Self; 5] = [
        Self::Nodes,
        Self::EniConfigs,
        Self::SgPolicies,
        Self::Pods,
        Self::ServiceAccounts,
    ];

    fn path(self) -> &'static str {
        match self {
            Self::Nodes => "/api/v1/nodes",
            Self::EniConfigs => "/apis/crd.k8s.amazonaws.com/v1alpha1/eniconfigs",
            Self::SgPolicies => "/apis/vpcresources.k8s.aws/v1beta1/securitygrouppolicies",
            Self::Pods => "/api/v1/pods",
            Self::ServiceAccounts => "/api/v1/serviceaccounts",
        }
    }

    /// (apiVersion, kind) of the list this collection answers with.
    fn list_type(self) -> (&'static str, &'static str) {
        match self {
            Self::Nodes => ("v1", "NodeList"),
            Self::EniConfigs => ("crd.k8s.amazonaws.com/v1alpha1", "ENIConfigList"),
            Self::SgPolicies => ("vpcresources.k8s.aws/v1beta1", "SecurityGroupPolicyList"),
            Self::Pods => ("v1", "PodList"),
            // The watcher asks for metadata only.
            Self::ServiceAccounts => ("meta.k8s.io/v1", "PartialObjectMetadataList"),
        }
    }
}

/// A list call or a watch call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    List,
    Watch,
}

/// One scripted answer.
#[derive(Debug)]
struct Reply {
    call: Call,
    status: u16,
    body: Vec<u8>,
}

/// Answers each collection's calls, in order, with what the test scripts for it. A call with
/// nothing scripted waits (as a watch with no events does); a call of the wrong type (a list
/// where a watch was scripted) is answered 500 and recorded as a problem.
struct FakeApi {
    scripts: HashMap<Res, mpsc::UnboundedSender<Reply>>,
    requests: Arc<Mutex<Vec<String>>>,
    problems: Arc<Mutex<Vec<String>>>,
}

impl FakeApi {
    fn start() -> (Client, Self) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let mut scripts = HashMap::new();
        let mut queues = HashMap::new();
        for res in Res::ALL {
            let (tx, rx) = mpsc::unbounded_channel::<Reply>();
            scripts.insert(res, tx);
            queues.insert(res, Arc::new(tokio::sync::Mutex::new(rx)));
        }
        let (log, problem_log) = (requests.clone(), problems.clone());
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let uri = request.uri().clone();
                log.lock().expect("log").push(uri.to_string());
                let call = if uri.query().unwrap_or("").contains("watch=true") {
                    Call::Watch
                } else {
                    Call::List
                };
                let Some(res) = Res::ALL.into_iter().find(|r| r.path() == uri.path()) else {
                    problem_log.lock().expect("log").push(format!("unexpected call {uri}"));
                    send.send_response(status_response(404, "NotFound", "no such collection"));
                    continue;
                };
                let queue = queues[&res].clone();
                let problems = problem_log.clone();
                tokio::spawn(async move {
                    let Some(reply) = queue.lock().await.recv().await else {
                        return;
                    };
                    if reply.call != call {
                        problems.lock().expect("log").push(format!(
                            "{uri}: a {call:?} call, but a {:?} reply was scripted",
                            reply.call
                        ));
                        send.send_response(status_response(500, "InternalError", "script mismatch"));
                        return;
                    }
                    let response = Response::builder()
                        .status(reply.status)
                        .header("content-type", "application/json")
                        .body(Body::from(reply.body))
                        .expect("a response");
                    send.send_response(response);
                });
            }
        });
        (
            client,
            Self {
                scripts,
                requests,
                problems,
            },
        )
    }

    fn reply(&self, res: Res, reply: Reply) {
        self.scripts[&res].send(reply).expect("the fake server runs");
    }

    /// Answers the next list call of `res` with `items` at resource version `rv`.
    fn list(&self, res: Res, rv: &str, items: Vec<Value>) {
        let (api_version, kind) = res.list_type();
        let body = json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"resourceVersion": rv},
            "items": items,
        });
        self.reply(
            res,
            Reply {
                call: Call::List,
                status: 200,
                body: serde_json::to_vec(&body).expect("json"),
            },
        );
    }

    /// Answers the next watch call of `res` with these events (then the stream ends, as when the
    /// server's timeout closes it, and the watcher watches again from the last version).
    fn watch(&self, res: Res, events: &[(&str, Value)]) {
        let mut body = Vec::new();
        for (kind, object) in events {
            serde_json::to_writer(&mut body, &json!({"type": kind, "object": object})).expect("json");
            body.push(b'\n');
        }
        self.reply(
            res,
            Reply {
                call: Call::Watch,
                status: 200,
                body,
            },
        );
    }

    /// Answers the next `call` of `res` with an HTTP error.
    fn fail(&self, res: Res, call: Call, code: u16, reason: &str) {
        let body = status_json(code, reason, "injected by the test");
        self.reply(
            res,
            Reply {
                call,
                status: code,
                body: serde_json::to_vec(&body).expect("json"),
            },
        );
    }

    /// The URIs called so far.
    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("log").clone()
    }

    fn assert_no_problems(&self) {
        let problems = self.problems.lock().expect("log");
        assert!(problems.is_empty(), "fake API server problems: {problems:?}");
    }
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(
            serde_json::to_vec(&status_json(code, reason, message)).expect("json"),
        ))
        .expect("a response")
}

// Objects as the API server sends them.

fn labels(pairs: &[(&str, &str)]) -> Value {
    Value::Object(pairs.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect())
}

fn node(rv: &str, node_labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "uid": "0d0d0d0d-0000-4000-8000-000000000001", "resourceVersion": rv,
                     "labels": labels(node_labels), "annotations": labels(annotations),
                     "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1"}]},
        "spec": {"providerID": "aws:///us-west-2a/i-0123456789abcdef0"},
        "status": {"capacity": {"pods": "110"}, "nodeInfo": {"kubeletVersion": "v1.33.0"}}
    })
}

fn eni_config(name: &str, rv: &str, subnet: &str) -> Value {
    json!({
        "apiVersion": "crd.k8s.amazonaws.com/v1alpha1", "kind": "ENIConfig",
        "metadata": {"name": name, "resourceVersion": rv, "generation": 1},
        "spec": {"subnet": subnet, "securityGroups": ["sg-0a000000000000001"]}
    })
}

fn sg_policy(namespace: &str, name: &str, rv: &str, selector: Value, group: &str) -> Value {
    json!({
        "apiVersion": "vpcresources.k8s.aws/v1beta1", "kind": "SecurityGroupPolicy",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
        "spec": {"podSelector": selector, "securityGroups": {"groupIds": [group]}}
    })
}

fn sa_policy(namespace: &str, name: &str, rv: &str, team: &str, group: &str) -> Value {
    json!({
        "apiVersion": "vpcresources.k8s.aws/v1beta1", "kind": "SecurityGroupPolicy",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
        "spec": {"serviceAccountSelector": {"matchLabels": {"team": team}},
                 "securityGroups": {"groupIds": [group]}}
    })
}

fn pod(namespace: &str, name: &str, rv: &str, service_account: &str, pod_labels: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                     "resourceVersion": rv, "labels": labels(pod_labels)},
        "spec": {"nodeName": NODE, "serviceAccountName": service_account,
                 "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Pending"}
    })
}

fn service_account(namespace: &str, name: &str, rv: &str, sa_labels: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv, "labels": labels(sa_labels)}
    })
}

fn gone() -> Value {
    status_json(410, "Expired", "too old resource version: 5 (100)")
}

async fn wait_until(
    rx: &mut watch::Receiver<ClusterView>,
    what: &str,
    done: impl FnMut(&ClusterView) -> bool,
) -> ClusterView {
    let waited = tokio::time::timeout(WAIT, rx.wait_for(done))
        .await
        .map(|view| view.expect("the watch task runs").clone());
    match waited {
        Ok(view) => view,
        Err(_) => panic!("timed out waiting for {what}; the view is {:#?}", *rx.borrow()),
    }
}

fn pod_names(view: &ClusterView) -> BTreeSet<String> {
    view.pods
        .values()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

fn policy_names(view: &ClusterView) -> BTreeSet<String> {
    view.sg_policies
        .keys()
        .map(|(ns, name)| format!("{ns}/{name}"))
        .collect()
}

fn subnet(view: &ClusterView) -> Option<String> {
    view.eni_config().map(|c| c.subnet.clone())
}

// ------------------------------------------------------------------------------------------------
// Watchers
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn view_follows_list_and_watch_events() {
    init_tracing();
    let (client, api) = FakeApi::start();
    let mut rx = watch_cluster(client, NODE, custom_networking());
    assert!(!rx.borrow().synced, "nothing listed yet");

    api.list(Res::Nodes, "10", vec![node("10", &[(ENI_KEY, "az-a")], &[])]);
    api.list(
        Res::EniConfigs,
        "20",
        vec![
            eni_config("az-a", "11", "subnet-0a000000000000001"),
            eni_config("az-b", "12", "subnet-0b000000000000002"),
        ],
    );
    api.list(
        Res::SgPolicies,
        "30",
        vec![sg_policy(
            "shop",
            "db",
            "21",
            json!({"matchLabels": {"role": "db"}}),
            "sg-0d000000000000001",
        )],
    );
    let recorded: Value =
        serde_json::from_str(include_str!("kube_fixtures/pods-list.json")).expect("the recorded pod list");
    api.reply(
        Res::Pods,
        Reply {
            call: Call::List,
            status: 200,
            body: serde_json::to_vec(&recorded).expect("json"),
        },
    );
    api.list(
        Res::ServiceAccounts,
        "50",
        vec![service_account("shop", "web", "41", &[("team", "payments")])],
    );

    let view = wait_until(&mut rx, "the first lists", |v| v.synced).await;
    assert_eq!(view.eni_config_name, Ok(Some("az-a".to_owned())));
    assert_eq!(subnet(&view).as_deref(), Some("subnet-0a000000000000001"));
    assert_eq!(policy_names(&view), BTreeSet::from(["shop/db".to_owned()]));
    assert_eq!(
        pod_names(&view),
        BTreeSet::from(["kube-system/kube-proxy-x7k2p".to_owned(), "shop/web-1".to_owned()])
    );
    let web = view.pod("shop", "web-1").expect("web-1");
    assert_eq!(web.uid, "5f0c1e2a-0000-4000-8000-000000000001");
    assert_eq!(web.service_account, "web");
    assert_eq!(web.phase.as_deref(), Some("Running"));
    assert_eq!(web.pod_ips, vec!["100.64.0.10"]);
    assert!(web.annotations.contains_key("vpc.amazonaws.com/pod-eni"));
    assert!(
        view.pod("kube-system", "kube-proxy-x7k2p")
            .expect("kube-proxy")
            .host_network
    );
    assert_eq!(
        view.service_account_labels("shop", "web")
            .and_then(|l| l.get("team"))
            .map(String::as_str),
        Some("payments")
    );

    // The node is relabelled: its ENIConfig changes.
    api.watch(Res::Nodes, &[("MODIFIED", node("60", &[(ENI_KEY, "az-b")], &[]))]);
    let view = wait_until(&mut rx, "the node's new ENIConfig", |v| {
        subnet(v).as_deref() == Some("subnet-0b000000000000002")
    })
    .await;
    assert_eq!(view.eni_config_name, Ok(Some("az-b".to_owned())));
    // Then annotated: the annotation wins over the label.
    api.watch(
        Res::Nodes,
        &[("MODIFIED", node("61", &[(ENI_KEY, "az-b")], &[(ENI_KEY, "az-a")]))],
    );
    wait_until(&mut rx, "the annotation to win", |v| {
        v.eni_config_name == Ok(Some("az-a".to_owned()))
    })
    .await;
    // The ENIConfig the node names is deleted: no config (the VPC CNI would allocate no ENIs).
    api.watch(
        Res::EniConfigs,
        &[("DELETED", eni_config("az-a", "62", "subnet-0a000000000000001"))],
    );
    let view = wait_until(&mut rx, "az-a to go", |v| !v.eni_configs.contains_key("az-a")).await;
    assert!(view.eni_config().is_none());
    assert_eq!(view.eni_config_name, Ok(Some("az-a".to_owned())));

    // A policy is added and another deleted.
    api.watch(
        Res::SgPolicies,
        &[
            (
                "ADDED",
                sa_policy("shop", "payments", "63", "payments", "sg-0e000000000000001"),
            ),
            (
                "DELETED",
                sg_policy("shop", "db", "64", json!({}), "sg-0d000000000000001"),
            ),
        ],
    );
    let view = wait_until(&mut rx, "the policy change", |v| {
        policy_names(v) == BTreeSet::from(["shop/payments".to_owned()])
    })
    .await;
    let meta = view.pod_meta("shop", "web-1").expect("web-1");
    assert_eq!(
        security_groups_for(&view.domain_policies(), &meta).expect("groups"),
        vec!["sg-0e000000000000001"]
    );

    // The service account is relabelled: the policy no longer matches.
    api.watch(
        Res::ServiceAccounts,
        &[("MODIFIED", service_account("shop", "web", "65", &[("team", "search")]))],
    );
    let view = wait_until(&mut rx, "the service account's new labels", |v| {
        v.service_account_labels("shop", "web")
            .and_then(|l| l.get("team"))
            .map(String::as_str)
            == Some("search")
    })
    .await;
    let meta = view.pod_meta("shop", "web-1").expect("web-1");
    assert!(
        security_groups_for(&view.domain_policies(), &meta)
            .expect("groups")
            .is_empty()
    );

    // A pod appears, another goes, a third is being deleted.
    let mut deleting = pod("shop", "web-1", "68", "web", &[("app", "web")]);
    deleting["metadata"]["deletionTimestamp"] = json!("2025-01-01T01:00:00Z");
    api.watch(
        Res::Pods,
        &[
            ("ADDED", pod("shop", "db-1", "66", "default", &[("role", "db")])),
            (
                "DELETED",
                pod("kube-system", "kube-proxy-x7k2p", "67", "kube-proxy", &[]),
            ),
            ("MODIFIED", deleting),
        ],
    );
    let view = wait_until(&mut rx, "the pod changes", |v| {
        pod_names(v) == BTreeSet::from(["shop/db-1".to_owned(), "shop/web-1".to_owned()])
            && v.pod("shop", "web-1").is_some_and(|p| p.deleting)
    })
    .await;
    assert_eq!(view.pod("shop", "db-1").expect("db-1").uid, "uid-db-1");
    assert!(view.synced);

    let requests = api.requests();
    let first_node_call = requests
        .iter()
        .find(|r| r.starts_with("/api/v1/nodes"))
        .expect("a node call");
    assert!(
        first_node_call.contains("fieldSelector=metadata.name%3Dnode-a"),
        "{first_node_call}"
    );
    let pod_calls: Vec<_> = requests.iter().filter(|r| r.starts_with("/api/v1/pods")).collect();
    assert!(
        pod_calls
            .iter()
            .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{pod_calls:?}"
    );
    // A watch resumes from the version the last event carried.
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/api/v1/nodes") && r.contains("watch=true") && r.contains("resourceVersion=60")),
        "{requests:#?}"
    );
    api.assert_no_problems();
}

#[tokio::test]
async fn view_is_unsynced_until_every_collection_has_listed() {
    init_tracing();
    let (client, api) = FakeApi::start();
    let mut rx = watch_cluster(client, NODE, custom_networking());
    api.list(Res::Nodes, "1", vec![node("1", &[(ENI_KEY, "az-a")], &[])]);
    api.list(
        Res::EniConfigs,
        "1",
        vec![eni_config("az-a", "1", "subnet-0a000000000000001")],
    );
    api.list(Res::SgPolicies, "1", vec![]);
    api.list(Res::Pods, "1", vec![pod("shop", "web-1", "1", "web", &[])]);
    // Service accounts not listed yet.
    let view = wait_until(&mut rx, "four of the five lists", |v| {
        v.eni_config().is_some() && !v.pods.is_empty()
    })
    .await;
    assert!(!view.synced);
    // Still unsynced a moment later: nothing else can make it so.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!rx.borrow().synced);
    api.list(Res::ServiceAccounts, "1", vec![]);
    let view = wait_until(&mut rx, "the last list", |v| v.synced).await;
    assert!(view.service_accounts.is_empty(), "the pod's account does not exist");
    api.assert_no_problems();
}

#[tokio::test]
async fn custom_networking_off_selects_nothing_even_when_labelled() {
    init_tracing();
    let (client, api) = FakeApi::start();
    let mut rx = watch_cluster(client, NODE, EniConfigSelector::default());
    api.list(Res::Nodes, "1", vec![node("1", &[(ENI_KEY, "az-a")], &[])]);
    api.list(
        Res::EniConfigs,
        "1",
        vec![eni_config("az-a", "1", "subnet-0a000000000000001")],
    );
    for res in [Res::SgPolicies, Res::Pods, Res::ServiceAccounts] {
        api.list(res, "1", vec![]);
    }
    let view = wait_until(&mut rx, "sync", |v| v.synced).await;
    assert_eq!(view.eni_config_name, Ok(None));
    assert!(view.eni_config().is_none());
    assert!(view.eni_configs.contains_key("az-a"), "configs are still known");
}

#[tokio::test]
async fn watchers_recover_from_errors_and_expired_watches() {
    init_tracing();
    let (client, api) = FakeApi::start();
    let mut rx = watch_cluster(client, NODE, custom_networking());
    api.list(Res::Nodes, "1", vec![node("1", &[(ENI_KEY, "az-a")], &[])]);
    // The first ENIConfig list fails (etcd timed out); the watcher backs off and lists again.
    api.fail(Res::EniConfigs, Call::List, 500, "InternalError");
    api.list(
        Res::EniConfigs,
        "2",
        vec![eni_config("az-a", "2", "subnet-0a000000000000001")],
    );
    // Policies: listed, then the watch expires (410 Gone). Meanwhile p1 was deleted and p2
    // created; the relist shows only p2.
    api.list(
        Res::SgPolicies,
        "3",
        vec![sg_policy("shop", "p1", "3", json!({}), "sg-0d000000000000001")],
    );
    api.watch(Res::SgPolicies, &[("ERROR", gone())]);
    api.list(
        Res::SgPolicies,
        "9",
        vec![sg_policy("shop", "p2", "8", json!({}), "sg-0d000000000000002")],
    );
    // Pods: the first watch is refused (403 while RBAC is being fixed); the watcher retries it.
    api.list(Res::Pods, "4", vec![pod("shop", "web-1", "4", "default", &[])]);
    api.fail(Res::Pods, Call::Watch, 403, "Forbidden");
    api.watch(Res::Pods, &[("DELETED", pod("shop", "web-1", "10", "default", &[]))]);
    api.list(Res::ServiceAccounts, "5", vec![]);

    let view = wait_until(&mut rx, "recovery", |v| {
        v.synced
            && subnet(v).as_deref() == Some("subnet-0a000000000000001")
            && policy_names(v) == BTreeSet::from(["shop/p2".to_owned()])
            && v.pods.is_empty()
    })
    .await;
    assert_eq!(view.eni_configs.len(), 1);
    let requests = api.requests();
    let eni_lists = requests
        .iter()
        .filter(|r| r.starts_with(Res::EniConfigs.path()) && !r.contains("watch=true"))
        .count();
    assert_eq!(eni_lists, 2, "listed again after the error: {requests:#?}");
    let policy_lists = requests
        .iter()
        .filter(|r| r.starts_with(Res::SgPolicies.path()) && !r.contains("watch=true"))
        .count();
    assert_eq!(policy_lists, 2, "relisted after 410: {requests:#?}");
    api.assert_no_problems();
}

// ------------------------------------------------------------------------------------------------
// Files
// ------------------------------------------------------------------------------------------------

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kube_fixtures")
}

#[test]
fn files_give_the_same_view() {
    let loaded = load_files(&[fixtures().join("cluster")], NODE, &custom_networking()).expect("the fixtures load");
    let view = &loaded.view;
    assert!(view.synced);
    assert_eq!(view.eni_config_name, Ok(Some("us-west-2a".to_owned())));
    let config = view.eni_config().expect("us-west-2a exists");
    assert_eq!(config.subnet, "subnet-0a000000000000001");
    assert_eq!(config.security_groups, vec!["sg-0a000000000000001"]);
    assert_eq!(view.eni_configs.len(), 2);
    let node = view.node.as_ref().expect("node-a is in the files");
    assert_eq!(
        node.annotations.get("node.alpha.kubernetes.io/ttl").map(String::as_str),
        Some("0")
    );
    // Only the pods scheduled on node-a.
    assert_eq!(
        pod_names(view),
        BTreeSet::from(["shop/db-1".to_owned(), "shop/web-1".to_owned()])
    );
    assert_eq!(view.pod("shop", "db-1").expect("db-1").service_account, "default");
    // Only the accounts node-a's pods run as, and that exist.
    assert_eq!(view.service_accounts.len(), 1);
    let groups = |name: &str| {
        let meta = view.pod_meta("shop", name).expect("pod");
        security_groups_for(&view.domain_policies(), &meta).expect("groups")
    };
    assert_eq!(groups("db-1"), vec!["sg-0d000000000000001"]);
    assert_eq!(groups("web-1"), vec!["sg-0e000000000000001"]);
    // The Deployment and the ConfigMap are skipped and reported; notes.txt is not read.
    let ignored: Vec<_> = loaded
        .ignored
        .iter()
        .map(|o| format!("{} {} {}", o.api_version, o.kind, o.name))
        .collect();
    assert_eq!(ignored, vec!["apps/v1 Deployment web", "v1 ConfigMap settings"]);
    assert!(
        loaded.ignored[0]
            .origin
            .to_string()
            .ends_with("50-app.yaml: document 1")
    );
}

#[test]
fn kubectl_list_output_is_read() {
    let loaded = load_files(&[fixtures().join("kubectl-list.yaml")], NODE, &custom_networking()).expect("a List loads");
    let view = &loaded.view;
    assert_eq!(
        view.eni_configs.get("us-west-2c").map(|c| c.subnet.as_str()),
        Some("subnet-0c000000000000003")
    );
    assert_eq!(policy_names(view), BTreeSet::from(["batch/all-of-ns".to_owned()]));
    // No node object: the default ENIConfig name, which does not exist.
    assert!(view.node.is_none());
    assert_eq!(view.eni_config_name, Ok(Some("default".to_owned())));
    assert!(view.eni_config().is_none());
}

/// Loads one text named `m.yaml` and returns the problems.
fn problems(text: &str) -> Vec<String> {
    match load_sources(
        &[(PathBuf::from("m.yaml"), text.to_owned())],
        NODE,
        &custom_networking(),
    ) {
        Ok(loaded) => panic!("should fail, loaded {:?}", loaded.view),
        Err(FilesError::Invalid { errors }) => errors.iter().map(ToString::to_string).collect(),
        Err(other) => panic!("unexpected {other}"),
    }
}

const ENI_HEAD: &str = "apiVersion: crd.k8s.amazonaws.com/v1alpha1\nkind: ENIConfig\nmetadata:\n  name: az-a\n";

#[test]
fn bad_yaml_is_reported_with_file_and_document() {
    let found = problems(&format!("{ENI_HEAD}spec:\n  subnet: subnet-1\n---\nkind: [unclosed\n"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("m.yaml: document 2: not valid YAML"), "{found:?}");
}

#[test]
fn bad_objects_name_the_field() {
    // A field of the wrong type: serde's path and the line.
    let found = problems(&format!("{ENI_HEAD}spec:\n  subnet: [a, b]\n"));
    assert!(
        found[0].starts_with("m.yaml: document 1 (ENIConfig az-a): spec.subnet: invalid type: sequence"),
        "{found:?}"
    );
    assert!(found[0].contains("line 6"), "{found:?}");
    // A missing required field.
    let found = problems(&format!("{ENI_HEAD}spec:\n  securityGroups: [sg-1]\n"));
    assert!(found[0].contains("missing field `subnet`"), "{found:?}");
    // An unknown spec field (a typo would otherwise go unnoticed).
    let found = problems(&format!(
        "{ENI_HEAD}spec:\n  subnet: subnet-1\n  securityGroup: [sg-1]\n"
    ));
    assert_eq!(
        found,
        vec!["m.yaml: document 1 (ENIConfig az-a): spec.securityGroup: unknown field; spec has subnet, securityGroups"]
    );
    let found = problems(
        "apiVersion: vpcresources.k8s.aws/v1beta1\nkind: SecurityGroupPolicy\nmetadata:\n  name: p\nspec:\n  \
         podSelector:\n    matchExpressions:\n    - key: a\n      operator: In\n      value: [x]\n  \
         securityGroups:\n    groupIds: [sg-1]\n",
    );
    assert!(
        found[0].contains("(SecurityGroupPolicy p): spec.podSelector.matchExpressions[0].value: unknown field"),
        "{found:?}"
    );
    let found = problems(
        "apiVersion: vpcresources.k8s.aws/v1beta1\nkind: SecurityGroupPolicy\nmetadata:\n  name: p\nspec:\n  \
         podSelector: {}\n  securityGroups:\n    groupIds: []\n",
    );
    assert!(found[0].contains("groupIds: empty"), "{found:?}");
    // A label value that YAML reads as a number.
    let found = problems(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels:\n    version: 2\nspec:\n  containers: []\n",
    );
    assert_eq!(
        found,
        vec![
            "m.yaml: document 1 (Pod p): metadata.labels.version: expected a string, found a number 2; quote it (\"2\")"
        ]
    );
    let found = problems(&format!(
        "{ENI_HEAD}spec:\n  subnet: subnet-1\n  securityGroups: [sg-1, true]\n"
    ));
    assert!(
        found[0].contains("spec.securityGroups[1]: expected a string, found a boolean true"),
        "{found:?}"
    );
}

#[test]
fn wrong_envelopes_are_errors_and_all_are_reported() {
    let found = problems(&format!(
        "apiVersion: crd.k8s.amazonaws.com/v1beta1\nkind: ENIConfig\nmetadata:\n  name: a\nspec:\n  subnet: s\n\
         ---\nkind: Pod\napiVersion: v1\nmetadata: {{}}\n---\n- just\n- a list\n---\napiVersion: v1\nmetadata:\n  \
         name: x\n---\n{ENI_HEAD}spec:\n  subnet: s\n---\n{ENI_HEAD}spec:\n  subnet: t\n"
    ));
    assert_eq!(
        found,
        vec![
            "m.yaml: document 1 (ENIConfig a): apiVersion: a ENIConfig has apiVersion crd.k8s.amazonaws.com/v1alpha1, \
             found \"crd.k8s.amazonaws.com/v1beta1\"",
            "m.yaml: document 2 (Pod): metadata.name: missing; every object needs a name",
            "m.yaml: document 3: expected an object with apiVersion, kind and metadata, found a list",
            "m.yaml: document 4: kind: missing; every object has a kind",
            "m.yaml: document 6 (ENIConfig az-a): defined twice; first at m.yaml: document 5",
        ]
    );
}

#[test]
fn unknown_kinds_and_empty_documents_are_skipped() {
    let text = format!(
        "---\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n---\n{ENI_HEAD}spec:\n  subnet: s\n"
    );
    let loaded = load_sources(&[(PathBuf::from("m.yaml"), text)], NODE, &custom_networking()).expect("loads");
    assert_eq!(loaded.ignored.len(), 1);
    assert_eq!(loaded.ignored[0].kind, "Widget");
    assert_eq!(loaded.ignored[0].origin.document, 2);
    assert!(loaded.view.eni_configs.contains_key("az-a"));
}

#[test]
fn missing_paths_are_named() {
    let missing = fixtures().join("no-such-dir");
    let e = load_files(&[missing], NODE, &custom_networking()).expect_err("missing");
    assert!(matches!(e, FilesError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains("no-such-dir"), "{e}");
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("t50_kube-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("a temporary directory");
        Self(path)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).expect("write");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node_yaml(config: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n  labels:\n    {ENI_KEY}: {config}\n")
}

#[tokio::test]
async fn watched_files_reload_and_keep_the_last_good_view() {
    init_tracing();
    let dir = TempDir::new("reload");
    dir.write("eni.yaml", &format!("{ENI_HEAD}spec:\n  subnet: subnet-a\n"));
    dir.write("node.yaml", &node_yaml("az-a"));
    let mut rx = watch_files(
        vec![dir.0.clone()],
        NODE,
        custom_networking(),
        Duration::from_millis(50),
    )
    .expect("loads");
    assert_eq!(subnet(&rx.borrow_and_update()).as_deref(), Some("subnet-a"));

    // The node file changes: it now names a config that does not exist yet, then one appears.
    dir.write("node.yaml", &node_yaml("az-b"));
    wait_until(&mut rx, "the relabelled node", |v| {
        v.eni_config_name == Ok(Some("az-b".to_owned()))
    })
    .await;
    dir.write(
        "eni-b.yaml",
        "apiVersion: crd.k8s.amazonaws.com/v1alpha1\nkind: ENIConfig\nmetadata:\n  name: az-b\nspec:\n  subnet: subnet-b\n",
    );
    wait_until(&mut rx, "the new file", |v| subnet(v).as_deref() == Some("subnet-b")).await;

    // A broken edit: the last good view stays.
    dir.write("node.yaml", "apiVersion: v1\nkind: Node\nmetadata: [broken\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!rx.has_changed().expect("running"), "a bad reload publishes nothing");
    assert_eq!(subnet(&rx.borrow()).as_deref(), Some("subnet-b"));
    // Fixed: picked up.
    dir.write("node.yaml", &node_yaml("az-a"));
    wait_until(&mut rx, "the fixed file", |v| subnet(v).as_deref() == Some("subnet-a")).await;
}

#[test]
fn watch_files_refuses_bad_files_at_start() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = TempDir::new("bad-start");
    dir.write("eni.yaml", &format!("{ENI_HEAD}spec: {{}}\n"));
    let result = runtime.block_on(async {
        watch_files(vec![dir.0.clone()], NODE, custom_networking(), Duration::from_secs(1)).map(|_| ())
    });
    let e = result.expect_err("a bad file");
    assert!(
        e.to_string()
            .contains("eni.yaml: document 1 (ENIConfig az-a): spec: missing field `subnet`"),
        "{e}"
    );
}
