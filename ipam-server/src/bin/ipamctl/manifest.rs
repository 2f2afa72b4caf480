//! Manifests for `ipamctl apply -f` / `delete -f`: AWS's `ENIConfig` and `SecurityGroupPolicy`
//! exactly as users keep them for Kubernetes, and this project's own `Pool`.
//!
//! ```text
//!   file / stdin ──parse_source──▶ documents (YAML `---` stream, or JSON) ──object──▶ Object
//!                                    `kind: List` expands to its items          (typed, checked)
//!   [Object] + subnet configs the server knows ──plan_apply──▶ ApplyPlan (pools, subnet configs,
//!                                                                         policies, in that order)
//! ```
//!
//! Kubernetes' own fields are tolerated wherever `kubectl get -o yaml` puts them (any `metadata`
//! key, `status`), but an unknown key in a `spec` is an error naming the key and the document: a
//! typo there would otherwise change what a node gets without anyone noticing.
//!
//! An `ENIConfig` names only a subnet id. The CIDR and availability zone of that subnet come from a
//! `Pool` document's `spec.subnets` (in the same apply) or from a subnet config the server already
//! records with that subnet id.
//!
//! Checked here, before anything is sent: document structure, names, EC2 subnet ids, zones, CIDRs,
//! label selectors. Not checked here: the form of security group ids, which the server's domain
//! decides (AWS's CRDs accept any string there).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;

use ipam_core::cidr::Ipv4Cidr;
use ipam_core::policy::LabelSelector;
use ipam_core::policy::LabelSelectorRequirement;
use ipam_core::policy::PolicyError;
use ipam_core::policy::SelectorOperator;
use ipam_core::policy::SgPolicy;
use ipam_core::validate;
use ipam_proto::ipam::v1 as pb;
use serde::Deserialize;
use serde::Deserializer;
use serde::de;
use serde::de::MapAccess;
use serde::de::SeqAccess;
use serde::de::Visitor;
use serde_json::Map;
use serde_json::Value;

/// The `apiVersion` of AWS's `ENIConfig` (amazon-vpc-cni-k8s).
pub const ENI_CONFIG_API_VERSION: &str = "crd.k8s.amazonaws.com/v1alpha1";
/// The `apiVersion` of AWS's `SecurityGroupPolicy` (amazon-vpc-resource-controller-k8s).
pub const SG_POLICY_API_VERSION: &str = "vpcresources.k8s.aws/v1beta1";
/// The `apiVersion` of this project's `Pool`.
pub const POOL_API_VERSION: &str = "ipam.eks.local/v1alpha1";
/// The namespace of a `SecurityGroupPolicy` without `metadata.namespace`, as kubectl's default.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The top-level keys of a Kubernetes object.
const OBJECT_KEYS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
/// The keys of an `ENIConfig`'s spec.
const ENI_CONFIG_SPEC_KEYS: &[&str] = &["subnet", "securityGroups"];
/// The keys of a `SecurityGroupPolicy`'s spec.
const SG_POLICY_SPEC_KEYS: &[&str] = &["podSelector", "serviceAccountSelector", "securityGroups"];
/// The keys of a `SecurityGroupPolicy`'s `spec.securityGroups`.
const GROUP_IDS_KEYS: &[&str] = &["groupIds"];
/// The keys of a Kubernetes `LabelSelector`.
const SELECTOR_KEYS: &[&str] = &["matchLabels", "matchExpressions"];
/// The keys of a Kubernetes `LabelSelectorRequirement`.
const REQUIREMENT_KEYS: &[&str] = &["key", "operator", "values"];
/// The keys of a `Pool`'s spec.
const POOL_SPEC_KEYS: &[&str] = &["cidr", "subnets"];
/// The keys of one of a `Pool`'s `spec.subnets`.
const POOL_SUBNET_KEYS: &[&str] = &["id", "cidr", "availabilityZone"];

/// Where an object was read: the source (a file name, or `-` for stdin), the document's position in
/// it (from 1, counting empty documents) and, inside a `kind: List`, the item's position (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file name as given, `-` for stdin.
    pub source: String,
    /// The document's position in the source, from 1.
    pub document: usize,
    /// The item's position in a `kind: List` document, from 1.
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = if self.source == "-" { "<stdin>" } else { &self.source };
        write!(f, "{source}: document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        Ok(())
    }
}

/// A manifest that cannot be used: where, which object, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The document.
    pub origin: Origin,
    /// The object's kind and name (`ENIConfig us-west-2a`), when they could be read.
    pub object: Option<String>,
    /// The field, as a path (`spec.podSelector.matchLabels`), when one is to blame.
    pub field: Option<String>,
    /// What is wrong, and what would be right.
    pub why: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.why)
    }
}

impl std::error::Error for ManifestError {}

/// A `Pool`: a secondary CIDR of the VPC, and the EC2 subnets carved from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolObject {
    /// Where it was read.
    pub origin: Origin,
    /// `metadata.name` (ipamctl's label only; the server keys pools by CIDR).
    pub name: String,
    /// `spec.cidr`.
    pub cidr: Ipv4Cidr,
    /// `spec.subnets`.
    pub subnets: Vec<PoolSubnet>,
}

/// One EC2 subnet of a `Pool`: what an `ENIConfig` naming its id needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSubnet {
    /// `id`: the EC2 subnet id.
    pub id: String,
    /// `cidr`: the subnet's CIDR, inside the pool's.
    pub cidr: Ipv4Cidr,
    /// `availabilityZone`.
    pub availability_zone: String,
}

/// An `ENIConfig` (crd.k8s.amazonaws.com/v1alpha1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniConfigObject {
    /// Where it was read.
    pub origin: Origin,
    /// `metadata.name`, usually the availability zone.
    pub name: String,
    /// `spec.subnet`: the EC2 subnet id.
    pub subnet_id: String,
    /// `spec.securityGroups`.
    pub security_groups: Vec<String>,
}

/// A `SecurityGroupPolicy` (vpcresources.k8s.aws/v1beta1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgPolicyObject {
    /// Where it was read.
    pub origin: Origin,
    /// The policy, namespace and name included.
    pub policy: SgPolicy,
}

/// One object of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// `kind: Pool`.
    Pool(PoolObject),
    /// `kind: ENIConfig`.
    EniConfig(EniConfigObject),
    /// `kind: SecurityGroupPolicy`.
    SgPolicy(SgPolicyObject),
}

impl Object {
    /// Where the object was read.
    pub fn origin(&self) -> &Origin {
        match self {
            Self::Pool(pool) => &pool.origin,
            Self::EniConfig(config) => &config.origin,
            Self::SgPolicy(policy) => &policy.origin,
        }
    }

    /// The name ipamctl prints: `pool/NAME`, `eniconfig/NAME`, `securitygrouppolicy/NAMESPACE/NAME`.
    pub fn display_name(&self) -> String {
        match self {
            Self::Pool(pool) => format!("pool/{}", pool.name),
            Self::EniConfig(config) => format!("eniconfig/{}", config.name),
            Self::SgPolicy(policy) => format!("securitygrouppolicy/{}/{}", policy.policy.namespace, policy.policy.name),
        }
    }

    /// The kind and name as the manifest spells them, for error messages.
    fn kind_and_name(&self) -> String {
        match self {
            Self::Pool(pool) => format!("Pool {}", pool.name),
            Self::EniConfig(config) => format!("ENIConfig {}", config.name),
            Self::SgPolicy(policy) => format!("SecurityGroupPolicy {}/{}", policy.policy.namespace, policy.policy.name),
        }
    }
}

/// What `apply` sends, in order: pools, then subnet configs, then policies.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApplyPlan {
    /// Pools by name, with their CIDR.
    pub pools: Vec<(String, Ipv4Cidr)>,
    /// Subnet configs (ENIConfigs with their subnet's CIDR and zone filled in).
    pub subnet_configs: Vec<pb::SubnetConfig>,
    /// Security group policies.
    pub policies: Vec<pb::SgPolicy>,
}

/// Parses every source, then checks what spans documents (duplicates, a subnet id given two
/// CIDRs). Returns every problem found, not only the first: nothing may be sent if one is wrong.
///
/// `sources` are (name, text) pairs; `default_namespace` is the namespace of a
/// `SecurityGroupPolicy` without one.
pub fn parse_all(sources: &[(String, String)], default_namespace: &str) -> Result<Vec<Object>, Vec<ManifestError>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in sources {
        match parse_source(name, text, default_namespace) {
            Ok(mut parsed) => objects.append(&mut parsed),
            Err(mut failed) => errors.append(&mut failed),
        }
    }
    errors.extend(cross_check(&objects));
    if errors.is_empty() { Ok(objects) } else { Err(errors) }
}

/// Parses one source: a YAML stream of documents separated by `---`, or JSON (one object, an
/// array of objects, or several objects one after another). Empty documents are skipped.
pub fn parse_source(source: &str, text: &str, default_namespace: &str) -> Result<Vec<Object>, Vec<ManifestError>> {
    let documents = read_documents(source, text).map_err(|e| vec![e])?;
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        let origin = Origin {
            source: source.to_owned(),
            document: index + 1,
            item: None,
        };
        match document {
            Value::Null => {}
            Value::Array(items) => expand_items(&origin, &items, default_namespace, &mut objects, &mut errors),
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                match list_items(&origin, map) {
                    Ok(items) => expand_items(&origin, items, default_namespace, &mut objects, &mut errors),
                    Err(e) => errors.push(e),
                }
            }
            other => match object(&origin, &other, default_namespace) {
                Ok(found) => objects.push(found),
                Err(e) => errors.push(e),
            },
        }
    }
    if errors.is_empty() { Ok(objects) } else { Err(errors) }
}

/// Turns the objects into what `apply` sends. `known` are the subnet configs the server records:
/// an `ENIConfig` whose subnet no `Pool` of this apply lists takes the CIDR and zone of a known
/// config with the same subnet id.
pub fn plan_apply(objects: &[Object], known: &[pb::SubnetConfig]) -> Result<ApplyPlan, Vec<ManifestError>> {
    let mut subnets: HashMap<&str, (&PoolSubnet, &PoolObject)> = HashMap::new();
    for object in objects {
        if let Object::Pool(pool) = object {
            for subnet in &pool.subnets {
                subnets.insert(subnet.id.as_str(), (subnet, pool));
            }
        }
    }
    let mut plan = ApplyPlan::default();
    let mut errors = Vec::new();
    for object in objects {
        match object {
            Object::Pool(pool) => plan.pools.push((pool.name.clone(), pool.cidr)),
            Object::EniConfig(config) => {
                let found = subnets
                    .get(config.subnet_id.as_str())
                    .map(|(subnet, _)| (subnet.cidr.to_string(), subnet.availability_zone.clone()))
                    .or_else(|| {
                        known
                            .iter()
                            .find(|k| k.subnet_id == config.subnet_id)
                            .map(|k| (k.subnet_cidr.clone(), k.availability_zone.clone()))
                    });
                match found {
                    Some((cidr, az)) => plan.subnet_configs.push(pb::SubnetConfig {
                        name: config.name.clone(),
                        subnet_id: config.subnet_id.clone(),
                        subnet_cidr: cidr,
                        availability_zone: az,
                        security_group_ids: config.security_groups.clone(),
                        updated_at_unix_ms: 0,
                    }),
                    None => errors.push(ManifestError {
                        origin: config.origin.clone(),
                        object: Some(object.kind_and_name()),
                        field: Some("spec.subnet".to_owned()),
                        why: format!(
                            "subnet {:?} is in no Pool: an ENIConfig names only a subnet id, so its CIDR and \
                             availability zone must come from a Pool; add it to a Pool document's spec.subnets \
                             (apiVersion: {POOL_API_VERSION}, kind: Pool, spec.subnets: [{{id: {}, cidr: ..., \
                             availabilityZone: ...}}]) and apply both together",
                            config.subnet_id, config.subnet_id
                        ),
                    }),
                }
            }
            Object::SgPolicy(policy) => plan.policies.push(sg_policy_to_pb(&policy.policy)),
        }
    }
    if errors.is_empty() { Ok(plan) } else { Err(errors) }
}

/// The wire form of a policy.
pub fn sg_policy_to_pb(policy: &SgPolicy) -> pb::SgPolicy {
    pb::SgPolicy {
        namespace: policy.namespace.clone(),
        name: policy.name.clone(),
        pod_selector: policy.pod_selector.as_ref().map(selector_to_pb),
        service_account_selector: policy.service_account_selector.as_ref().map(selector_to_pb),
        security_group_ids: policy.security_groups.clone(),
        updated_at_unix_ms: 0,
    }
}

/// The wire form of a label selector.
fn selector_to_pb(selector: &LabelSelector) -> pb::LabelSelector {
    pb::LabelSelector {
        match_labels: selector
            .match_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        match_expressions: selector
            .match_expressions
            .iter()
            .map(|r| pb::LabelSelectorRequirement {
                key: r.key.clone(),
                operator: match r.operator {
                    SelectorOperator::In => pb::LabelSelectorOperator::In,
                    SelectorOperator::NotIn => pb::LabelSelectorOperator::NotIn,
                    SelectorOperator::Exists => pb::LabelSelectorOperator::Exists,
                    SelectorOperator::DoesNotExist => pb::LabelSelectorOperator::DoesNotExist,
                } as i32,
                values: r.values.clone(),
            })
            .collect(),
    }
}

/// Splits a source into documents, as JSON values. JSON when the text starts with `{` or `[`
/// (better messages for JSON's mistakes), YAML otherwise.
fn read_documents(source: &str, text: &str) -> Result<Vec<Value>, ManifestError> {
    let syntax = |document: usize, why: String| ManifestError {
        origin: Origin {
            source: source.to_owned(),
            document,
            item: None,
        },
        object: None,
        field: None,
        why,
    };
    let mut documents = Vec::new();
    if text.trim_start().starts_with(['{', '[']) {
        for value in serde_json::Deserializer::from_str(text).into_iter::<Strict>() {
            let value = value.map_err(|e| syntax(documents.len() + 1, format!("not valid JSON: {e}")))?;
            documents.push(value.0);
        }
    } else {
        for document in serde_norway::Deserializer::from_str(text) {
            // serde_norway repeats a syntax error forever: stop at the first.
            let value = Strict::deserialize(document)
                .map_err(|e| syntax(documents.len() + 1, format!("not valid YAML: {e}")))?;
            documents.push(value.0);
        }
    }
    Ok(documents)
}

/// A JSON value read from YAML or JSON, refusing a key repeated in one mapping (as Kubernetes'
/// strict decoding does): `serde_json::Value` would silently keep the last one.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

/// Builds a [`Strict`] value.
struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Strict::deserialize(deserializer).map(|s| s.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Strict>()? {
            items.push(item.0);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<Strict>()? {
            let key = match key.0 {
                Value::String(key) => key,
                // YAML allows `1: x`; Kubernetes reads such a key as the string "1".
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(de::Error::custom(format!(
                        "a mapping key must be a string, found {other}"
                    )));
                }
            };
            let value = access.next_value::<Strict>()?;
            if map.insert(key.clone(), value.0).is_some() {
                return Err(de::Error::custom(format!("the key {key:?} is repeated in one mapping")));
            }
        }
        Ok(Value::Object(map))
    }
}

/// The `items` of a `kind: List` document (what `kubectl get -o yaml` prints for several objects).
fn list_items<'a>(origin: &Origin, list: &'a Map<String, Value>) -> Result<&'a [Value], ManifestError> {
    let error = |field: &str, why: &str| ManifestError {
        origin: origin.clone(),
        object: Some("List".to_owned()),
        field: Some(field.to_owned()),
        why: why.to_owned(),
    };
    match list.get("apiVersion").and_then(Value::as_str) {
        Some("v1") => {}
        _ => return Err(error("apiVersion", "a kind: List document has apiVersion: v1")),
    }
    match list.get("items") {
        Some(Value::Array(items)) => Ok(items),
        Some(Value::Null) | None => Ok(&[]),
        Some(_) => Err(error("items", "expected a list of objects")),
    }
}

/// Reads the items of a list (a `kind: List` or a JSON array), each with its own item number.
fn expand_items(
    origin: &Origin,
    items: &[Value],
    default_namespace: &str,
    objects: &mut Vec<Object>,
    errors: &mut Vec<ManifestError>,
) {
    for (index, item) in items.iter().enumerate() {
        let origin = Origin {
            item: Some(index + 1),
            ..origin.clone()
        };
        match object(&origin, item, default_namespace) {
            Ok(found) => objects.push(found),
            Err(e) => errors.push(e),
        }
    }
}

/// Reads one object.
fn object(origin: &Origin, value: &Value, default_namespace: &str) -> Result<Object, ManifestError> {
    let mut at = Cursor { origin, object: None };
    let Value::Object(map) = value else {
        return Err(at.error(
            None,
            format!(
                "expected an object with apiVersion, kind, metadata and spec, found {}",
                type_name(value)
            ),
        ));
    };
    let kind = match map.get("kind") {
        Some(Value::String(kind)) if !kind.is_empty() => kind.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(at.error(
                Some("kind"),
                "missing; expected ENIConfig, SecurityGroupPolicy or Pool".to_owned(),
            ));
        }
        Some(other) => return Err(at.error(Some("kind"), format!("expected a string, found {}", type_name(other)))),
    };
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    at.object = Some(if name.is_empty() {
        kind.clone()
    } else {
        format!("{kind} {name}")
    });
    let expected_api = match kind.as_str() {
        "ENIConfig" => ENI_CONFIG_API_VERSION,
        "SecurityGroupPolicy" => SG_POLICY_API_VERSION,
        "Pool" => POOL_API_VERSION,
        other => {
            return Err(at.error(
                Some("kind"),
                format!(
                    "unknown kind {other:?}; ipamctl reads ENIConfig ({ENI_CONFIG_API_VERSION}), \
                     SecurityGroupPolicy ({SG_POLICY_API_VERSION}) and Pool ({POOL_API_VERSION})"
                ),
            ));
        }
    };
    match map.get("apiVersion") {
        Some(Value::String(api)) if api == expected_api => {}
        Some(Value::String(api)) => {
            return Err(at.error(
                Some("apiVersion"),
                format!("{kind} has apiVersion {expected_api}, not {api:?}"),
            ));
        }
        _ => {
            return Err(at.error(
                Some("apiVersion"),
                format!("missing; {kind} has apiVersion {expected_api}"),
            ));
        }
    }
    at.check_keys("", map, OBJECT_KEYS)?;
    let metadata = match map.get("metadata") {
        Some(Value::Object(metadata)) => metadata,
        Some(Value::Null) | None => {
            return Err(at.error(Some("metadata"), "missing; metadata.name is required".to_owned()));
        }
        Some(other) => {
            return Err(at.error(
                Some("metadata"),
                format!("expected an object, found {}", type_name(other)),
            ));
        }
    };
    let name = match metadata.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(Value::String(_)) | Some(Value::Null) | None => {
            return Err(at.error(Some("metadata.name"), "missing; every object needs a name".to_owned()));
        }
        Some(other) => {
            return Err(at.error(
                Some("metadata.name"),
                format!("expected a string, found {}", type_name(other)),
            ));
        }
    };
    let spec = match map.get("spec") {
        Some(Value::Object(spec)) => spec,
        Some(Value::Null) | None => return Err(at.error(Some("spec"), format!("missing; a {kind} needs a spec"))),
        Some(other) => return Err(at.error(Some("spec"), format!("expected an object, found {}", type_name(other)))),
    };
    match kind.as_str() {
        "ENIConfig" => eni_config(&at, name, spec).map(Object::EniConfig),
        "SecurityGroupPolicy" => {
            let namespace = match metadata.get("namespace") {
                Some(Value::String(namespace)) if !namespace.is_empty() => namespace.clone(),
                Some(Value::String(_)) | Some(Value::Null) | None => default_namespace.to_owned(),
                Some(other) => {
                    return Err(at.error(
                        Some("metadata.namespace"),
                        format!("expected a string, found {}", type_name(other)),
                    ));
                }
            };
            at.object = Some(format!("{kind} {namespace}/{name}"));
            sg_policy(&at, namespace, name, spec).map(Object::SgPolicy)
        }
        _ => pool(&at, name, spec).map(Object::Pool),
    }
}

/// Reads an `ENIConfig`'s spec.
fn eni_config(at: &Cursor<'_>, name: String, spec: &Map<String, Value>) -> Result<EniConfigObject, ManifestError> {
    at.check_keys("spec", spec, ENI_CONFIG_SPEC_KEYS)?;
    validate::object_name("ENIConfig name", &name).map_err(|e| at.error(Some("metadata.name"), e.to_string()))?;
    let subnet_id = at.required_string(
        spec,
        "spec",
        "subnet",
        "the EC2 subnet id, e.g. subnet-0123456789abcdef0",
    )?;
    validate::aws_id("subnet", &subnet_id).map_err(|e| at.error(Some("spec.subnet"), e.to_string()))?;
    let security_groups = at.string_list(spec.get("securityGroups"), "spec.securityGroups")?;
    Ok(EniConfigObject {
        origin: at.origin.clone(),
        name,
        subnet_id,
        security_groups,
    })
}

/// Reads a `SecurityGroupPolicy`'s spec.
fn sg_policy(
    at: &Cursor<'_>,
    namespace: String,
    name: String,
    spec: &Map<String, Value>,
) -> Result<SgPolicyObject, ManifestError> {
    at.check_keys("spec", spec, SG_POLICY_SPEC_KEYS)?;
    let pod_selector = at.selector(spec.get("podSelector"), "spec.podSelector")?;
    let service_account_selector = at.selector(spec.get("serviceAccountSelector"), "spec.serviceAccountSelector")?;
    let security_groups = match spec.get("securityGroups") {
        Some(Value::Object(groups)) => {
            at.check_keys("spec.securityGroups", groups, GROUP_IDS_KEYS)?;
            at.string_list(groups.get("groupIds"), "spec.securityGroups.groupIds")?
        }
        Some(Value::Null) | None => {
            return Err(at.error(
                Some("spec.securityGroups.groupIds"),
                "missing; a SecurityGroupPolicy lists at least one security group id".to_owned(),
            ));
        }
        Some(other) => {
            return Err(at.error(
                Some("spec.securityGroups"),
                format!("expected an object with groupIds, found {}", type_name(other)),
            ));
        }
    };
    let policy = SgPolicy {
        namespace,
        name,
        pod_selector,
        service_account_selector,
        security_groups,
    };
    match policy.validate() {
        // The form of group ids is the server's decision (AWS's CRD accepts any string).
        Ok(()) | Err(PolicyError::InvalidSecurityGroupId { .. }) => {}
        Err(e) => {
            let field = match e {
                PolicyError::EmptyNamespace { .. } | PolicyError::InvalidNamespace { .. } => "metadata.namespace",
                PolicyError::EmptyName { .. } | PolicyError::InvalidName { .. } => "metadata.name",
                PolicyError::NoSecurityGroups { .. } | PolicyError::TooManySecurityGroups { .. } => {
                    "spec.securityGroups.groupIds"
                }
                _ => "spec",
            };
            return Err(at.error(Some(field), e.to_string()));
        }
    }
    Ok(SgPolicyObject {
        origin: at.origin.clone(),
        policy,
    })
}

/// Reads a `Pool`'s spec.
fn pool(at: &Cursor<'_>, name: String, spec: &Map<String, Value>) -> Result<PoolObject, ManifestError> {
    at.check_keys("spec", spec, POOL_SPEC_KEYS)?;
    let cidr = at.cidr(spec, "spec", "cidr", "the pool's CIDR, e.g. 100.64.0.0/16")?;
    if !ipam_core::cidr::is_vpc_range(&cidr) {
        return Err(at.error(
            Some("spec.cidr"),
            format!("{cidr} is not a range AWS accepts for a VPC: use RFC 1918 space, 100.64.0.0/10 or 198.19.0.0/16"),
        ));
    }
    let items = match spec.get("subnets") {
        Some(Value::Array(items)) => items.as_slice(),
        Some(Value::Null) | None => &[],
        Some(other) => {
            return Err(at.error(
                Some("spec.subnets"),
                format!("expected a list, found {}", type_name(other)),
            ));
        }
    };
    let mut subnets: Vec<PoolSubnet> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("spec.subnets[{index}]");
        let Value::Object(item) = item else {
            return Err(at.error(
                Some(&path),
                format!(
                    "expected an object with id, cidr and availabilityZone, found {}",
                    type_name(item)
                ),
            ));
        };
        at.check_keys(&path, item, POOL_SUBNET_KEYS)?;
        let id = at.required_string(item, &path, "id", "the EC2 subnet id, e.g. subnet-0123456789abcdef0")?;
        validate::aws_id("subnet", &id).map_err(|e| at.error(Some(&format!("{path}.id")), e.to_string()))?;
        let subnet_cidr = at.cidr(item, &path, "cidr", "the subnet's CIDR, e.g. 100.64.0.0/19")?;
        if !cidr.contains_cidr(&subnet_cidr) {
            return Err(at.error(
                Some(&format!("{path}.cidr")),
                format!("{subnet_cidr} does not lie inside the pool's CIDR {cidr}"),
            ));
        }
        let availability_zone = at.required_string(item, &path, "availabilityZone", "the zone, e.g. us-west-2a")?;
        validate::az(&availability_zone)
            .map_err(|e| at.error(Some(&format!("{path}.availabilityZone")), e.to_string()))?;
        if let Some(other) = subnets.iter().find(|s| s.id == id || s.cidr.overlaps(&subnet_cidr)) {
            return Err(at.error(
                Some(&path),
                format!(
                    "subnet {id} ({subnet_cidr}) repeats or overlaps subnet {} ({}) of the same pool",
                    other.id, other.cidr
                ),
            ));
        }
        subnets.push(PoolSubnet {
            id,
            cidr: subnet_cidr,
            availability_zone,
        });
    }
    Ok(PoolObject {
        origin: at.origin.clone(),
        name,
        cidr,
        subnets,
    })
}

/// Checks that span documents: an object defined twice, a subnet id given two CIDRs or zones.
fn cross_check(objects: &[Object]) -> Vec<ManifestError> {
    let mut errors = Vec::new();
    let mut seen: BTreeMap<String, &Origin> = BTreeMap::new();
    let mut subnets: BTreeMap<&str, (&PoolSubnet, &PoolObject)> = BTreeMap::new();
    for object in objects {
        let key = object.display_name();
        if let Some(first) = seen.get(&key) {
            errors.push(ManifestError {
                origin: object.origin().clone(),
                object: Some(object.kind_and_name()),
                field: Some("metadata.name".to_owned()),
                why: format!("defined twice; first in {first}"),
            });
        } else {
            seen.insert(key, object.origin());
        }
        if let Object::Pool(pool) = object {
            for subnet in &pool.subnets {
                match subnets.get(subnet.id.as_str()) {
                    Some((known, other))
                        if known.cidr != subnet.cidr || known.availability_zone != subnet.availability_zone =>
                    {
                        errors.push(ManifestError {
                            origin: pool.origin.clone(),
                            object: Some(object.kind_and_name()),
                            field: Some("spec.subnets".to_owned()),
                            why: format!(
                                "subnet {} is {} in {} but {} in Pool {} ({})",
                                subnet.id, subnet.cidr, subnet.availability_zone, known.cidr, other.name, other.origin
                            ),
                        });
                    }
                    Some(_) => {}
                    None => {
                        subnets.insert(subnet.id.as_str(), (subnet, pool));
                    }
                }
            }
        }
    }
    errors
}

/// The document and object being read, for errors.
struct Cursor<'a> {
    /// The document.
    origin: &'a Origin,
    /// The object's kind and name, once known.
    object: Option<String>,
}

impl Cursor<'_> {
    /// An error at `field` (a full path).
    fn error(&self, field: Option<&str>, why: String) -> ManifestError {
        ManifestError {
            origin: self.origin.clone(),
            object: self.object.clone(),
            field: field.map(str::to_owned),
            why,
        }
    }

    /// Refuses a key of `map` (at `path`) that is not in `allowed`.
    fn check_keys(&self, path: &str, map: &Map<String, Value>, allowed: &[&str]) -> Result<(), ManifestError> {
        match map.keys().find(|key| !allowed.contains(&key.as_str())) {
            None => Ok(()),
            Some(key) => Err(self.error(
                Some(&join(path, key)),
                format!("unknown field; expected one of: {}", allowed.join(", ")),
            )),
        }
    }

    /// A required, non-empty string `map[key]`; `hint` says what it is.
    fn required_string(
        &self,
        map: &Map<String, Value>,
        path: &str,
        key: &str,
        hint: &str,
    ) -> Result<String, ManifestError> {
        let field = join(path, key);
        match map.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) | Some(Value::Null) | None => {
                Err(self.error(Some(&field), format!("missing; {hint}")))
            }
            Some(other) => Err(self.error(Some(&field), format!("expected a string, found {}", type_name(other)))),
        }
    }

    /// A required CIDR `map[key]`.
    fn cidr(&self, map: &Map<String, Value>, path: &str, key: &str, hint: &str) -> Result<Ipv4Cidr, ManifestError> {
        let text = self.required_string(map, path, key, hint)?;
        text.parse()
            .map_err(|e: ipam_core::DomainError| self.error(Some(&join(path, key)), e.to_string()))
    }

    /// An optional list of strings (absent or null: empty, as in Go).
    fn string_list(&self, value: Option<&Value>, path: &str) -> Result<Vec<String>, ManifestError> {
        match value {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(index, item)| self.label_string(item, &format!("{path}[{index}]")))
                .collect(),
            Some(other) => Err(self.error(
                Some(path),
                format!("expected a list of strings, found {}", type_name(other)),
            )),
        }
    }

    /// A string where Kubernetes wants one; a YAML scalar that became a number or a boolean gets a
    /// hint to quote it.
    fn label_string(&self, value: &Value, path: &str) -> Result<String, ManifestError> {
        match value {
            Value::String(s) => Ok(s.clone()),
            Value::Bool(_) | Value::Number(_) => Err(self.error(
                Some(path),
                format!(
                    "expected a string, found {} {value}; quote it: \"{value}\"",
                    type_name(value)
                ),
            )),
            other => Err(self.error(Some(path), format!("expected a string, found {}", type_name(other)))),
        }
    }

    /// An optional Kubernetes `LabelSelector` (absent or null: none; `{}`: matches everything).
    fn selector(&self, value: Option<&Value>, path: &str) -> Result<Option<LabelSelector>, ManifestError> {
        let map = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(self.error(
                    Some(path),
                    format!(
                        "expected a label selector (matchLabels, matchExpressions), found {}",
                        type_name(other)
                    ),
                ));
            }
        };
        self.check_keys(path, map, SELECTOR_KEYS)?;
        let mut selector = LabelSelector::default();
        match map.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (key, value) in labels {
                    let value = self.label_string(value, &format!("{path}.matchLabels.{key}"))?;
                    selector.match_labels.insert(key.clone(), value);
                }
            }
            Some(other) => {
                return Err(self.error(
                    Some(&format!("{path}.matchLabels")),
                    format!("expected a map of label keys to values, found {}", type_name(other)),
                ));
            }
        }
        match map.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    selector
                        .match_expressions
                        .push(self.requirement(item, &format!("{path}.matchExpressions[{index}]"))?);
                }
            }
            Some(other) => {
                return Err(self.error(
                    Some(&format!("{path}.matchExpressions")),
                    format!("expected a list of requirements, found {}", type_name(other)),
                ));
            }
        }
        selector.validate().map_err(|e| self.error(Some(path), e.to_string()))?;
        Ok(Some(selector))
    }

    /// One `matchExpressions` entry.
    fn requirement(&self, value: &Value, path: &str) -> Result<LabelSelectorRequirement, ManifestError> {
        let Value::Object(map) = value else {
            return Err(self.error(
                Some(path),
                format!(
                    "expected an object with key, operator and values, found {}",
                    type_name(value)
                ),
            ));
        };
        self.check_keys(path, map, REQUIREMENT_KEYS)?;
        let key = self.required_string(map, path, "key", "the label key")?;
        let operator_text = self.required_string(map, path, "operator", "In, NotIn, Exists or DoesNotExist")?;
        let operator = match operator_text.as_str() {
            "In" => SelectorOperator::In,
            "NotIn" => SelectorOperator::NotIn,
            "Exists" => SelectorOperator::Exists,
            "DoesNotExist" => SelectorOperator::DoesNotExist,
            other => {
                return Err(self.error(
                    Some(&format!("{path}.operator")),
                    format!("unknown operator {other:?}; expected In, NotIn, Exists or DoesNotExist"),
                ));
            }
        };
        let values = self.string_list(map.get("values"), &format!("{path}.values"))?;
        Ok(LabelSelectorRequirement { key, operator, values })
    }
}

/// `path.key`, or `key` at the top.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// How a JSON type is called in messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed examples, exactly as users have them.
    const SEED: &str = include_str!("../../../tests/fixtures/seed.yaml");
    /// A pool that lists the seed ENIConfig's subnet.
    const POOL: &str = include_str!("../../../tests/fixtures/pool.yaml");

    fn parse(text: &str) -> Result<Vec<Object>, Vec<ManifestError>> {
        parse_all(&[("m.yaml".to_owned(), text.to_owned())], DEFAULT_NAMESPACE)
    }

    /// The single error of a manifest that must fail.
    fn one_error(text: &str) -> ManifestError {
        match parse(text) {
            Ok(objects) => panic!("expected an error, parsed {objects:?}"),
            Err(errors) => {
                assert_eq!(errors.len(), 1, "{errors:?}");
                errors.into_iter().next().expect("should succeed")
            }
        }
    }

    const ENI_HEAD: &str =
        "apiVersion: crd.k8s.amazonaws.com/v1alpha1\nkind: ENIConfig\nmetadata:\n  name: us-west-2a\n";
    const SGP_HEAD: &str = "apiVersion: vpcresources.k8s.aws/v1beta1\nkind: SecurityGroupPolicy\nmetadata:\n  \
                            name: p\n  namespace: ns\n";
    const POOL_HEAD: &str = "apiVersion: ipam.eks.local/v1alpha1\nkind: Pool\nmetadata:\n  name: pool-a\n";

    #[test]
    fn seed_examples_parse_unchanged() {
        let objects = parse(SEED).expect("should succeed");
        assert_eq!(objects.len(), 2);
        let Object::EniConfig(eni) = &objects[0] else {
            panic!("{:?}", objects[0])
        };
        assert_eq!(eni.name, "us-west-2a");
        assert_eq!(eni.subnet_id, "subnet-011b111c1f11fdf11");
        assert_eq!(eni.security_groups, vec!["sg-0dff111a1d11c1c11"]);
        assert_eq!(eni.origin.document, 1);
        let Object::SgPolicy(sgp) = &objects[1] else {
            panic!("{:?}", objects[1])
        };
        assert_eq!(sgp.origin.document, 2);
        assert_eq!(sgp.policy.namespace, "my-namespace");
        assert_eq!(sgp.policy.name, "my-security-group-policy");
        assert_eq!(sgp.policy.security_groups, vec!["example_sg"]);
        let selector = sgp.policy.pod_selector.as_ref().expect("should succeed");
        assert_eq!(selector.match_labels.get("role").map(String::as_str), Some("test-role"));
        assert!(sgp.policy.service_account_selector.is_none());
        assert_eq!(
            objects[1].display_name(),
            "securitygrouppolicy/my-namespace/my-security-group-policy"
        );
    }

    #[test]
    fn seed_with_pool_plans_pool_then_config_then_policy() {
        let sources = [
            ("seed.yaml".to_owned(), SEED.to_owned()),
            ("pool.yaml".to_owned(), POOL.to_owned()),
        ];
        let objects = parse_all(&sources, DEFAULT_NAMESPACE).expect("should succeed");
        let plan = plan_apply(&objects, &[]).expect("should succeed");
        assert_eq!(plan.pools.len(), 1);
        assert_eq!(plan.pools[0].1.to_string(), "100.64.0.0/16");
        assert_eq!(plan.subnet_configs.len(), 1);
        let config = &plan.subnet_configs[0];
        assert_eq!(config.name, "us-west-2a");
        assert_eq!(config.subnet_cidr, "100.64.0.0/19");
        assert_eq!(config.availability_zone, "us-west-2a");
        assert_eq!(config.security_group_ids, vec!["sg-0dff111a1d11c1c11"]);
        assert_eq!(plan.policies.len(), 1);
        let policy = &plan.policies[0];
        assert_eq!(policy.security_group_ids, vec!["example_sg"]);
        let labels = &policy.pod_selector.as_ref().expect("should succeed").match_labels;
        assert_eq!(labels.get("role").map(String::as_str), Some("test-role"));
    }

    #[test]
    fn kubectl_output_with_extra_metadata_and_status_is_accepted() {
        let text = "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n\
            - apiVersion: crd.k8s.amazonaws.com/v1alpha1\n  kind: ENIConfig\n  metadata:\n    name: us-west-2b\n    \
            uid: 0b6c\n    resourceVersion: \"123\"\n    creationTimestamp: \"2024-01-01T00:00:00Z\"\n    \
            labels: {a: b}\n    annotations:\n      kubectl.kubernetes.io/last-applied-configuration: \"{}\"\n  \
            spec:\n    subnet: subnet-0123456789abcdef0\n  status: {}\n";
        let objects = parse(text).expect("should succeed");
        let Object::EniConfig(eni) = &objects[0] else {
            panic!("{objects:?}")
        };
        assert_eq!(eni.name, "us-west-2b");
        assert!(eni.security_groups.is_empty());
        assert_eq!(eni.origin.item, Some(1));
    }

    #[test]
    fn json_is_read_too() {
        let text = r#"{"apiVersion": "vpcresources.k8s.aws/v1beta1", "kind": "SecurityGroupPolicy",
            "metadata": {"name": "p"},
            "spec": {"serviceAccountSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]},
                     "securityGroups": {"groupIds": ["sg-0123456789abcdef0"]}}}"#;
        let objects = parse(text).expect("should succeed");
        let Object::SgPolicy(sgp) = &objects[0] else {
            panic!("{objects:?}")
        };
        assert_eq!(sgp.policy.namespace, DEFAULT_NAMESPACE);
        let requirement = &sgp
            .policy
            .service_account_selector
            .as_ref()
            .expect("should succeed")
            .match_expressions[0];
        assert_eq!(requirement.operator, SelectorOperator::In);
        let wire = sg_policy_to_pb(&sgp.policy);
        let wire_requirement = &wire.service_account_selector.expect("should succeed").match_expressions[0];
        assert_eq!(wire_requirement.operator, pb::LabelSelectorOperator::In as i32);
    }

    #[test]
    fn empty_documents_are_skipped_and_counted() {
        let text = format!("---\n---\n{ENI_HEAD}spec:\n  subnet: subnet-0123456789abcdef0\n---\n");
        let objects = parse(&text).expect("should succeed");
        assert_eq!(objects.len(), 1);
        // A leading `---` opens the first document, so the ENIConfig is the second.
        assert_eq!(objects[0].origin().document, 2);
    }

    #[test]
    fn unknown_kind() {
        let e = one_error("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n");
        assert_eq!(e.field.as_deref(), Some("kind"));
        assert!(e.why.contains("unknown kind \"ConfigMap\""), "{e}");
        assert_eq!(e.origin.document, 1);
    }

    #[test]
    fn wrong_api_version() {
        let e = one_error(
            "apiVersion: crd.k8s.amazonaws.com/v1beta1\nkind: ENIConfig\nmetadata:\n  name: a\nspec:\n  \
             subnet: subnet-0123456789abcdef0\n",
        );
        assert_eq!(e.field.as_deref(), Some("apiVersion"));
        assert!(e.why.contains(ENI_CONFIG_API_VERSION), "{e}");
        assert_eq!(e.object.as_deref(), Some("ENIConfig a"));
    }

    #[test]
    fn missing_subnet() {
        let e = one_error(&format!("{ENI_HEAD}spec:\n  securityGroups: [sg-0123456789abcdef0]\n"));
        assert_eq!(e.field.as_deref(), Some("spec.subnet"));
        assert!(e.why.starts_with("missing"), "{e}");
        assert_eq!(
            e.to_string(),
            "m.yaml: document 1 (ENIConfig us-west-2a): spec.subnet: missing; the EC2 subnet id, e.g. \
             subnet-0123456789abcdef0"
        );
    }

    #[test]
    fn unknown_spec_field_is_named() {
        let e = one_error(&format!(
            "{ENI_HEAD}spec:\n  subnet: subnet-0123456789abcdef0\n  subnets: [x]\n"
        ));
        assert_eq!(e.field.as_deref(), Some("spec.subnets"));
        assert!(e.why.contains("unknown field"), "{e}");
        let e = one_error(&format!(
            "{SGP_HEAD}spec:\n  podSelector:\n    matchLabel: {{a: b}}\n  securityGroups:\n    groupIds: [sg-12345678]\n"
        ));
        assert_eq!(e.field.as_deref(), Some("spec.podSelector.matchLabel"));
        assert_eq!(e.object.as_deref(), Some("SecurityGroupPolicy ns/p"));
    }

    #[test]
    fn unknown_top_level_field() {
        let e = one_error(&format!("{ENI_HEAD}spce:\n  subnet: subnet-0123456789abcdef0\n"));
        assert_eq!(e.field.as_deref(), Some("spce"));
    }

    #[test]
    fn bad_cidr() {
        let e = one_error(&format!("{POOL_HEAD}spec:\n  cidr: 100.64.0.1/16\n"));
        assert_eq!(e.field.as_deref(), Some("spec.cidr"));
        assert!(e.why.contains("host bits"), "{e}");
        let e = one_error(&format!("{POOL_HEAD}spec:\n  cidr: 100.64.0.0\n"));
        assert_eq!(e.field.as_deref(), Some("spec.cidr"));
        let e = one_error(&format!(
            "{POOL_HEAD}spec:\n  cidr: 100.64.0.0/16\n  subnets:\n  - id: subnet-0123456789abcdef0\n    \
             cidr: 100.65.0.0/19\n    availabilityZone: us-west-2a\n"
        ));
        assert_eq!(e.field.as_deref(), Some("spec.subnets[0].cidr"));
        assert!(e.why.contains("inside the pool"), "{e}");
        let e = one_error(&format!("{POOL_HEAD}spec:\n  cidr: 8.8.0.0/16\n"));
        assert!(e.why.contains("not a range AWS accepts"), "{e}");
    }

    #[test]
    fn sgp_without_selector() {
        let e = one_error(&format!(
            "{SGP_HEAD}spec:\n  securityGroups:\n    groupIds: [sg-12345678]\n"
        ));
        assert_eq!(e.field.as_deref(), Some("spec"));
        assert!(e.why.contains("neither podSelector nor serviceAccountSelector"), "{e}");
    }

    #[test]
    fn sgp_selector_problems() {
        let e = one_error(&format!(
            "{SGP_HEAD}spec:\n  podSelector:\n    matchExpressions:\n    - key: app\n      operator: Has\n  \
             securityGroups:\n    groupIds: [sg-12345678]\n"
        ));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.podSelector.matchExpressions[0].operator")
        );
        let e = one_error(&format!(
            "{SGP_HEAD}spec:\n  podSelector:\n    matchLabels:\n      enabled: true\n  securityGroups:\n    \
             groupIds: [sg-12345678]\n"
        ));
        assert_eq!(e.field.as_deref(), Some("spec.podSelector.matchLabels.enabled"));
        assert!(e.why.contains("quote it"), "{e}");
        let e = one_error(&format!(
            "{SGP_HEAD}spec:\n  podSelector:\n    matchExpressions:\n    - key: app\n      operator: In\n  \
             securityGroups:\n    groupIds: [sg-12345678]\n"
        ));
        assert_eq!(e.field.as_deref(), Some("spec.podSelector"));
        assert!(e.why.contains("without values"), "{e}");
        let e = one_error(&format!("{SGP_HEAD}spec:\n  podSelector: {{}}\n"));
        assert_eq!(e.field.as_deref(), Some("spec.securityGroups.groupIds"));
    }

    #[test]
    fn eniconfig_subnet_in_no_pool() {
        let objects = parse(SEED).expect("should succeed");
        let errors = plan_apply(&objects, &[]).expect_err("should fail");
        assert_eq!(errors.len(), 1);
        let e = &errors[0];
        assert_eq!(e.field.as_deref(), Some("spec.subnet"));
        assert!(e.why.contains("subnet-011b111c1f11fdf11"), "{e}");
        assert!(e.why.contains("add it to a Pool"), "{e}");
        assert!(
            e.to_string().starts_with("m.yaml: document 1 (ENIConfig us-west-2a)"),
            "{e}"
        );
    }

    #[test]
    fn eniconfig_subnet_known_to_the_server() {
        let objects = parse(SEED).expect("should succeed");
        let known = pb::SubnetConfig {
            name: "older".to_owned(),
            subnet_id: "subnet-011b111c1f11fdf11".to_owned(),
            subnet_cidr: "100.64.32.0/19".to_owned(),
            availability_zone: "us-west-2a".to_owned(),
            security_group_ids: Vec::new(),
            updated_at_unix_ms: 1,
        };
        let plan = plan_apply(&objects, &[known]).expect("should succeed");
        assert_eq!(plan.subnet_configs[0].subnet_cidr, "100.64.32.0/19");
        assert_eq!(plan.subnet_configs[0].name, "us-west-2a");
    }

    #[test]
    fn every_bad_document_is_reported_with_its_index() {
        let text =
            format!("{ENI_HEAD}spec: {{}}\n---\n{ENI_HEAD}spec:\n  subnet: subnet-0123456789abcdef0\n---\nkind: Foo\n");
        let errors = parse(&text).expect_err("should fail");
        let documents: Vec<usize> = errors.iter().map(|e| e.origin.document).collect();
        assert_eq!(documents, vec![1, 3], "{errors:?}");
    }

    #[test]
    fn duplicates_and_conflicting_subnets() {
        let eni = format!("{ENI_HEAD}spec:\n  subnet: subnet-0123456789abcdef0\n");
        let errors = parse(&format!("{eni}---\n{eni}")).expect_err("should fail");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].why.contains("defined twice"), "{errors:?}");
        let pool = |name: &str, cidr: &str| {
            format!(
                "apiVersion: ipam.eks.local/v1alpha1\nkind: Pool\nmetadata:\n  name: {name}\nspec:\n  cidr: \
                 100.64.0.0/16\n  subnets:\n  - id: subnet-0123456789abcdef0\n    cidr: {cidr}\n    \
                 availabilityZone: us-west-2a\n"
            )
        };
        let errors = parse(&format!(
            "{}---\n{}",
            pool("a", "100.64.0.0/19"),
            pool("b", "100.64.32.0/19")
        ))
        .expect_err("should fail");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field.as_deref(), Some("spec.subnets"));
    }

    #[test]
    fn syntax_errors_name_the_document() {
        let text = format!("{ENI_HEAD}spec:\n  subnet: subnet-0123456789abcdef0\n---\na: [1, 2\n");
        let e = one_error(&text);
        assert_eq!(e.origin.document, 2);
        assert!(e.why.starts_with("not valid YAML"), "{e}");
        let e = one_error("{\"kind\": ");
        assert!(e.why.starts_with("not valid JSON"), "{e}");
    }

    #[test]
    fn repeated_keys_are_refused() {
        let e = one_error(&format!(
            "{ENI_HEAD}spec:\n  subnet: subnet-0123456789abcdef0\n  subnet: subnet-11111111\n"
        ));
        assert!(e.why.contains("\"subnet\" is repeated"), "{e}");
        let e = one_error(r#"{"kind": "Pool", "kind": "Pool"}"#);
        assert!(e.why.contains("repeated"), "{e}");
    }

    #[test]
    fn missing_name_and_spec() {
        let e =
            one_error("apiVersion: ipam.eks.local/v1alpha1\nkind: Pool\nmetadata: {}\nspec: {cidr: 100.64.0.0/16}\n");
        assert_eq!(e.field.as_deref(), Some("metadata.name"));
        let e = one_error(POOL_HEAD);
        assert_eq!(e.field.as_deref(), Some("spec"));
        assert_eq!(e.object.as_deref(), Some("Pool pool-a"));
    }
}
