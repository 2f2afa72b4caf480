//! SNAT and the connection marks of the pod return path, as one nftables table owned by the agent.
//!
//! The rules are those of the VPC CNI (`pkg/networkutils`: `buildIptablesSNATRules` and the
//! `nftables` connmark backend), in a table of our own, `ip ipam-eks`, so that nothing else on the
//! node is touched and re-applying is one atomic transaction (add table; delete table; add table,
//! chains and rules — an `nft -f` batch commits all or nothing):
//!
//! ```text
//! table ip ipam-eks {
//!   chain mark-restore {                     # filter, prerouting, priority mangle (-150)
//!     iifname "<primary>" fib daddr . iif type local  ct mark set ct mark | 0x80   (NodePort)
//!     ct mark & 0x80 == 0x80  meta mark set meta mark | 0x80      (every packet of a marked flow)
//!   }
//!   chain snat-mark {                        # nat, prerouting, priority dstnat + 10 (-90)   [SNAT]
//!     fib daddr type local return            #   after kube-proxy's DNAT: sees the backend pod
//!     ip daddr <each VPC CIDR> return
//!     ip daddr <each excluded CIDR> return
//!     ct mark set ct mark | 0x80             #   a pod's new connection leaving the VPC
//!     meta mark set meta mark | 0x80         #   this first packet too (mark-restore ran before)
//!   }
//!   chain snat-egress {                      # nat, postrouting, priority srcnat (100)       [SNAT]
//!     ip daddr <each VPC CIDR> return
//!     ip daddr <each excluded CIDR> return
//!     fib daddr type local return
//!     snat ip to <primary IP> fully-random   #   --random-fully, the VPC CNI's default
//!   }
//! }
//! ```
//!
//! The packet mark 0x80 (the VPC CNI's `AWS_VPC_K8S_CNI_CONNMARK` default) meets the policy rule
//! `1024: fwmark 0x80/0x80 lookup main` (installed next to the table): a marked flow leaves by the
//! main table, i.e. the primary ENI, whatever its pod's `1536 from <pod> lookup <eni table>` says.
//! So a pod's connection out of the VPC goes out of the primary ENI and is SNATed to its address
//! (the only one EC2 lets through there), while traffic within the VPC, and connections that came
//! *in* (NodePort through the primary ENI excepted), keep the pod's own ENI both ways.
//!
//! Differences from the VPC CNI, on purpose: the marking chain matches new connections by
//! destination only, not also by `iifname "eni*"` (the agent does not know the CNI plugin's veth
//! prefix; a first packet that is not locally generated and heads out of the VPC is a pod's on an
//! EKS node), and the `! -o vlan+` exception of branch-ENI pods is not there yet (no trunking yet).
//! With external SNAT only `mark-restore` remains: the NodePort return path does not depend on
//! SNAT (`AWS_VPC_CNI_NODE_PORT_SUPPORT` defaults to true).

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::BinaryOperation;
use nftables::expr::CT;
use nftables::expr::Expression;
use nftables::expr::Fib;
use nftables::expr::FibFlag;
use nftables::expr::FibResult;
use nftables::expr::Meta;
use nftables::expr::MetaKey;
use nftables::expr::NamedExpression;
use nftables::expr::Payload;
use nftables::expr::PayloadField;
use nftables::expr::Prefix;
use nftables::schema::Chain;
use nftables::schema::NfListObject;
use nftables::schema::Nftables;
use nftables::schema::Rule;
use nftables::schema::Table;
use nftables::stmt::Mangle;
use nftables::stmt::Match;
use nftables::stmt::NAT;
use nftables::stmt::NATFamily;
use nftables::stmt::NATFlag;
use nftables::stmt::Operator;
use nftables::stmt::Statement;
use nftables::types::NfChainPolicy;
use nftables::types::NfChainType;
use nftables::types::NfFamily;
use nftables::types::NfHook;

use super::HostError;
use super::SnatConfig;

/// The agent's nftables table (family `ip`).
pub const NFT_TABLE: &str = "ipam-eks";
/// The chain restoring the connection mark onto packets (and marking NodePort connections).
pub const CHAIN_MARK_RESTORE: &str = "mark-restore";
/// The chain marking pods' new connections that leave the VPC.
pub const CHAIN_SNAT_MARK: &str = "snat-mark";
/// The chain source-NATing traffic that leaves the VPC to the primary address.
pub const CHAIN_SNAT: &str = "snat-egress";
/// The connection/packet mark bit of flows that must leave through the primary ENI (the VPC CNI's
/// `AWS_VPC_K8S_CNI_CONNMARK` default).
pub const CONNMARK: u32 = 0x80;

const PRIO_MANGLE: i32 = -150;
const PRIO_DSTNAT_AFTER_KUBE_PROXY: i32 = -90;
const PRIO_SRCNAT: i32 = 100;

/// The nftables batch that makes our table match `config`, replacing what was there, atomically.
/// `primary_link` is the name of the primary ENI's link (the NodePort mark matches its input).
pub fn ruleset(config: &SnatConfig, primary_link: &str) -> Result<Nftables<'static>, HostError> {
    for &(addr, len) in config.vpc_cidrs.iter().chain(&config.exclude_cidrs) {
        if len > 32 {
            return Err(HostError::Invalid(format!("bad CIDR {addr}/{len}")));
        }
    }
    let mut batch = Batch::new();
    // `add` is a no-op on an existing table, so that `delete` finds one either way.
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.add(NfListObject::Table(table()));

    batch.add(NfListObject::Chain(base_chain(
        CHAIN_MARK_RESTORE,
        NfChainType::Filter,
        NfHook::Prerouting,
        PRIO_MANGLE,
    )));
    batch.add(rule(
        CHAIN_MARK_RESTORE,
        vec![
            eq(
                meta(MetaKey::Iifname),
                Expression::String(Cow::Owned(primary_link.to_owned())),
            ),
            eq(fib_type(&[FibFlag::Daddr, FibFlag::Iif]), local()),
            Statement::Mangle(Mangle {
                key: ct_mark(),
                value: or(ct_mark(), CONNMARK),
            }),
        ],
    ));
    batch.add(rule(
        CHAIN_MARK_RESTORE,
        vec![
            eq(and(ct_mark(), CONNMARK), Expression::Number(CONNMARK)),
            Statement::Mangle(Mangle {
                key: meta(MetaKey::Mark),
                value: or(meta(MetaKey::Mark), CONNMARK),
            }),
        ],
    ));

    if !config.external {
        let exempt: Vec<(Ipv4Addr, u8)> = config.vpc_cidrs.iter().chain(&config.exclude_cidrs).copied().collect();

        batch.add(NfListObject::Chain(base_chain(
            CHAIN_SNAT_MARK,
            NfChainType::NAT,
            NfHook::Prerouting,
            PRIO_DSTNAT_AFTER_KUBE_PROXY,
        )));
        batch.add(rule(
            CHAIN_SNAT_MARK,
            vec![eq(fib_type(&[FibFlag::Daddr]), local()), ret()],
        ));
        for &cidr in &exempt {
            batch.add(rule(CHAIN_SNAT_MARK, daddr_return(cidr)));
        }
        batch.add(rule(
            CHAIN_SNAT_MARK,
            vec![
                Statement::Mangle(Mangle {
                    key: ct_mark(),
                    value: or(ct_mark(), CONNMARK),
                }),
                Statement::Mangle(Mangle {
                    key: meta(MetaKey::Mark),
                    value: or(meta(MetaKey::Mark), CONNMARK),
                }),
            ],
        ));

        batch.add(NfListObject::Chain(base_chain(
            CHAIN_SNAT,
            NfChainType::NAT,
            NfHook::Postrouting,
            PRIO_SRCNAT,
        )));
        for &cidr in &exempt {
            batch.add(rule(CHAIN_SNAT, daddr_return(cidr)));
        }
        batch.add(rule(CHAIN_SNAT, vec![eq(fib_type(&[FibFlag::Daddr]), local()), ret()]));
        batch.add(rule(
            CHAIN_SNAT,
            vec![Statement::SNAT(Some(NAT {
                addr: Some(Expression::String(Cow::Owned(config.primary_ip.to_string()))),
                family: Some(NATFamily::IP),
                port: None,
                flags: Some(HashSet::from([NATFlag::FullyRandom])),
            }))],
        ));
    }
    Ok(batch.to_nftables())
}

/// Applies a batch with the `nft` binary. Blocking: run it on the namespace's thread, so that
/// `nft` (a child process) inherits that thread's namespace.
pub fn apply(batch: &Nftables<'_>) -> Result<(), HostError> {
    nftables::helper::apply_ruleset(batch).map_err(nft_error)
}

/// Our table's objects (table, chains, rules) as the kernel has them, or empty if there is none.
/// Blocking, like [`apply`].
///
/// Only our objects are decoded (another table may use what the `nftables` crate cannot read), and
/// a NAT statement's single flag, which `nft` prints as a string, is made the list the crate reads.
pub fn list_ours() -> Result<Vec<NfListObject<'static>>, HostError> {
    let raw = nftables::helper::get_current_ruleset_raw(nftables::helper::DEFAULT_NFT, nftables::helper::DEFAULT_ARGS)
        .map_err(nft_error)?;
    let mut document: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| HostError::Nftables(format!("nft printed bad JSON: {e}")))?;
    let objects = document
        .get_mut("nftables")
        .and_then(serde_json::Value::as_array_mut)
        .map(std::mem::take);
    let mut ours = Vec::new();
    for mut object in objects.unwrap_or_default() {
        if !is_ours(&object) {
            continue;
        }
        normalize_nat_flags(&mut object);
        let parsed: NfListObject<'static> = serde_json::from_value(object.clone())
            .map_err(|e| HostError::Nftables(format!("cannot read {object}: {e}")))?;
        ours.push(parsed);
    }
    Ok(ours)
}

/// Whether a listed object (`{"table": {..}}`, `{"chain": {..}}`, `{"rule": {..}}`) is in our table.
fn is_ours(object: &serde_json::Value) -> bool {
    let Some((kind, body)) = object.as_object().and_then(|o| o.iter().next()) else {
        return false;
    };
    let table = match kind.as_str() {
        "table" => &body["name"],
        "chain" | "rule" => &body["table"],
        _ => return false,
    };
    body["family"] == "ip" && table == NFT_TABLE
}

fn normalize_nat_flags(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if matches!(key.as_str(), "snat" | "dnat" | "masquerade" | "redirect")
                    && let Some(flags) = inner.get_mut("flags")
                    && flags.is_string()
                {
                    *flags = serde_json::Value::Array(vec![flags.take()]);
                }
                normalize_nat_flags(inner);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(normalize_nat_flags),
        _ => {}
    }
}

fn nft_error(e: nftables::helper::NftablesError) -> HostError {
    match e {
        nftables::helper::NftablesError::NftFailed { hint, stderr, .. } => {
            HostError::Nftables(format!("nft failed {hint}: {}", stderr.trim()))
        }
        other => HostError::Nftables(other.to_string()),
    }
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: Cow::Borrowed(NFT_TABLE),
        handle: None,
    }
}

fn base_chain(name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: Cow::Borrowed(NFT_TABLE),
        name: Cow::Borrowed(name),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: Cow::Borrowed(NFT_TABLE),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: None,
    })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn ret() -> Statement<'static> {
    Statement::Return(None)
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct_mark() -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed("mark"),
        family: None,
        dir: None,
    }))
}

fn fib_type(flags: &[FibFlag]) -> Expression<'static> {
    Expression::Named(NamedExpression::Fib(Fib {
        result: FibResult::Type,
        flags: flags.iter().copied().collect(),
    }))
}

fn local() -> Expression<'static> {
    Expression::String(Cow::Borrowed("local"))
}

fn or(value: Expression<'static>, bits: u32) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![value, Expression::Number(bits)])))
}

fn and(value: Expression<'static>, bits: u32) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(value, Expression::Number(bits))))
}

/// `ip daddr <cidr> return`; a /0 (the VPC CNI allows excluding everything) returns always.
fn daddr_return((addr, len): (Ipv4Addr, u8)) -> Vec<Statement<'static>> {
    if len == 0 {
        return vec![ret()];
    }
    let daddr = Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: Cow::Borrowed("ip"),
        field: Cow::Borrowed("daddr"),
    })));
    let network = Ipv4Addr::from(u32::from(addr) & (u32::MAX << (32 - u32::from(len))));
    let prefix = Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(network.to_string()))),
        len: u32::from(len),
    }));
    vec![eq(daddr, prefix), ret()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(external: bool) -> SnatConfig {
        SnatConfig {
            external,
            primary_ip: Ipv4Addr::new(10, 0, 0, 10),
            vpc_cidrs: vec![(Ipv4Addr::new(10, 0, 0, 0), 16), (Ipv4Addr::new(100, 64, 0, 0), 16)],
            exclude_cidrs: vec![(Ipv4Addr::new(198, 51, 100, 7), 24)],
        }
    }

    fn json(doc: &Nftables<'_>) -> serde_json::Value {
        serde_json::to_value(doc).expect("serializes")
    }

    fn rules_of<'a>(doc: &'a serde_json::Value, chain: &str) -> Vec<&'a serde_json::Value> {
        doc["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|o| o.get("add")?.get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| &r["expr"])
            .collect()
    }

    #[test]
    fn replaces_only_our_table_in_one_batch() {
        let doc = json(&ruleset(&config(false), "eth0").expect("valid"));
        let objects = doc["nftables"].as_array().expect("array");
        assert_eq!(
            objects[0],
            serde_json::json!({"add": {"table": {"family": "ip", "name": "ipam-eks"}}})
        );
        assert_eq!(
            objects[1],
            serde_json::json!({"delete": {"table": {"family": "ip", "name": "ipam-eks"}}})
        );
        for object in objects {
            let inner = object.as_object().and_then(|o| o.values().next()).expect("command");
            let (kind, body) = inner.as_object().and_then(|o| o.iter().next()).expect("object");
            let table = if kind == "table" { &body["name"] } else { &body["table"] };
            assert_eq!(table, "ipam-eks", "{object}");
            assert_eq!(body["family"], "ip", "{object}");
        }
    }

    #[test]
    fn snat_exempts_vpc_and_excluded_cidrs_then_snats_fully_random() {
        let doc = json(&ruleset(&config(false), "eth0").expect("valid"));
        let snat = rules_of(&doc, CHAIN_SNAT);
        let prefixes: Vec<String> = snat
            .iter()
            .filter_map(|r| r[0]["match"]["right"].get("prefix"))
            .map(|p| format!("{}/{}", p["addr"].as_str().expect("addr"), p["len"]))
            .collect();
        // The excluded CIDR is normalized to its network address.
        assert_eq!(prefixes, ["10.0.0.0/16", "100.64.0.0/16", "198.51.100.0/24"]);
        let last = snat.last().expect("rules");
        assert_eq!(last[0]["snat"]["addr"], "10.0.0.10");
        assert_eq!(last[0]["snat"]["flags"], serde_json::json!(["fully-random"]));
        let mark = rules_of(&doc, CHAIN_SNAT_MARK);
        assert_eq!(mark.len(), 1 + 3 + 1, "local, three exempt CIDRs, the mark");
    }

    #[test]
    fn external_snat_keeps_only_the_nodeport_mark() {
        let doc = json(&ruleset(&config(true), "ens5").expect("valid"));
        assert!(rules_of(&doc, CHAIN_SNAT).is_empty());
        assert!(rules_of(&doc, CHAIN_SNAT_MARK).is_empty());
        let restore = rules_of(&doc, CHAIN_MARK_RESTORE);
        assert_eq!(restore.len(), 2);
        assert_eq!(restore[0][0]["match"]["right"], "ens5");
        assert!(!doc.to_string().contains("\"snat\":"), "no SNAT statement at all");
    }

    #[test]
    fn excluding_everything_is_an_unconditional_return() {
        let mut c = config(false);
        c.exclude_cidrs = vec![(Ipv4Addr::UNSPECIFIED, 0)];
        let doc = json(&ruleset(&c, "eth0").expect("valid"));
        assert!(rules_of(&doc, CHAIN_SNAT).iter().any(|r| {
            r.as_array()
                .is_some_and(|a| a.len() == 1 && a[0].get("return").is_some())
        }));
    }

    #[test]
    fn listed_objects_of_our_table_are_read_back() {
        let listed = serde_json::json!({"rule": {"family": "ip", "table": "ipam-eks", "chain": "snat-egress",
            "handle": 7, "expr": [{"snat": {"addr": "10.0.0.10", "flags": "fully-random"}}]}});
        assert!(is_ours(&listed));
        assert!(!is_ours(
            &serde_json::json!({"table": {"family": "ip", "name": "nat", "handle": 1}})
        ));
        assert!(!is_ours(
            &serde_json::json!({"table": {"family": "ip6", "name": "ipam-eks", "handle": 1}})
        ));
        let mut normalized = listed.clone();
        normalize_nat_flags(&mut normalized);
        let NfListObject::Rule(rule) = serde_json::from_value(normalized).expect("the crate reads it") else {
            panic!("a rule");
        };
        let Statement::SNAT(Some(nat)) = &rule.expr[0] else {
            panic!("an SNAT statement")
        };
        assert_eq!(nat.flags, Some(HashSet::from([NATFlag::FullyRandom])));
    }

    #[test]
    fn a_bad_prefix_length_is_refused() {
        let mut c = config(false);
        c.vpc_cidrs.push((Ipv4Addr::new(10, 1, 0, 0), 33));
        assert!(matches!(ruleset(&c, "eth0"), Err(HostError::Invalid(_))));
    }
}
