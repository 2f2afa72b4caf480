//! The cluster source: kube-runtime watchers feeding reflector stores, merged into one
//! [`ClusterView`] published on a `tokio::sync::watch` channel.
//!
//! ```text
//!   Node (metadata.name=<node>) ──watcher─┐
//!   ENIConfig (all) ──────────────watcher─┤  each: strip ─▶ default_backoff ─▶ reflect(store)
//!   SecurityGroupPolicy (all ns) ─watcher─┤
//!   Pod (spec.nodeName=<node>) ───watcher─┤──select_all──▶ on Apply/Delete/InitDone: rebuild the
//!   ServiceAccount (metadata) ────watcher─┘                 part that source feeds from its store,
//!                                                          publish if the view changed
//! ```
//!
//! Every watcher error (a failed list, a refused watch, `410 Gone` mid-watch) is logged and
//! retried by the watcher after kube-runtime's default backoff (0.8 s doubling to 30 s, with
//! jitter, reset after 120 s of health); a relist replaces the store atomically, so objects
//! deleted while the watch was down disappear then. The stores keep the last good state
//! meanwhile, and so does the view.
//!
//! RBAC: get/list/watch on nodes, pods, serviceaccounts, eniconfigs.crd.k8s.amazonaws.com and
//! securitygrouppolicies.vpcresources.k8s.aws.

use std::collections::BTreeMap;
use std::fmt;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::Client;
use kube::Resource;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store;
use kube::runtime::watcher;
use kube::runtime::watcher::Event;
use tokio::sync::watch;
use tracing::Instrument;

use super::crd::EniConfig;
use super::crd::SecurityGroupPolicy;
use super::select::EniConfigSelector;
use super::view::ClusterView;
use super::view::NodeMeta;
use super::view::PodInfo;

/// Watches the cluster for `node_name` and publishes the view on the returned channel: first an
/// empty, unsynced view; then every change. [`ClusterView::synced`] turns true once every watcher
/// has listed once.
///
/// Spawns a task on the current tokio runtime (panics outside one, like `tokio::spawn`); the task
/// ends when every receiver is dropped.
pub fn watch_cluster(client: Client, node_name: &str, selector: EniConfigSelector) -> watch::Receiver<ClusterView> {
    let (tx, rx) = watch::channel(ClusterView::new(node_name, selector));
    let (node_store, node_writer) = store::<Node>();
    let (eni_store, eni_writer) = store::<EniConfig>();
    let (sgp_store, sgp_writer) = store::<SecurityGroupPolicy>();
    let (pod_store, pod_writer) = store::<Pod>();
    let (sa_store, sa_writer) = store::<PartialObjectMeta<ServiceAccount>>();
    let node_config = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let pod_config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let streams = vec![
        tagged(
            Source::Node,
            watcher(Api::<Node>::all(client.clone()), node_config)
                .modify(|node| node.managed_fields_mut().clear())
                .default_backoff()
                .reflect(node_writer),
        ),
        tagged(
            Source::EniConfigs,
            watcher(Api::<EniConfig>::all(client.clone()), watcher::Config::default())
                .modify(|config| config.managed_fields_mut().clear())
                .default_backoff()
                .reflect(eni_writer),
        ),
        tagged(
            Source::SgPolicies,
            watcher(
                Api::<SecurityGroupPolicy>::all(client.clone()),
                watcher::Config::default(),
            )
            .modify(|policy| policy.managed_fields_mut().clear())
            .default_backoff()
            .reflect(sgp_writer),
        ),
        tagged(
            Source::Pods,
            watcher(Api::<Pod>::all(client.clone()), pod_config)
                .modify(slim_pod)
                .default_backoff()
                .reflect(pod_writer),
        ),
        tagged(
            Source::ServiceAccounts,
            watcher(
                Api::<PartialObjectMeta<ServiceAccount>>::all(client),
                watcher::Config::default(),
            )
            .modify(|account| account.managed_fields_mut().clear())
            .default_backoff()
            .reflect(sa_writer),
        ),
    ];
    let stores = Stores {
        node: node_store,
        eni_configs: eni_store,
        sg_policies: sgp_store,
        pods: pod_store,
        service_accounts: sa_store,
    };
    let span = tracing::info_span!("kube_watch", node = %node_name);
    tokio::spawn(run(stores, streams, tx).instrument(span));
    rx
}

/// Which watcher an item came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// This node.
    Node,
    /// `ENIConfig`s.
    EniConfigs,
    /// `SecurityGroupPolicy`s.
    SgPolicies,
    /// This node's pods.
    Pods,
    /// `ServiceAccount`s (metadata only).
    ServiceAccounts,
}

impl Source {
    /// Every source, in the order of `listed` flags.
    const ALL: [Self; 5] = [
        Self::Node,
        Self::EniConfigs,
        Self::SgPolicies,
        Self::Pods,
        Self::ServiceAccounts,
    ];

    /// The source's position in [`Source::ALL`].
    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Node => "Node",
            Self::EniConfigs => "ENIConfig",
            Self::SgPolicies => "SecurityGroupPolicy",
            Self::Pods => "Pod",
            Self::ServiceAccounts => "ServiceAccount",
        })
    }
}

/// What a watcher event means for the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// An object changed in the store: rebuild.
    Changed,
    /// A (re)list completed and replaced the store: rebuild, and the source is synced.
    Listed,
    /// A (re)list is under way; the store is unchanged until it completes.
    Listing,
}

/// The reflectors' stores.
struct Stores {
    /// This node (at most one object).
    node: Store<Node>,
    /// `ENIConfig`s.
    eni_configs: Store<EniConfig>,
    /// `SecurityGroupPolicy`s.
    sg_policies: Store<SecurityGroupPolicy>,
    /// This node's pods.
    pods: Store<Pod>,
    /// Service accounts.
    service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
}

/// One watcher's items, tagged with their source and reduced to what the loop needs.
fn tagged<K>(
    source: Source,
    stream: impl futures::Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
) -> BoxStream<'static, (Source, watcher::Result<Step>)> {
    stream
        .map(move |item| {
            let step = item.map(|event| match event {
                Event::Apply(_) | Event::Delete(_) => Step::Changed,
                Event::InitDone => Step::Listed,
                Event::Init | Event::InitApply(_) => Step::Listing,
            });
            (source, step)
        })
        .boxed()
}

/// Runs until every receiver is gone.
async fn run(
    stores: Stores,
    streams: Vec<BoxStream<'static, (Source, watcher::Result<Step>)>>,
    tx: watch::Sender<ClusterView>,
) {
    let mut merged = futures::stream::select_all(streams);
    let mut draft = tx.borrow().clone();
    let mut listed = [false; Source::ALL.len()];
    loop {
        let item = tokio::select! {
            () = tx.closed() => return,
            item = merged.next() => item,
        };
        // Watchers never end on their own; all of them ending means the runtime is going away.
        let Some((source, result)) = item else { return };
        match result {
            Ok(Step::Listing) => continue,
            Ok(Step::Listed) => listed[source.index()] = true,
            Ok(Step::Changed) => {}
            Err(e) => {
                log_watch_error(source, &e);
                continue;
            }
        }
        refresh(source, &stores, &mut draft);
        if source == Source::Pods {
            // New pods may run as accounts the view does not hold yet.
            refresh(Source::ServiceAccounts, &stores, &mut draft);
        }
        draft.synced = listed.iter().all(|&done| done);
        tx.send_if_modified(|view| {
            if *view == draft {
                false
            } else {
                view.clone_from(&draft);
                true
            }
        });
    }
}

/// Logs a watcher error; the watcher retries after its backoff.
fn log_watch_error(source: Source, error: &watcher::Error) {
    match error {
        // The watch fell too far behind; the watcher relists. Expected now and then.
        watcher::Error::WatchError(status) if status.code == 410 => {
            tracing::info!(%source, error = %error, "watch expired; relisting");
        }
        _ => tracing::warn!(%source, error = %error, "Kubernetes watch failed; retrying with backoff"),
    }
}

/// Rebuilds the part of the view `source` feeds, from its store.
fn refresh(source: Source, stores: &Stores, view: &mut ClusterView) {
    match source {
        Source::Node => {
            let node = stores
                .node
                .state()
                .into_iter()
                .find(|node| node.meta().name.as_deref() == Some(view.node_name.as_str()));
            view.set_node(node.map(|node| NodeMeta::from_node(&node)));
        }
        Source::EniConfigs => {
            view.eni_configs = stores
                .eni_configs
                .state()
                .into_iter()
                .map(|config| (config.name_any(), config.spec.clone()))
                .collect();
        }
        Source::SgPolicies => {
            view.sg_policies = stores
                .sg_policies
                .state()
                .into_iter()
                .map(|policy| {
                    let namespace = policy.namespace().unwrap_or_default();
                    ((namespace, policy.name_any()), policy.spec.clone())
                })
                .collect();
        }
        Source::Pods => {
            let pods: BTreeMap<_, _> = stores
                .pods
                .state()
                .into_iter()
                .filter_map(|pod| PodInfo::from_pod(&pod))
                .map(|pod| ((pod.namespace.clone(), pod.name.clone()), pod))
                .collect();
            view.set_pods(pods);
        }
        Source::ServiceAccounts => {
            view.service_accounts = view
                .used_service_accounts()
                .into_iter()
                .filter_map(|(namespace, name)| {
                    let key = ObjectRef::new(&name).within(&namespace);
                    let account = stores.service_accounts.get(&key)?;
                    Some(((namespace, name), account.labels().clone()))
                })
                .collect();
        }
    }
}

/// Drops what the agent never reads of a pod, to keep the store small.
fn slim_pod(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers.clear();
        spec.init_containers = None;
        spec.ephemeral_containers = None;
        spec.volumes = None;
        spec.affinity = None;
        spec.tolerations = None;
    }
    if let Some(status) = pod.status.as_mut() {
        status.conditions = None;
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}
