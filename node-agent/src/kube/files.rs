//! The file source, for runs without a cluster: the YAML `kubectl apply -f` would take, read into
//! the same [`ClusterView`] the cluster source builds.
//!
//! ```text
//!   paths (files, or directories: their *.yaml, *.yml, *.json, sorted, not recursive)
//!     │ read_sources
//!     ▼
//!   (path, text)… ──load_sources──▶ documents (`---` stream; `kind: List` expands to its items)
//!                                     │ kind + apiVersion decide; typed decoding (k8s-openapi / crd)
//!                                     ▼
//!                                   LoadedFiles { view, ignored }
//! ```
//!
//! # What is read
//!
//! * `ENIConfig` (`crd.k8s.amazonaws.com/v1alpha1`) and `SecurityGroupPolicy`
//!   (`vpcresources.k8s.aws/v1beta1`), with the CRDs' schemas; an unknown key inside `spec` is an
//!   error naming it (as `kubectl apply`'s strict field validation would refuse it, and as
//!   `ipamctl apply` does), and so is an empty `securityGroups.groupIds` (the CRD's `minItems: 1`).
//! * `Node` (`v1`): only the one named like this node; others are skipped.
//! * `Pod` (`v1`): only those with `spec.nodeName` equal to this node's name (what the cluster
//!   source's field selector keeps); a pod without `spec.nodeName` is not scheduled, so skipped.
//! * `ServiceAccount` (`v1`): their labels, for `serviceAccountSelector`.
//! * A namespaced object without `metadata.namespace` is in `default`, as with kubectl.
//!
//! **Other kinds are ignored, not refused**: a directory may hold a whole `kubectl get -A -o yaml`
//! dump or an application's manifests. They are listed in [`LoadedFiles::ignored`] (and logged at
//! debug). A known kind with the wrong `apiVersion`, a document without `kind` or `metadata.name`,
//! bad YAML, or the same object twice is an error naming the file, the document (from 1) and,
//! where it helps, the field and line. Every error found is reported, not only the first.
//!
//! [`watch_files`] re-reads the files every interval and publishes the view when it changed; a
//! reload that fails keeps the last good view (the error is logged).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::ServiceAccount;
use serde::Deserialize;
use serde_json::Map;
use serde_json::Value;
use tokio::sync::watch;

use super::crd::ENI_CONFIG_API_VERSION;
use super::crd::EniConfig;
use super::crd::SG_POLICY_API_VERSION;
use super::crd::SecurityGroupPolicy;
use super::select::EniConfigSelector;
use super::view::ClusterView;
use super::view::DEFAULT_NAMESPACE;
use super::view::NodeMeta;
use super::view::PodInfo;

/// The shortest reload interval [`watch_files`] uses, so that a zero interval does not spin.
pub const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(50);

/// The keys of an `ENIConfig`'s spec.
const ENI_CONFIG_SPEC_KEYS: &[&str] = &["subnet", "securityGroups"];
/// The keys of a `SecurityGroupPolicy`'s spec.
const SG_POLICY_SPEC_KEYS: &[&str] = &["podSelector", "serviceAccountSelector", "securityGroups"];
/// The keys of a `SecurityGroupPolicy`'s `spec.securityGroups`.
const GROUP_IDS_KEYS: &[&str] = &["groupIds"];
/// The keys of a label selector.
const SELECTOR_KEYS: &[&str] = &["matchLabels", "matchExpressions"];
/// The keys of a label selector requirement.
const REQUIREMENT_KEYS: &[&str] = &["key", "operator", "values"];

/// Where a document was read: the file, the document's position in it (from 1, counting empty
/// documents) and, inside a `kind: List`, the item's position (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub path: PathBuf,
    /// The document's position, from 1.
    pub document: usize,
    /// The item's position in a `kind: List`, from 1.
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.path.display(), self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        Ok(())
    }
}

/// A document that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// Where.
    pub origin: Origin,
    /// The object's kind and name (`ENIConfig us-west-2a`), when they could be read.
    pub object: Option<String>,
    /// What is wrong (with the field and line, when known).
    pub why: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        write!(f, ": {}", self.why)
    }
}

/// Why the files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A path could not be read or listed.
    #[error("{}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// A file is not UTF-8.
    #[error("{}: not UTF-8 text", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// Documents that cannot be used: every one found, in file order.
    #[error("{}", join(errors))]
    Invalid {
        /// The problems.
        errors: Vec<DocumentError>,
    },
}

/// The problems, one after the other.
fn join(errors: &[DocumentError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// An object of a kind this module does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredObject {
    /// Where.
    pub origin: Origin,
    /// Its `apiVersion`.
    pub api_version: String,
    /// Its `kind`.
    pub kind: String,
    /// Its `metadata.name` (empty if none).
    pub name: String,
}

/// What [`load_files`] read.
#[derive(Debug, Clone)]
pub struct LoadedFiles {
    /// The view (always [`ClusterView::synced`]).
    pub view: ClusterView,
    /// Objects of other kinds, skipped.
    pub ignored: Vec<IgnoredObject>,
}

/// Reads `paths` (files, or directories) and builds the view of `node_name`.
///
/// # Errors
///
/// [`FilesError::Read`], [`FilesError::NotText`], [`FilesError::Invalid`].
pub fn load_files(paths: &[PathBuf], node_name: &str, selector: &EniConfigSelector) -> Result<LoadedFiles, FilesError> {
    load_sources(&read_sources(paths)?, node_name, selector)
}

/// Reads the texts: each file as given, and each directory's `*.yaml`, `*.yml` and `*.json`
/// files (not hidden, not in subdirectories), sorted by name.
///
/// # Errors
///
/// [`FilesError::Read`], [`FilesError::NotText`].
pub fn read_sources(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, FilesError> {
    let read_error = |path: &Path| {
        let path = path.to_owned();
        move |source| FilesError::Read { path, source }
    };
    let mut files = Vec::new();
    for path in paths {
        let metadata = std::fs::metadata(path).map_err(read_error(path))?;
        if !metadata.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(path).map_err(read_error(path))? {
            let entry = entry.map_err(read_error(path))?;
            let file = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let manifest = [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext));
            if manifest && !name.starts_with('.') && file.is_file() {
                found.push(file);
            }
        }
        found.sort();
        files.append(&mut found);
    }
    files
        .into_iter()
        .map(|file| {
            let bytes = std::fs::read(&file).map_err(read_error(&file))?;
            match String::from_utf8(bytes) {
                Ok(text) => Ok((file, text)),
                Err(_) => Err(FilesError::NotText { path: file }),
            }
        })
        .collect()
}

/// Builds the view of `node_name` from texts already read (named by their path).
///
/// # Errors
///
/// [`FilesError::Invalid`], with every problem found.
pub fn load_sources(
    sources: &[(PathBuf, String)],
    node_name: &str,
    selector: &EniConfigSelector,
) -> Result<LoadedFiles, FilesError> {
    let mut objects = Vec::new();
    let mut ignored = Vec::new();
    let mut errors = Vec::new();
    for (path, text) in sources {
        parse_source(path, text, &mut objects, &mut ignored, &mut errors);
    }
    let mut view = ClusterView::new(node_name, selector.clone());
    view.synced = true;
    let mut seen: BTreeMap<(&'static str, String, String), Origin> = BTreeMap::new();
    let mut pods = BTreeMap::new();
    let mut accounts = BTreeMap::new();
    for (origin, object) in objects {
        let (kind, namespace, name) = object.key();
        let described = object.describe();
        if let Some(first) = seen.insert((kind, namespace.clone(), name.clone()), origin.clone()) {
            errors.push(DocumentError {
                origin,
                object: Some(described),
                why: format!("defined twice; first at {first}"),
            });
            continue;
        }
        match object {
            Object::EniConfig(config) => {
                view.eni_configs.insert(name, config.spec);
            }
            Object::SgPolicy(policy) => {
                view.sg_policies.insert((namespace, name), policy.spec);
            }
            Object::Node(node) => {
                if name == node_name {
                    view.set_node(Some(NodeMeta::from_node(&node)));
                }
            }
            Object::Pod(pod) => {
                let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name);
                if let Some(info) = PodInfo::from_pod(&pod).filter(|_| on_node) {
                    pods.insert((namespace, name), info);
                }
            }
            Object::ServiceAccount(account) => {
                accounts.insert((namespace, name), account.metadata.labels.unwrap_or_default());
            }
        }
    }
    if !errors.is_empty() {
        return Err(FilesError::Invalid { errors });
    }
    view.set_pods(pods);
    view.service_accounts = view
        .used_service_accounts()
        .into_iter()
        .filter_map(|key| accounts.remove(&key).map(|labels| (key, labels)))
        .collect();
    for object in &ignored {
        tracing::debug!(origin = %object.origin, kind = %object.kind, name = %object.name, "ignored a Kubernetes object");
    }
    Ok(LoadedFiles { view, ignored })
}

/// Loads `paths` now, then re-reads them every `interval` (at least [`MIN_RELOAD_INTERVAL`]) and
/// publishes the view when it changed. A reload that fails is logged and the last good view stays.
/// Spawns a task on the current tokio runtime; it ends when every receiver is dropped.
///
/// # Errors
///
/// Those of [`load_files`], for the first load.
pub fn watch_files(
    paths: Vec<PathBuf>,
    node_name: &str,
    selector: EniConfigSelector,
    interval: Duration,
) -> Result<watch::Receiver<ClusterView>, FilesError> {
    let sources = read_sources(&paths)?;
    let loaded = load_sources(&sources, node_name, &selector)?;
    let (tx, rx) = watch::channel(loaded.view);
    let interval = interval.max(MIN_RELOAD_INTERVAL);
    let node_name = node_name.to_owned();
    let span = tracing::info_span!("kube_files", node = %node_name);
    let task = async move {
        let mut last = sources;
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let read = {
                let paths = paths.clone();
                tokio::task::spawn_blocking(move || read_sources(&paths)).await
            };
            let sources = match read {
                Ok(Ok(sources)) => sources,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot re-read the Kubernetes files; keeping the last good view");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the Kubernetes file reader failed");
                    continue;
                }
            };
            if sources == last {
                continue;
            }
            match load_sources(&sources, &node_name, &selector) {
                Ok(loaded) => {
                    tracing::info!(ignored = loaded.ignored.len(), "reloaded the Kubernetes files");
                    tx.send_if_modified(|view| {
                        if *view == loaded.view {
                            false
                        } else {
                            *view = loaded.view;
                            true
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the Kubernetes files changed but cannot be used; keeping the last good view");
                }
            }
            last = sources;
        }
    };
    tokio::spawn(tracing::Instrument::instrument(task, span));
    Ok(rx)
}

/// An object this module reads.
#[derive(Debug)]
enum Object {
    /// `ENIConfig`.
    EniConfig(Box<EniConfig>),
    /// `SecurityGroupPolicy`.
    SgPolicy(Box<SecurityGroupPolicy>),
    /// `Node`.
    Node(Box<Node>),
    /// `Pod`.
    Pod(Box<Pod>),
    /// `ServiceAccount`.
    ServiceAccount(Box<ServiceAccount>),
}

impl Object {
    /// (kind, namespace, name); the namespace is empty for cluster-scoped kinds.
    fn key(&self) -> (&'static str, String, String) {
        let (kind, metadata, namespaced) = match self {
            Self::EniConfig(o) => ("ENIConfig", &o.metadata, false),
            Self::SgPolicy(o) => ("SecurityGroupPolicy", &o.metadata, true),
            Self::Node(o) => ("Node", &o.metadata, false),
            Self::Pod(o) => ("Pod", &o.metadata, true),
            Self::ServiceAccount(o) => ("ServiceAccount", &o.metadata, true),
        };
        let namespace = if namespaced {
            metadata.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        };
        (kind, namespace, metadata.name.clone().unwrap_or_default())
    }

    /// `Kind name` or `Kind namespace/name`.
    fn describe(&self) -> String {
        match self.key() {
            (kind, namespace, name) if namespace.is_empty() => format!("{kind} {name}"),
            (kind, namespace, name) => format!("{kind} {namespace}/{name}"),
        }
    }

    /// Gives a namespaced object without a namespace the default one.
    fn default_namespace(mut self) -> Self {
        let metadata = match &mut self {
            Self::SgPolicy(o) => &mut o.metadata,
            Self::Pod(o) => &mut o.metadata,
            Self::ServiceAccount(o) => &mut o.metadata,
            Self::EniConfig(_) | Self::Node(_) => return self,
        };
        if metadata.namespace.as_deref().is_none_or(str::is_empty) {
            metadata.namespace = Some(DEFAULT_NAMESPACE.to_owned());
        }
        self
    }
}

/// A kind this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `ENIConfig`.
    EniConfig,
    /// `SecurityGroupPolicy`.
    SgPolicy,
    /// `Node`.
    Node,
    /// `Pod`.
    Pod,
    /// `ServiceAccount`.
    ServiceAccount,
}

impl Kind {
    /// The kind of `kind`, with its `apiVersion`; `None` for kinds not read here.
    fn of(kind: &str) -> Option<(Self, &'static str)> {
        match kind {
            "ENIConfig" => Some((Self::EniConfig, ENI_CONFIG_API_VERSION)),
            "SecurityGroupPolicy" => Some((Self::SgPolicy, SG_POLICY_API_VERSION)),
            "Node" => Some((Self::Node, "v1")),
            "Pod" => Some((Self::Pod, "v1")),
            "ServiceAccount" => Some((Self::ServiceAccount, "v1")),
            _ => None,
        }
    }

    /// Decodes an object of this kind from a YAML document (errors carry the field path and
    /// line) or from a JSON value (an item of a list).
    fn decode<'de, D: serde::Deserializer<'de>>(self, from: D) -> Result<Object, D::Error> {
        Ok(match self {
            Self::EniConfig => Object::EniConfig(Box::deserialize(from)?),
            Self::SgPolicy => Object::SgPolicy(Box::deserialize(from)?),
            Self::Node => Object::Node(Box::deserialize(from)?),
            Self::Pod => Object::Pod(Box::deserialize(from)?),
            Self::ServiceAccount => Object::ServiceAccount(Box::deserialize(from)?),
        })
    }
}

/// What the first pass decided for a document.
enum Plan {
    /// Nothing to decode (empty, ignored, a list already handled, or an error already reported).
    Skip,
    /// Decode the document as this kind.
    Decode(Kind, String),
}

/// Parses one file's documents into `objects`, `ignored` and `errors`.
fn parse_source(
    path: &Path,
    text: &str,
    objects: &mut Vec<(Origin, Object)>,
    ignored: &mut Vec<IgnoredObject>,
    errors: &mut Vec<DocumentError>,
) {
    let origin = |document: usize, item: Option<usize>| Origin {
        path: path.to_owned(),
        document,
        item,
    };
    // First pass: each document as a plain value, to learn its kind.
    let mut plans = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let at = origin(index + 1, None);
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                // serde_norway repeats a syntax error for every later document: stop at the first.
                errors.push(DocumentError {
                    origin: at,
                    object: None,
                    why: format!("not valid YAML: {e}"),
                });
                break;
            }
        };
        let plan = match &value {
            Value::Null => Plan::Skip,
            Value::Object(map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                read_list(&at, map, objects, ignored, errors);
                Plan::Skip
            }
            other => match classify(&at, other) {
                Ok(Classified::Read(kind, described)) => Plan::Decode(kind, described),
                Ok(Classified::Ignored(object)) => {
                    ignored.push(object);
                    Plan::Skip
                }
                Err(e) => {
                    errors.push(e);
                    Plan::Skip
                }
            },
        };
        plans.push(plan);
    }
    // Second pass: decode straight from YAML, so that errors name the field and the line.
    // Not past the documents the first pass planned: after a syntax error, serde_norway would
    // yield documents forever.
    for (index, document) in serde_norway::Deserializer::from_str(text).take(plans.len()).enumerate() {
        let Some(Plan::Decode(kind, described)) = plans.get(index) else {
            continue;
        };
        match kind.decode(document) {
            Ok(object) => objects.push((origin(index + 1, None), object.default_namespace())),
            Err(e) => errors.push(DocumentError {
                origin: origin(index + 1, None),
                object: Some(described.clone()),
                why: e.to_string(),
            }),
        }
    }
}

/// Reads the items of a `kind: List` document (what `kubectl get -o yaml` prints).
fn read_list(
    at: &Origin,
    list: &Map<String, Value>,
    objects: &mut Vec<(Origin, Object)>,
    ignored: &mut Vec<IgnoredObject>,
    errors: &mut Vec<DocumentError>,
) {
    let items = match list.get("items") {
        Some(Value::Array(items)) => items.as_slice(),
        Some(Value::Null) | None => &[],
        Some(_) => {
            errors.push(DocumentError {
                origin: at.clone(),
                object: Some("List".to_owned()),
                why: "items: expected a list of objects".to_owned(),
            });
            return;
        }
    };
    for (index, item) in items.iter().enumerate() {
        let at = Origin {
            item: Some(index + 1),
            ..at.clone()
        };
        match classify(&at, item) {
            Ok(Classified::Read(kind, described)) => match kind.decode(item) {
                Ok(object) => objects.push((at, object.default_namespace())),
                Err(e) => errors.push(DocumentError {
                    origin: at,
                    object: Some(described),
                    why: e.to_string(),
                }),
            },
            Ok(Classified::Ignored(object)) => ignored.push(object),
            Err(e) => errors.push(e),
        }
    }
}

/// What a document is.
enum Classified {
    /// A kind read here, and `Kind name` for messages.
    Read(Kind, String),
    /// Another kind.
    Ignored(IgnoredObject),
}

/// Checks the envelope (`kind`, `apiVersion`, `metadata.name`) and, for AWS's kinds, the keys of
/// `spec`.
fn classify(at: &Origin, value: &Value) -> Result<Classified, DocumentError> {
    let error = |object: Option<String>, why: String| DocumentError {
        origin: at.clone(),
        object,
        why,
    };
    let Value::Object(map) = value else {
        return Err(error(
            None,
            format!(
                "expected an object with apiVersion, kind and metadata, found {}",
                type_name(value)
            ),
        ));
    };
    let kind = match map.get("kind") {
        Some(Value::String(kind)) if !kind.is_empty() => kind.as_str(),
        _ => return Err(error(None, "kind: missing; every object has a kind".to_owned())),
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let metadata = map.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let described = if name.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind} {name}")
    };
    let Some((kind_read, expected_api)) = Kind::of(kind) else {
        return Ok(Classified::Ignored(IgnoredObject {
            origin: at.clone(),
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
        }));
    };
    if api_version != expected_api {
        let found = if api_version.is_empty() {
            "none".to_owned()
        } else {
            format!("{api_version:?}")
        };
        return Err(error(
            Some(described),
            format!("apiVersion: a {kind} has apiVersion {expected_api}, found {found}"),
        ));
    }
    if name.is_empty() {
        return Err(error(
            Some(described),
            "metadata.name: missing; every object needs a name".to_owned(),
        ));
    }
    let spec = map.get("spec");
    let checked = match kind_read {
        Kind::EniConfig => check_eni_config_spec(spec),
        Kind::SgPolicy => check_sg_policy_spec(spec),
        Kind::Node | Kind::Pod | Kind::ServiceAccount => Ok(()),
    };
    checked
        .and_then(|()| check_string_fields(kind_read, map))
        .map_err(|why| error(Some(described.clone()), why))?;
    Ok(Classified::Read(kind_read, described))
}

/// Refuses a number or a boolean where Kubernetes wants a string, in the fields this module reads.
/// YAML reads `version: 2` as a number, which the API server refuses in a label ("cannot
/// unmarshal number into ... of type string"), but serde_norway would quietly read as "2".
fn check_string_fields(kind: Kind, object: &Map<String, Value>) -> Result<(), String> {
    let metadata = object.get("metadata");
    for key in ["name", "namespace"] {
        expect_string(&format!("metadata.{key}"), field(metadata, key))?;
    }
    for key in ["labels", "annotations"] {
        expect_string_map(&format!("metadata.{key}"), field(metadata, key))?;
    }
    let spec = object.get("spec");
    match kind {
        Kind::EniConfig => {
            expect_string("spec.subnet", field(spec, "subnet"))?;
            expect_string_list("spec.securityGroups", field(spec, "securityGroups"))?;
        }
        Kind::SgPolicy => {
            for selector in ["podSelector", "serviceAccountSelector"] {
                let path = format!("spec.{selector}");
                let selector = field(spec, selector);
                expect_string_map(&format!("{path}.matchLabels"), field(selector, "matchLabels"))?;
                if let Some(Value::Array(requirements)) = field(selector, "matchExpressions") {
                    for (index, requirement) in requirements.iter().enumerate() {
                        let path = format!("{path}.matchExpressions[{index}]");
                        expect_string(&format!("{path}.key"), requirement.get("key"))?;
                        expect_string(&format!("{path}.operator"), requirement.get("operator"))?;
                        expect_string_list(&format!("{path}.values"), requirement.get("values"))?;
                    }
                }
            }
            let groups = field(spec, "securityGroups");
            expect_string_list("spec.securityGroups.groupIds", field(groups, "groupIds"))?;
        }
        Kind::Pod => {
            expect_string("spec.nodeName", field(spec, "nodeName"))?;
            expect_string("spec.serviceAccountName", field(spec, "serviceAccountName"))?;
        }
        Kind::Node | Kind::ServiceAccount => {}
    }
    Ok(())
}

/// `value.key`, if `value` is an object with that key.
fn field<'a>(value: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    value.and_then(|v| v.get(key))
}

/// A string, or absent / null.
fn expect_string(path: &str, value: Option<&Value>) -> Result<(), String> {
    match value {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(scalar @ (Value::Number(_) | Value::Bool(_))) => Err(format!(
            "{path}: expected a string, found {} {scalar}; quote it (\"{scalar}\")",
            type_name(scalar)
        )),
        // The decoder reports other shapes, with the line.
        Some(_) => Ok(()),
    }
}

/// A map of strings, or absent / null.
fn expect_string_map(path: &str, value: Option<&Value>) -> Result<(), String> {
    match value {
        Some(Value::Object(map)) => map
            .iter()
            .try_for_each(|(key, value)| expect_string(&format!("{path}.{key}"), Some(value))),
        _ => Ok(()),
    }
}

/// A list of strings, or absent / null.
fn expect_string_list(path: &str, value: Option<&Value>) -> Result<(), String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .try_for_each(|(index, item)| expect_string(&format!("{path}[{index}]"), Some(item))),
        _ => Ok(()),
    }
}

/// The keys of an `ENIConfig`'s spec (the types are the decoder's business).
fn check_eni_config_spec(spec: Option<&Value>) -> Result<(), String> {
    match spec {
        Some(Value::Object(spec)) => check_keys("spec", spec, ENI_CONFIG_SPEC_KEYS),
        // The decoder says what is missing.
        _ => Ok(()),
    }
}

/// The keys of a `SecurityGroupPolicy`'s spec, its selectors and groups; `groupIds` not empty.
fn check_sg_policy_spec(spec: Option<&Value>) -> Result<(), String> {
    let Some(Value::Object(spec)) = spec else {
        return Ok(());
    };
    check_keys("spec", spec, SG_POLICY_SPEC_KEYS)?;
    for field in ["podSelector", "serviceAccountSelector"] {
        let Some(Value::Object(selector)) = spec.get(field) else {
            continue;
        };
        let path = format!("spec.{field}");
        check_keys(&path, selector, SELECTOR_KEYS)?;
        if let Some(Value::Array(requirements)) = selector.get("matchExpressions") {
            for (index, requirement) in requirements.iter().enumerate() {
                if let Value::Object(requirement) = requirement {
                    check_keys(
                        &format!("{path}.matchExpressions[{index}]"),
                        requirement,
                        REQUIREMENT_KEYS,
                    )?;
                }
            }
        }
    }
    if let Some(Value::Object(groups)) = spec.get("securityGroups") {
        check_keys("spec.securityGroups", groups, GROUP_IDS_KEYS)?;
        if let Some(Value::Array(ids)) = groups.get("groupIds")
            && ids.is_empty()
        {
            return Err("spec.securityGroups.groupIds: empty; the CRD requires at least one group id".to_owned());
        }
    }
    Ok(())
}

/// Refuses a key not in `allowed`, naming it and the allowed ones.
fn check_keys(path: &str, map: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match map.keys().find(|key| !allowed.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => Err(format!(
            "{path}.{key}: unknown field; {path} has {}",
            allowed.join(", ")
        )),
    }
}

/// A JSON type's name, for messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
