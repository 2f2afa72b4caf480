//! The CNI spec types and the configuration: parsing, serializing per version, error codes,
//! CNI_ARGS, validation messages. No agent, no kernel.

use std::collections::BTreeMap;

use ipam_cni_plugin::config;
use ipam_cni_plugin::config::ConfigError;
use ipam_cni_plugin::config::LogLevel;
use ipam_cni_plugin::config::Mode;
use ipam_cni_plugin::spec::CniArgs;
use ipam_cni_plugin::spec::CniError;
use ipam_cni_plugin::spec::Command;
use ipam_cni_plugin::spec::Dns;
use ipam_cni_plugin::spec::Env;
use ipam_cni_plugin::spec::ErrorCode;
use ipam_cni_plugin::spec::ErrorResult;
use ipam_cni_plugin::spec::Interface;
use ipam_cni_plugin::spec::IpConfig;
use ipam_cni_plugin::spec::LeaseRecord;
use ipam_cni_plugin::spec::Route;
use ipam_cni_plugin::spec::SuccessResult;
use ipam_cni_plugin::spec::ValidAttachment;
use ipam_cni_plugin::spec::Version;
use ipam_cni_plugin::spec::VersionResult;
use serde_json::Value;
use serde_json::json;

fn pod_result() -> SuccessResult {
    SuccessResult {
        interfaces: vec![
            Interface {
                name: "enic440f455693".into(),
                mac: Some("aa:bb:cc:00:00:01".into()),
                mtu: Some(9001),
                ..Interface::default()
            },
            Interface {
                name: "eth0".into(),
                mac: Some("aa:bb:cc:00:00:02".into()),
                mtu: Some(9001),
                sandbox: Some("/var/run/netns/cni-1".into()),
                ..Interface::default()
            },
            LeaseRecord {
                lease_id: 812,
                route_table: 3,
                eni_id: "eni-0abc".into(),
                vlan_id: 0,
                mtu: 9001,
            }
            .to_interface("eth0"),
        ],
        ips: vec![IpConfig {
            address: "10.0.3.7/32".into(),
            gateway: Some("169.254.1.1".into()),
            interface: Some(1),
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".into(),
            gw: Some("169.254.1.1".into()),
            table: Some(3),
            ..Route::default()
        }],
        dns: Dns {
            nameservers: vec!["10.100.0.10".into()],
            ..Dns::default()
        },
    }
}

#[test]
fn versions_parse_and_print() {
    for v in Version::SUPPORTED {
        assert_eq!(Version::parse(v.as_str()), Some(v));
    }
    assert_eq!(Version::parse("0.3.1"), None);
    assert_eq!(Version::parse("1.1"), None);
    assert_eq!(Version::CURRENT.as_str(), "1.1.0");
    assert!(Version::V1_1_0.has_status_and_gc());
    assert!(!Version::V1_0_0.has_status_and_gc());
    assert_eq!(Version::supported_list(), "0.4.0, 1.0.0, 1.1.0");
}

#[test]
fn commands_are_the_specs() {
    for c in ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"] {
        assert_eq!(Command::parse(c).map(Command::as_str), Some(c));
    }
    assert_eq!(Command::parse("add"), None);
}

#[test]
fn result_1_1_0_has_the_1_1_fields_and_no_ip_version() {
    let json = pod_result().to_json(Version::V1_1_0);
    assert_eq!(json["cniVersion"], "1.1.0");
    assert_eq!(json["interfaces"][0]["mtu"], 9001);
    assert!(
        json["interfaces"][0].get("sandbox").is_none(),
        "host veth has no sandbox"
    );
    assert_eq!(json["interfaces"][1]["sandbox"], "/var/run/netns/cni-1");
    assert_eq!(
        json["ips"][0],
        json!({"address": "10.0.3.7/32", "gateway": "169.254.1.1", "interface": 1})
    );
    assert_eq!(
        json["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1", "table": 3})
    );
    assert_eq!(json["dns"], json!({"nameservers": ["10.100.0.10"]}));
}

#[test]
fn result_1_0_0_drops_the_1_1_fields() {
    let json = pod_result().to_json(Version::V1_0_0);
    assert_eq!(json["cniVersion"], "1.0.0");
    assert!(json["interfaces"][0].get("mtu").is_none());
    assert!(json["ips"][0].get("version").is_none());
    assert_eq!(json["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}));
}

#[test]
fn result_0_4_0_has_ip_versions() {
    let json = pod_result().to_json(Version::V0_4_0);
    assert_eq!(json["cniVersion"], "0.4.0");
    assert_eq!(json["ips"][0]["version"], "4");
    assert!(json["interfaces"][1].get("mtu").is_none());
    let v6 = SuccessResult {
        ips: vec![IpConfig {
            address: "fd00::5/128".into(),
            ..IpConfig::default()
        }],
        ..SuccessResult::default()
    };
    assert_eq!(v6.to_json(Version::V0_4_0)["ips"][0]["version"], "6");
}

#[test]
fn an_ipam_result_has_no_interfaces() {
    let result = SuccessResult {
        ips: vec![IpConfig {
            address: "10.0.3.7/32".into(),
            gateway: Some("169.254.1.1".into()),
            interface: None,
        }],
        ..SuccessResult::default()
    };
    let json = result.to_json(Version::V1_1_0);
    assert!(json.get("interfaces").is_none());
    assert!(json["ips"][0].get("interface").is_none());
}

#[test]
fn results_round_trip_in_every_version() {
    for v in Version::SUPPORTED {
        let json = pod_result().to_json(v);
        let back = SuccessResult::from_value(&json).expect("parse");
        let mut expected = pod_result();
        if v < Version::V1_1_0 {
            for i in &mut expected.interfaces {
                i.mtu = None;
            }
            expected.routes[0].table = None;
        }
        assert_eq!(back, expected, "version {v}");
    }
}

#[test]
fn the_specs_example_result_parses() {
    // SPEC.md's bridge example, with an unknown key a newer spec might add.
    let example = json!({
        "cniVersion": "1.1.0",
        "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "interfaces": [
            {"name": "cni0", "mac": "00:11:22:33:44:55"},
            {"name": "veth3243", "mac": "55:44:33:22:11:11"},
            {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
        ],
        "dns": {"nameservers": ["10.1.0.1"]},
        "somethingNew": true
    });
    let result = SuccessResult::from_value(&example).expect("parse");
    assert_eq!(result.interfaces.len(), 3);
    assert_eq!(result.ipv4_of("eth0"), Some("10.1.0.5".parse().expect("ip")));
    assert_eq!(
        result.gateway_of("10.1.0.5".parse().expect("ip")),
        Some("10.1.0.1".parse().expect("ip"))
    );
    assert_eq!(result.container_interface("eth0"), Some(2));
    assert_eq!(result.routes[0].gw, None);
    assert!(SuccessResult::from_value(&json!([1])).is_err());
    assert!(SuccessResult::from_value(&json!({"ips": [{"gateway": "1.1.1.1"}]})).is_err());
}

#[test]
fn the_lease_record_round_trips_and_survives_a_typed_consumer() {
    let result = pod_result();
    let record = LeaseRecord::find(&result, "eth0").expect("record");
    assert_eq!(record.lease_id, 812);
    assert_eq!(record.route_table, 3);
    assert_eq!(record.eni_id, "eni-0abc");
    assert_eq!(record.mtu, 9001);
    // What libcni or a chained plugin writes back: the spec's keys only, in the config's version.
    for v in Version::SUPPORTED {
        let back = SuccessResult::from_value(&pod_result().to_json(v)).expect("parse");
        assert_eq!(LeaseRecord::find(&back, "eth0"), Some(record.clone()), "version {v}");
    }
    // The record is not a host veth, nor a container interface.
    assert_eq!(result.host_interface().map(|i| i.name.as_str()), Some("enic440f455693"));
    assert!(!result.interfaces[2].in_sandbox());
    assert!(
        result.interfaces[2].name.contains(':'),
        "the kernel allows no ':' in link names"
    );
    // Unknown keys are ignored; no lease is no record.
    let odd = Interface {
        name: "ipam-eks:eth0".into(),
        mac: Some("future=1,lease=7".into()),
        ..Interface::default()
    };
    assert_eq!(LeaseRecord::from_interface(&odd).map(|r| r.lease_id), Some(7));
    let none = Interface {
        mac: Some("table=3".into()),
        ..odd
    };
    assert_eq!(LeaseRecord::from_interface(&none), None);
}

#[test]
fn the_record_is_found_per_ifname() {
    let mut result = pod_result();
    result.interfaces.push(
        LeaseRecord {
            lease_id: 900,
            ..LeaseRecord::default()
        }
        .to_interface("net1"),
    );
    assert_eq!(LeaseRecord::find(&result, "net1").map(|r| r.lease_id), Some(900));
    assert_eq!(LeaseRecord::find(&result, "eth0").map(|r| r.lease_id), Some(812));
    assert_eq!(
        LeaseRecord::find(&result, "net2"),
        None,
        "two records, neither named: ambiguous"
    );
}

#[test]
fn error_codes_are_exact() {
    let expected: BTreeMap<u32, ErrorCode> = [
        (1, ErrorCode::IncompatibleVersion),
        (2, ErrorCode::UnsupportedField),
        (3, ErrorCode::UnknownContainer),
        (4, ErrorCode::InvalidEnvironment),
        (5, ErrorCode::Io),
        (6, ErrorCode::Decode),
        (7, ErrorCode::InvalidConfig),
        (11, ErrorCode::TryAgainLater),
        (50, ErrorCode::NotAvailable),
        (51, ErrorCode::NotAvailableLimitedConnectivity),
        (100, ErrorCode::AgentRefused),
        (101, ErrorCode::AgentFailed),
        (102, ErrorCode::PlumbingFailed),
        (103, ErrorCode::CheckFailed),
    ]
    .into_iter()
    .collect();
    for code in ErrorCode::ALL {
        assert_eq!(expected.get(&code.code()), Some(&code));
        assert_eq!(ErrorCode::from_code(code.code()), Some(code));
    }
    assert_eq!(ErrorCode::from_code(8), None);
}

#[test]
fn error_json_is_the_specs() {
    let error = CniError::new(ErrorCode::TryAgainLater, "agent down; retry").with_details("connection refused");
    for v in Version::SUPPORTED {
        let parsed: ErrorResult = serde_json::from_slice(&error.to_json(v)).expect("error json");
        assert_eq!(
            parsed,
            ErrorResult {
                cni_version: v.as_str().into(),
                code: 11,
                msg: "agent down; retry".into(),
                details: Some("connection refused".into()),
            }
        );
    }
    let bare: Value =
        serde_json::from_slice(&CniError::new(ErrorCode::Decode, "x").to_json(Version::V1_1_0)).expect("json");
    assert_eq!(bare, json!({"cniVersion": "1.1.0", "code": 6, "msg": "x"}));
}

#[test]
fn version_result_lists_what_is_supported() {
    let v = VersionResult::new("1.0.0");
    assert_eq!(
        serde_json::to_value(&v).expect("json"),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn cni_args_as_the_kubelet_passes_them() {
    let args = CniArgs::parse(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx;K8S_POD_INFRA_CONTAINER_ID=abc123;\
         K8S_POD_UID=0f1e;K8S_POD_NETWORK=x=y",
    )
    .expect("args");
    assert_eq!(args.pod_namespace.as_deref(), Some("default"));
    assert_eq!(args.pod_name.as_deref(), Some("nginx"));
    assert_eq!(args.pod_infra_container_id.as_deref(), Some("abc123"));
    assert_eq!(args.pod_uid.as_deref(), Some("0f1e"));
    assert!(args.ignore_unknown);
    assert_eq!(args.other.get("K8S_POD_NETWORK").map(String::as_str), Some("x=y"));
    assert_eq!(CniArgs::parse("").expect("empty"), CniArgs::default());
    assert!(CniArgs::parse("K8S_POD_NAME=a;").is_ok(), "a trailing ';' is fine");
    assert!(CniArgs::parse("IgnoreUnknown=TRUE;FOO=1").is_ok());
}

#[test]
fn cni_args_errors_are_code_4_and_say_why() {
    for (args, says) in [
        ("FOO=bar", "unknown key \"FOO\""),
        ("IgnoreUnknown=0;FOO=bar", "unknown key"),
        ("K8S_POD_NAME", "is not KEY=VALUE"),
        ("IgnoreUnknown=maybe", "IgnoreUnknown"),
    ] {
        let error = CniArgs::parse(args).expect_err(args);
        assert_eq!(error.code, ErrorCode::InvalidEnvironment, "{args}");
        assert!(error.msg.contains("CNI_ARGS"), "{args}: {}", error.msg);
        assert!(error.msg.contains(says), "{args}: {}", error.msg);
    }
}

fn env(vars: &[(&str, &str)]) -> Env {
    let map: BTreeMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Env::read(&move |name: &str| map.get(name).cloned())
}

#[test]
fn the_environment_is_validated_and_named() {
    let good = env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "3f2a_b.c-d"),
        ("CNI_NETNS", "/var/run/netns/cni-1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx"),
    ]);
    assert_eq!(good.command().expect("command"), Command::Add);
    let attachment = good.attachment(true).expect("attachment");
    assert_eq!(attachment.container_id, "3f2a_b.c-d");
    assert_eq!(attachment.args.pod_name.as_deref(), Some("nginx"));

    let error = env(&[]).command().expect_err("no command");
    assert_eq!(error.code, ErrorCode::InvalidEnvironment);
    assert!(error.msg.contains("CNI_COMMAND"));
    assert!(env(&[("CNI_COMMAND", "add")]).command().is_err());

    let error = env(&[("CNI_COMMAND", "ADD")])
        .attachment(true)
        .expect_err("nothing set");
    assert_eq!(error.code, ErrorCode::InvalidEnvironment);
    for var in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
        assert!(error.msg.contains(var), "{}", error.msg);
    }
    assert!(
        env(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")])
            .attachment(false)
            .is_ok(),
        "DEL needs no CNI_NETNS"
    );
    for (id, ifname, bad) in [
        ("-abc", "eth0", "CNI_CONTAINERID"),
        ("ab c", "eth0", "CNI_CONTAINERID"),
        ("abc", "eth0123456789abc", "CNI_IFNAME"),
        ("abc", "et/h0", "CNI_IFNAME"),
        ("abc", "..", "CNI_IFNAME"),
    ] {
        let error = env(&[("CNI_CONTAINERID", id), ("CNI_IFNAME", ifname)])
            .attachment(false)
            .expect_err(bad);
        assert!(error.msg.contains(bad), "{id} {ifname}: {}", error.msg);
    }
    let error = env(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", "NOPE")])
        .attachment(false)
        .expect_err("bad args");
    assert!(error.msg.contains("CNI_ARGS"));
}

fn parse(config: Value) -> Result<config::NetConf, ConfigError> {
    config::parse(config.to_string().as_bytes())
}

#[test]
fn a_minimal_main_config_gets_the_defaults() {
    let conf = parse(json!({"cniVersion": "1.1.0", "name": "pods", "type": "ipam-eks"})).expect("config");
    assert_eq!(conf.mode, Mode::Main);
    assert_eq!(conf.cni_version, Version::V1_1_0);
    assert_eq!(conf.name, "pods");
    assert_eq!(conf.plugin.socket.to_str(), Some(config::DEFAULT_SOCKET));
    assert_eq!(conf.plugin.mtu, None);
    assert_eq!(conf.plugin.log_level, LogLevel::Info);
    assert_eq!(conf.plugin.timeout_seconds, config::DEFAULT_TIMEOUT_SECONDS);
    assert_eq!(conf.prev_result, None);
    assert_eq!(conf.valid_attachments, None);
}

#[test]
fn a_full_main_config_with_every_standard_key() {
    let conf = parse(json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["0.4.0", "1.0.0"],
        "name": "pods",
        "type": "ipam-eks",
        "socket": "/run/other/agent.sock",
        "mtu": 1500,
        "logFile": "/var/log/ipam-eks.log",
        "logLevel": "debug",
        "timeoutSeconds": 5,
        "ipam": {},
        "dns": {"nameservers": ["10.100.0.10"], "search": ["svc.cluster.local"]},
        "runtimeConfig": {"portMappings": []},
        "capabilities": {"portMappings": true},
        "args": {"cni": {"labels": []}},
        "ipMasq": false,
        "prevResult": {"cniVersion": "1.0.0", "ips": []},
        "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}],
        "cni.dev/something-newer": 1
    }))
    .expect("config");
    assert_eq!(conf.cni_version, Version::V1_0_0);
    assert_eq!(conf.plugin.socket.to_str(), Some("/run/other/agent.sock"));
    assert_eq!(conf.plugin.mtu, Some(1500));
    assert_eq!(conf.plugin.log_level, LogLevel::Debug);
    assert_eq!(conf.plugin.timeout().as_secs(), 5);
    assert_eq!(conf.dns.search, ["svc.cluster.local"]);
    assert!(conf.prev_result.is_some());
    assert_eq!(
        conf.valid_attachments,
        Some(vec![ValidAttachment {
            container_id: "abc".into(),
            ifname: "eth0".into()
        }])
    );
}

#[test]
fn ipam_only_config_under_bridge() {
    let conf = parse(json!({
        "cniVersion": "0.4.0",
        "name": "br",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipam": {"type": "ipam-eks", "socket": "/run/x.sock", "mtu": 1500}
    }))
    .expect("config");
    assert_eq!(conf.mode, Mode::IpamOnly);
    assert_eq!(conf.plugin.socket.to_str(), Some("/run/x.sock"));
    let error = parse(json!({
        "cniVersion": "1.1.0", "name": "br", "type": "bridge",
        "ipam": {"type": "ipam-eks", "subnet": "10.0.0.0/16"}
    }))
    .expect_err("unknown ipam key");
    assert_eq!(error.code(), ErrorCode::UnsupportedField);
    let msg = error.to_string();
    assert!(msg.contains("ipam.subnet") && msg.contains("10.0.0.0/16"), "{msg}");
}

/// A main-mode configuration with `extra` keys.
fn main_with(extra: Value) -> Vec<u8> {
    let mut config = json!({"cniVersion": "1.1.0", "name": "pods", "type": "ipam-eks"});
    for (key, value) in extra.as_object().expect("object") {
        config[key] = value.clone();
    }
    config.to_string().into_bytes()
}

#[test]
fn config_errors_have_the_specs_codes_and_say_what_to_do() {
    let bytes = |v: Value| v.to_string().into_bytes();
    use ErrorCode::*;
    let cases: Vec<(Vec<u8>, ErrorCode, &str)> = vec![
        (b"{not json".to_vec(), Decode, "not a JSON object"),
        (b"[1,2]".to_vec(), Decode, "an array"),
        (b"".to_vec(), Decode, "JSON"),
        (
            bytes(json!({"type": "ipam-eks"})),
            IncompatibleVersion,
            "cniVersion is missing",
        ),
        (
            main_with(json!({"cniVersion": "0.3.1"})),
            IncompatibleVersion,
            "0.4.0, 1.0.0, 1.1.0",
        ),
        (
            main_with(json!({"cniVersion": 1})),
            InvalidConfig,
            "cniVersion must be a string",
        ),
        (bytes(json!({"cniVersion": "1.1.0"})), InvalidConfig, "type is missing"),
        (
            main_with(json!({"type": "bridge", "ipam": {"type": "dhcp"}})),
            InvalidConfig,
            "ipam.type",
        ),
        (
            main_with(json!({"sokcet": "/x"})),
            UnsupportedField,
            "\"sokcet\" (value \"/x\")",
        ),
        (
            main_with(json!({"ipam": {"type": "dhcp"}})),
            UnsupportedField,
            "remove the ipam section",
        ),
        (main_with(json!({"ipMasq": true})), UnsupportedField, "ipMasq"),
        (main_with(json!({"mtu": "9001"})), InvalidConfig, "invalid type"),
        (main_with(json!({"mtu": 70000})), InvalidConfig, "576..=9001"),
        (
            main_with(json!({"socket": "agent.sock"})),
            InvalidConfig,
            "absolute path",
        ),
        (main_with(json!({"logFile": "x.log"})), InvalidConfig, "absolute path"),
        (main_with(json!({"logLevel": "loud"})), InvalidConfig, "loud"),
        (main_with(json!({"timeoutSeconds": 0})), InvalidConfig, "1..=600"),
        (main_with(json!({"dns": {"servers": []}})), InvalidConfig, "dns"),
        (
            main_with(json!({"prevResult": "x"})),
            InvalidConfig,
            "prevResult must be an object",
        ),
        (main_with(json!({"name": 7})), InvalidConfig, "name must be a string"),
        (
            main_with(json!({"cni.dev/valid-attachments": [{"containerID": "a"}]})),
            InvalidConfig,
            "valid-attachments",
        ),
        (
            main_with(json!({"cni.dev/valid-attachments": [{"containerID": "", "ifname": "eth0"}]})),
            InvalidConfig,
            "empty containerID",
        ),
    ];
    for (stdin, code, says) in cases {
        let shown = String::from_utf8_lossy(&stdin).into_owned();
        let error = config::parse(&stdin).expect_err(&shown);
        assert_eq!(error.code(), code, "{shown}: {error}");
        assert!(error.to_string().contains(says), "{shown}: {error}");
        assert_eq!(CniError::from(error).code, code);
    }
}

#[test]
fn version_hint_falls_back_to_ours() {
    assert_eq!(config::version_hint(br#"{"cniVersion":"0.4.0"}"#), Version::V0_4_0);
    assert_eq!(config::version_hint(br#"{"cniVersion":"9.9.9"}"#), Version::V1_1_0);
    assert_eq!(config::version_hint(b"\xff"), Version::V1_1_0);
}
