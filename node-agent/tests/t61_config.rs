//! The agent's configuration: every knob's default, good values and bad values (each error names
//! the environment variable, the flag and the value), and clap reading the environment the way
//! the VPC CNI's DaemonSet sets it.
//!
//! Tests of [`Config::from_args`] build [`Args`] directly, so that the environment of the test
//! process cannot change them. The tests of the environment itself run this test binary again
//! as a child process with a cleared environment holding only the variables under test (a
//! library must not set variables in its own process: `set_var` is `unsafe`, and this workspace
//! forbids `unsafe`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use ipam_core::cidr::Ipv4Cidr;
use ipam_node_agent::config::Args;
use ipam_node_agent::config::Config;
use ipam_node_agent::config::ConfigError;
use ipam_node_agent::config::DEFAULT_IP_COOLDOWN;
use ipam_node_agent::config::DEFAULT_SOCKET_MODE;
use ipam_node_agent::config::Ec2Mode;
use ipam_node_agent::config::KubeMode;
use ipam_node_agent::config::knobs;
use ipam_node_agent::identity::IdentitySource;
use ipam_node_agent::identity::Origin;
use ipam_node_agent::warm::Targets;
use ipam_node_agent::warm::TargetsError;

const NODE: &str = "ip-10-0-17-23.us-west-2.compute.internal";
const CLUSTER: &str = "demo";

fn base() -> Args {
    Args {
        node_name: Some(NODE.to_owned()),
        cluster_name: Some(CLUSTER.to_owned()),
        ..Args::default()
    }
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().expect("a test CIDR")
}

fn config(args: Args) -> Config {
    Config::from_args(args).unwrap_or_else(|e| panic!("a valid configuration: {e}"))
}

fn error(args: Args) -> ConfigError {
    match Config::from_args(args) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e,
    }
}

/// `args` with the identity flags of a local run.
fn flag_identity(args: Args) -> Args {
    Args {
        identity: some("flags"),
        instance_id: some("i-0123456789abcdef0"),
        instance_type: some("m5.large"),
        availability_zone: some("us-west-2a"),
        primary_ip: some("10.0.0.10"),
        primary_mac: some("02:00:00:00:00:01"),
        subnet_id: some("subnet-0000000000000000a"),
        vpc_cidrs: some("10.0.0.0/16,100.64.0.0/16"),
        ..args
    }
}

#[test]
fn the_defaults_need_only_the_node_name() {
    let config = config(Args {
        cluster_name: None,
        ..base()
    });
    assert_eq!(config.node_name, NODE);
    assert_eq!(config.cluster_name, None);
    assert_eq!(config.servers, vec!["http://127.0.0.1:7400".to_owned()]);
    assert_eq!(config.socket_path, PathBuf::from("/run/ipam-eks/agent.sock"));
    assert_eq!(config.socket_mode, 0o600);
    assert_eq!(config.socket_mode, DEFAULT_SOCKET_MODE);
    assert_eq!(
        config.metrics_listen,
        Some("0.0.0.0:61678".parse::<SocketAddr>().expect("address"))
    );
    assert_eq!(config.targets, Targets::default());
    assert!(!config.custom_networking);
    assert_eq!(config.eni_config_label, "k8s.amazonaws.com/eniConfig");
    assert_eq!(config.eni_config_annotation, "k8s.amazonaws.com/eniConfig");
    assert!(!config.external_snat);
    assert!(config.exclude_snat_cidrs.is_empty());
    assert!(!config.pod_eni);
    assert_eq!(config.ip_cooldown, Duration::from_secs(30));
    assert_eq!(config.ip_cooldown, DEFAULT_IP_COOLDOWN);
    assert_eq!(config.ec2, Ec2Mode::Aws { endpoint_url: None });
    assert_eq!(
        config.identity,
        IdentitySource::Imds {
            endpoint: None,
            vpc_cidrs: None
        }
    );
    assert_eq!(config.kube, KubeMode::None);
    assert_eq!(config.limits_cache, None);
}

#[test]
fn the_node_name_is_required_and_names_are_checked() {
    let missing = error(Args {
        node_name: None,
        ..base()
    });
    assert!(matches!(missing, ConfigError::Missing { knob, .. } if knob == knobs::NODE_NAME));
    assert!(missing.to_string().contains("MY_NODE_NAME"), "{missing}");
    let blank = error(Args {
        node_name: some("  "),
        ..base()
    });
    assert!(matches!(blank, ConfigError::Missing { knob, .. } if knob == knobs::NODE_NAME));
    assert_eq!(config(base()).cluster_name.as_deref(), Some(CLUSTER));

    assert_invalid(
        Args {
            node_name: some("Node_1"),
            ..base()
        },
        "MY_NODE_NAME",
        "Node_1",
    );
    assert_invalid(
        Args {
            node_name: some("a..b"),
            ..base()
        },
        "MY_NODE_NAME",
        "a..b",
    );
    assert_invalid(
        Args {
            cluster_name: some("-demo"),
            ..base()
        },
        "CLUSTER_NAME",
        "-demo",
    );
    assert_invalid(
        Args {
            cluster_name: some("de mo"),
            ..base()
        },
        "CLUSTER_NAME",
        "de mo",
    );
}

/// `args` is refused, naming `env` (and its flag) and `value`.
#[track_caller]
fn assert_invalid(args: Args, env: &str, value: &str) {
    let e = error(args);
    let message = e.to_string();
    let knob = match &e {
        ConfigError::Invalid { knob, value: v, .. } => {
            assert_eq!(v, value, "{message}");
            *knob
        }
        other => panic!("expected Invalid for {env}, got {other:?}"),
    };
    assert_eq!(knob.env, env, "{message}");
    assert!(message.contains(env), "{message}");
    assert!(message.contains(knob.flag), "{message}");
    assert!(message.contains(value), "{message}");
}

#[test]
fn servers_are_a_comma_list_of_host_port_or_urls() {
    let config = config(Args {
        servers: vec![
            "ipam-0.ipam.kube-system:7400".to_owned(),
            " https://10.0.0.5:7400/ ".to_owned(),
            "ipam-0.ipam.kube-system:7400".to_owned(),
            "[fd00::1]:7400".to_owned(),
        ],
        ..base()
    });
    assert_eq!(
        config.servers,
        vec![
            "http://ipam-0.ipam.kube-system:7400".to_owned(),
            "https://10.0.0.5:7400".to_owned(),
            "http://[fd00::1]:7400".to_owned(),
        ]
    );
    for bad in [
        "ipam",
        "ipam:0",
        "ipam:70000",
        "grpc://ipam:7400",
        ":7400",
        "ipam/x:7400",
        "fd00::1",
    ] {
        assert_invalid(
            Args {
                servers: vec![bad.to_owned()],
                ..base()
            },
            "IPAM_AGENT_SERVERS",
            bad,
        );
    }
}

#[test]
fn the_socket_path_and_mode() {
    let config = config(Args {
        socket: some("/var/run/agent.sock"),
        socket_mode: some("0660"),
        ..base()
    });
    assert_eq!(config.socket_path, PathBuf::from("/var/run/agent.sock"));
    assert_eq!(config.socket_mode, 0o660);
    for bad in ["agent.sock", "/run/ipam-eks/"] {
        assert_invalid(
            Args {
                socket: some(bad),
                ..base()
            },
            "IPAM_AGENT_SOCKET",
            bad,
        );
    }
    let long = format!("/{}", "x".repeat(120));
    assert_invalid(
        Args {
            socket: Some(long.clone()),
            ..base()
        },
        "IPAM_AGENT_SOCKET",
        &long,
    );
    for bad in ["0666", "0644", "0400", "rw", "0900", "01600", "0o"] {
        assert_invalid(
            Args {
                socket_mode: some(bad),
                ..base()
            },
            "IPAM_AGENT_SOCKET_MODE",
            bad,
        );
    }
}

#[test]
fn the_metrics_address_or_off() {
    let listen = config(Args {
        metrics_listen: some("127.0.0.1:9100"),
        ..base()
    })
    .metrics_listen;
    assert_eq!(listen, Some("127.0.0.1:9100".parse().expect("address")));
    let off = config(Args {
        metrics_listen: some("off"),
        ..base()
    });
    assert_eq!(off.metrics_listen, None);
    for bad in ["61678", "localhost:61678", "0.0.0.0"] {
        assert_invalid(
            Args {
                metrics_listen: some(bad),
                ..base()
            },
            "IPAM_AGENT_METRICS_LISTEN",
            bad,
        );
    }
}

#[test]
fn warm_targets_are_read_by_the_planners_own_parser() {
    let config = config(Args {
        warm_eni_target: some("2"),
        warm_ip_target: some("5"),
        minimum_ip_target: some("10"),
        max_eni: some("3"),
        ..base()
    });
    let expected = Targets::from_vars(|var| match var {
        "WARM_ENI_TARGET" => some("2"),
        "WARM_IP_TARGET" => some("5"),
        "MINIMUM_IP_TARGET" => some("10"),
        "MAX_ENI" => some("3"),
        _ => None,
    })
    .expect("targets");
    assert_eq!(config.targets, expected);
    assert_eq!(config.targets.warm_ip, Some(5));

    type Set = fn(&mut Args, String);
    let cases: [(&str, Set); 4] = [
        ("WARM_ENI_TARGET", |a, v| a.warm_eni_target = Some(v)),
        ("WARM_IP_TARGET", |a, v| a.warm_ip_target = Some(v)),
        ("MINIMUM_IP_TARGET", |a, v| a.minimum_ip_target = Some(v)),
        ("MAX_ENI", |a, v| a.max_eni = Some(v)),
    ];
    for (var, set) in cases {
        for bad in ["-1", "ten", "99999999999"] {
            let mut args = base();
            set(&mut args, bad.to_owned());
            let e = error(args);
            assert!(
                matches!(&e, ConfigError::Targets(
                    TargetsError::Negative { var: v, value }
                    | TargetsError::NotANumber { var: v, value }
                    | TargetsError::TooLarge { var: v, value }
                ) if *v == var && value == bad),
                "{var}={bad}: {e:?}"
            );
            let message = e.to_string();
            assert!(message.contains(var) && message.contains(bad), "{message}");
        }
    }
}

#[test]
fn booleans_accept_what_the_vpc_cni_accepts() {
    type Set = fn(&mut Args, Option<String>);
    type Get = fn(&Config) -> bool;
    let knobs: [(&str, Set, Get); 3] = [
        (
            "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG",
            |a, v| a.custom_network = v,
            |c| c.custom_networking,
        ),
        (
            "AWS_VPC_K8S_CNI_EXTERNALSNAT",
            |a, v| a.external_snat = v,
            |c| c.external_snat,
        ),
        ("ENABLE_POD_ENI", |a, v| a.pod_eni = v, |c| c.pod_eni),
    ];
    for (env, set, get) in knobs {
        for (value, expected) in [
            ("1", true),
            ("t", true),
            ("T", true),
            ("TRUE", true),
            ("true", true),
            ("True", true),
            ("0", false),
            ("f", false),
            ("F", false),
            ("FALSE", false),
            ("false", false),
            ("False", false),
            ("", false),
        ] {
            let mut args = base();
            set(&mut args, some(value));
            assert_eq!(get(&config(args)), expected, "{env}={value:?}");
        }
        for bad in ["yes", "on", "tRuE", "2", "enabled"] {
            let mut args = base();
            set(&mut args, some(bad));
            assert_invalid(args, env, bad);
        }
    }
}

#[test]
fn eni_config_label_and_annotation_are_carried_and_checked() {
    let config = config(Args {
        eni_config_label: some("topology.kubernetes.io/zone"),
        eni_config_annotation: some("example.com/eni-config"),
        ..base()
    });
    assert_eq!(config.eni_config_label, "topology.kubernetes.io/zone");
    assert_eq!(config.eni_config_annotation, "example.com/eni-config");
    let plain = self::config(Args {
        eni_config_label: some("eniConfig"),
        ..base()
    });
    assert_eq!(plain.eni_config_label, "eniConfig");
    for bad in ["bad key", "example.com/", "/name", "Example_Com/name", "name-"] {
        assert_invalid(
            Args {
                eni_config_label: some(bad),
                ..base()
            },
            "ENI_CONFIG_LABEL_DEF",
            bad,
        );
        assert_invalid(
            Args {
                eni_config_annotation: some(bad),
                ..base()
            },
            "ENI_CONFIG_ANNOTATION_DEF",
            bad,
        );
    }
}

#[test]
fn snat_exclusions_are_ipv4_cidrs() {
    let config = config(Args {
        exclude_snat_cidrs: some(" 192.168.0.0/16, 172.16.0.0/12,,192.168.0.0/16 "),
        ..base()
    });
    assert_eq!(
        config.exclude_snat_cidrs,
        vec![cidr("192.168.0.0/16"), cidr("172.16.0.0/12")]
    );
    for bad in [
        "192.168.0.0",
        "192.168.0.0/33",
        "192.168.1.1/16",
        "10.0.0.0/8,fd00::/8",
        "10.0.0.0/8,nonsense",
    ] {
        assert_invalid(
            Args {
                exclude_snat_cidrs: some(bad),
                ..base()
            },
            "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
            bad,
        );
    }
}

#[test]
fn the_cooldown_is_whole_seconds() {
    for (value, seconds) in [("0", 0), ("45", 45), ("+7", 7), ("", 30)] {
        let config = config(Args {
            ip_cooldown: some(value),
            ..base()
        });
        assert_eq!(config.ip_cooldown, Duration::from_secs(seconds), "{value:?}");
    }
    for bad in ["-1", "30s", "1.5", "thirty", "99999999999999999999999"] {
        assert_invalid(
            Args {
                ip_cooldown: some(bad),
                ..base()
            },
            "IP_COOLDOWN_PERIOD",
            bad,
        );
    }
}

#[test]
fn ec2_is_aws_an_endpoint_or_the_simulator() {
    let mode = |value: &str| {
        config(Args {
            ec2: some(value),
            ..base()
        })
        .ec2
    };
    assert_eq!(mode("aws"), Ec2Mode::Aws { endpoint_url: None });
    assert_eq!(mode("sim"), Ec2Mode::Sim);
    assert_eq!(mode("SIM"), Ec2Mode::Sim);
    assert_eq!(
        mode("http://127.0.0.1:5000"),
        Ec2Mode::Aws {
            endpoint_url: some("http://127.0.0.1:5000")
        }
    );
    for bad in ["moto", "127.0.0.1:5000", "http://", "ftp://x"] {
        assert_invalid(
            Args {
                ec2: some(bad),
                ..base()
            },
            "IPAM_AGENT_EC2",
            bad,
        );
    }
}

#[test]
fn identity_from_imds_takes_an_endpoint_and_optional_vpc_cidrs() {
    let config = config(Args {
        imds_endpoint: some("http://127.0.0.1:1338"),
        vpc_cidrs: some("10.0.0.0/16"),
        ..base()
    });
    assert_eq!(
        config.identity,
        IdentitySource::Imds {
            endpoint: some("http://127.0.0.1:1338"),
            vpc_cidrs: Some(vec![cidr("10.0.0.0/16")]),
        }
    );
    assert_invalid(
        Args {
            imds_endpoint: some("169.254.169.254"),
            ..base()
        },
        "IPAM_AGENT_IMDS_ENDPOINT",
        "169.254.169.254",
    );
    assert_invalid(
        Args {
            vpc_cidrs: some("10.0.0.0/33"),
            ..base()
        },
        "IPAM_AGENT_VPC_CIDRS",
        "10.0.0.0/33",
    );
    assert_invalid(
        Args {
            identity: some("ec2"),
            ..base()
        },
        "IPAM_AGENT_IDENTITY",
        "ec2",
    );
    // An identity flag without --identity flags is a mistake, not silently ignored.
    let e = error(Args {
        instance_id: some("i-0123456789abcdef0"),
        ..base()
    });
    assert!(
        matches!(e, ConfigError::Conflict { knob, other, .. } if knob == knobs::INSTANCE_ID && other == knobs::IDENTITY),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(
        message.contains("IPAM_AGENT_INSTANCE_ID") && message.contains("IPAM_AGENT_IDENTITY"),
        "{message}"
    );
}

#[test]
fn identity_from_flags() {
    let config = config(flag_identity(base()));
    let IdentitySource::Given(identity) = &config.identity else {
        panic!("a given identity: {:?}", config.identity);
    };
    assert_eq!(identity.instance_id, "i-0123456789abcdef0");
    assert_eq!(identity.region, "us-west-2");
    assert_eq!(identity.vpc_cidrs, vec![cidr("10.0.0.0/16"), cidr("100.64.0.0/16")]);
    assert_eq!(identity.origin, Origin::Flags);

    type Clear = fn(&mut Args);
    let missing: [(&str, Clear); 7] = [
        ("IPAM_AGENT_INSTANCE_ID", |a| a.instance_id = None),
        ("IPAM_AGENT_INSTANCE_TYPE", |a| a.instance_type = None),
        ("IPAM_AGENT_AVAILABILITY_ZONE", |a| a.availability_zone = None),
        ("IPAM_AGENT_PRIMARY_IP", |a| a.primary_ip = None),
        ("IPAM_AGENT_PRIMARY_MAC", |a| a.primary_mac = None),
        ("IPAM_AGENT_SUBNET_ID", |a| a.subnet_id = None),
        ("IPAM_AGENT_VPC_CIDRS", |a| a.vpc_cidrs = None),
    ];
    for (env, clear) in missing {
        let mut args = flag_identity(base());
        clear(&mut args);
        let e = error(args);
        assert!(
            matches!(e, ConfigError::Missing { knob, .. } if knob.env == env),
            "{env}: {e:?}"
        );
        assert!(e.to_string().contains(env), "{e}");
    }
    let e = error(Args {
        availability_zone: some("us-west-2-lax-1a"),
        ..flag_identity(base())
    });
    assert!(
        matches!(e, ConfigError::Missing { knob, .. } if knob == knobs::REGION),
        "{e:?}"
    );

    type Spoil = fn(&mut Args);
    let bad: [(&str, &str, Spoil); 8] = [
        ("IPAM_AGENT_INSTANCE_ID", "x-1", |a| a.instance_id = some("x-1")),
        ("IPAM_AGENT_INSTANCE_TYPE", "large", |a| a.instance_type = some("large")),
        ("IPAM_AGENT_AVAILABILITY_ZONE", "Zone A", |a| {
            a.availability_zone = some("Zone A")
        }),
        ("IPAM_AGENT_REGION", "US", |a| a.region = some("US")),
        ("IPAM_AGENT_PRIMARY_IP", "10.0.0", |a| a.primary_ip = some("10.0.0")),
        ("IPAM_AGENT_PRIMARY_MAC", "02-00-00-00-00-01", |a| {
            a.primary_mac = some("02-00-00-00-00-01")
        }),
        ("IPAM_AGENT_PRIMARY_ENI_ID", "eni", |a| a.primary_eni_id = some("eni")),
        ("IPAM_AGENT_SUBNET_ID", "subnet-", |a| a.subnet_id = some("subnet-")),
    ];
    for (env, value, spoil) in bad {
        let mut args = flag_identity(base());
        spoil(&mut args);
        assert_invalid(args, env, value);
    }
    let e = error(Args {
        imds_endpoint: some("http://127.0.0.1:1338"),
        ..flag_identity(base())
    });
    assert!(
        matches!(e, ConfigError::Conflict { knob, .. } if knob == knobs::IMDS_ENDPOINT),
        "{e:?}"
    );
}

#[test]
fn kube_modes() {
    let mode = |args: Args| config(args).kube;
    assert_eq!(mode(base()), KubeMode::None);
    assert_eq!(
        mode(Args {
            kubernetes_service_host: some("10.100.0.1"),
            ..base()
        }),
        KubeMode::InCluster
    );
    assert_eq!(
        mode(Args {
            manifests: some("/etc/ipam/manifests"),
            kubernetes_service_host: some("10.100.0.1"),
            ..base()
        }),
        KubeMode::Manifests(PathBuf::from("/etc/ipam/manifests"))
    );
    assert_eq!(
        mode(Args {
            kubeconfig: some("/root/.kube/config"),
            ..base()
        }),
        KubeMode::Kubeconfig(Some(PathBuf::from("/root/.kube/config")))
    );
    assert_eq!(
        mode(Args {
            kube: some("kubeconfig"),
            ..base()
        }),
        KubeMode::Kubeconfig(None)
    );
    assert_eq!(
        mode(Args {
            kube: some("in-cluster"),
            ..base()
        }),
        KubeMode::InCluster
    );
    assert_eq!(
        mode(Args {
            kube: some("none"),
            kubernetes_service_host: some("10.100.0.1"),
            ..base()
        }),
        KubeMode::None
    );
    assert_eq!(
        mode(Args {
            kube: some("manifests"),
            manifests: some("m"),
            ..base()
        }),
        KubeMode::Manifests(PathBuf::from("m"))
    );
    assert_invalid(
        Args {
            kube: some("cluster"),
            ..base()
        },
        "IPAM_AGENT_KUBE",
        "cluster",
    );
    let e = error(Args {
        kube: some("manifests"),
        ..base()
    });
    assert!(
        matches!(e, ConfigError::Missing { knob, .. } if knob == knobs::MANIFESTS),
        "{e:?}"
    );
    for kube in ["in-cluster", "kubeconfig", "none"] {
        let e = error(Args {
            kube: some(kube),
            manifests: some("m"),
            ..base()
        });
        assert!(
            matches!(e, ConfigError::Conflict { knob, other, .. } if knob == knobs::MANIFESTS && other == knobs::KUBE),
            "{kube}: {e:?}"
        );
    }
    let e = error(Args {
        manifests: some("m"),
        kubeconfig: some("k"),
        ..base()
    });
    assert!(matches!(e, ConfigError::Conflict { .. }), "{e:?}");
    assert!(e.to_string().contains("KUBECONFIG"), "{e}");
}

#[test]
fn the_limits_cache_is_a_path() {
    let config = config(Args {
        limits_cache: some("/var/lib/ipam/limits.json"),
        ..base()
    });
    assert_eq!(config.limits_cache, Some(PathBuf::from("/var/lib/ipam/limits.json")));
}

// ---- clap and the environment, in a child process ----------------------------------------------

/// The variable that makes [`child`] do its work, holding its arguments separated by '\x1f'.
const CHILD: &str = "IPAM_T61_CHILD_ARGS";

/// Run as a child of the tests below (else a no-op): parses the process's flags and environment
/// and prints the outcome on one line.
#[test]
fn child() {
    let Ok(args) = std::env::var(CHILD) else {
        return;
    };
    let argv = std::iter::once("node-agent").chain(args.split('\x1f').filter(|a| !a.is_empty()));
    match Args::try_parse_from(argv) {
        Err(e) => println!("CLAP={}", e.to_string().replace('\n', " ")),
        Ok(args) => match Config::from_args(args) {
            Ok(config) => println!("CONFIG={config:?}"),
            Err(e) => println!("ERROR={e}"),
        },
    }
}

/// Runs [`child`] with only `env` in its environment and `args` as flags; its one line.
fn run_child(env: &[(&str, &str)], args: &[&str]) -> String {
    let exe = std::env::current_exe().expect("the test binary");
    let output = Command::new(exe)
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env_clear()
        .env(CHILD, args.join("\x1f"))
        .envs(env.iter().copied())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // libtest prints "test child ... " on the line the outcome starts.
    stdout
        .lines()
        .find_map(|line| {
            ["CONFIG=", "ERROR=", "CLAP="]
                .iter()
                .find_map(|marker| line.find(marker))
                .map(|at| line[at..].to_owned())
        })
        .unwrap_or_else(|| panic!("no outcome in the child's output: {stdout}"))
}

/// Every knob, as (environment variable, flag, value).
const EVERY_KNOB: [(&str, &str, &str); 29] = [
    ("MY_NODE_NAME", "--node-name", NODE),
    ("CLUSTER_NAME", "--cluster-name", CLUSTER),
    ("IPAM_AGENT_SERVERS", "--servers", "ipam-0:7400,ipam-1:7400"),
    ("IPAM_AGENT_SOCKET", "--socket", "/run/agent.sock"),
    ("IPAM_AGENT_SOCKET_MODE", "--socket-mode", "0660"),
    ("IPAM_AGENT_METRICS_LISTEN", "--metrics-listen", "127.0.0.1:9100"),
    ("WARM_ENI_TARGET", "--warm-eni-target", "2"),
    ("WARM_IP_TARGET", "--warm-ip-target", "5"),
    ("MINIMUM_IP_TARGET", "--minimum-ip-target", "10"),
    ("MAX_ENI", "--max-eni", "3"),
    ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "--custom-network", "true"),
    (
        "ENI_CONFIG_LABEL_DEF",
        "--eni-config-label",
        "topology.kubernetes.io/zone",
    ),
    (
        "ENI_CONFIG_ANNOTATION_DEF",
        "--eni-config-annotation",
        "example.com/eni",
    ),
    ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "--external-snat", "1"),
    (
        "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
        "--exclude-snat-cidrs",
        "192.168.0.0/16",
    ),
    ("ENABLE_POD_ENI", "--pod-eni", "True"),
    ("IP_COOLDOWN_PERIOD", "--ip-cooldown", "45"),
    ("IPAM_AGENT_EC2", "--ec2", "sim"),
    ("IPAM_AGENT_IDENTITY", "--identity", "flags"),
    ("IPAM_AGENT_INSTANCE_ID", "--instance-id", "i-0123456789abcdef0"),
    ("IPAM_AGENT_INSTANCE_TYPE", "--instance-type", "m5.large"),
    ("IPAM_AGENT_AVAILABILITY_ZONE", "--availability-zone", "us-west-2a"),
    ("IPAM_AGENT_REGION", "--region", "us-west-2"),
    ("IPAM_AGENT_PRIMARY_IP", "--primary-ip", "10.0.0.10"),
    ("IPAM_AGENT_PRIMARY_MAC", "--primary-mac", "02:00:00:00:00:01"),
    ("IPAM_AGENT_PRIMARY_ENI_ID", "--primary-eni-id", "eni-0123456789abcdef0"),
    ("IPAM_AGENT_SUBNET_ID", "--subnet-id", "subnet-0000000000000000a"),
    ("IPAM_AGENT_VPC_CIDRS", "--vpc-cidrs", "10.0.0.0/16"),
    ("IPAM_AGENT_MANIFESTS", "--manifests", "/etc/ipam/manifests"),
];

#[test]
fn every_environment_variable_means_what_its_flag_means() {
    let from_env = run_child(&EVERY_KNOB.map(|(env, _, value)| (env, value)), &[]);
    let flags: Vec<String> = EVERY_KNOB
        .iter()
        .map(|(_, flag, value)| format!("{flag}={value}"))
        .collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let from_flags = run_child(&[], &flags);

    assert!(from_env.starts_with("CONFIG="), "{from_env}");
    assert_eq!(from_env, from_flags);
    for expected in [
        "custom_networking: true",
        "external_snat: true",
        "pod_eni: true",
        "ip_cooldown: 45s",
        "socket_mode: 432", // 0o660
        "Manifests(\"/etc/ipam/manifests\")",
        "warm_ip: Some(5)",
        "ec2: Sim",
        "\"http://ipam-1:7400\"",
    ] {
        assert!(from_env.contains(expected), "{expected} in {from_env}");
    }
    // The two limits-cache and kubeconfig knobs are paths carried as given.
    let cache = run_child(
        &[
            ("MY_NODE_NAME", NODE),
            ("CLUSTER_NAME", CLUSTER),
            ("IPAM_AGENT_LIMITS_CACHE", "/var/lib/ipam/limits.json"),
            ("KUBECONFIG", "/root/.kube/config"),
        ],
        &[],
    );
    assert!(
        cache.contains("limits_cache: Some(\"/var/lib/ipam/limits.json\")"),
        "{cache}"
    );
    assert!(cache.contains("Kubeconfig(Some(\"/root/.kube/config\"))"), "{cache}");
}

#[test]
fn the_environment_alone_gives_the_defaults() {
    let outcome = run_child(&[("MY_NODE_NAME", NODE)], &[]);
    let defaults = config(Args {
        cluster_name: None,
        ..base()
    });
    assert_eq!(outcome, format!("CONFIG={defaults:?}"));
}

#[test]
fn empty_variables_are_unset_as_in_the_vpc_cni() {
    let outcome = run_child(
        &[
            ("MY_NODE_NAME", NODE),
            ("CLUSTER_NAME", CLUSTER),
            ("WARM_IP_TARGET", ""),
            ("IP_COOLDOWN_PERIOD", ""),
            ("ENABLE_POD_ENI", ""),
            ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", ""),
            ("ENI_CONFIG_LABEL_DEF", ""),
        ],
        &[],
    );
    assert_eq!(outcome, format!("CONFIG={:?}", config(base())));
}

#[test]
fn a_pod_is_in_cluster() {
    let outcome = run_child(
        &[
            ("MY_NODE_NAME", NODE),
            ("CLUSTER_NAME", CLUSTER),
            ("KUBERNETES_SERVICE_HOST", "10.100.0.1"),
        ],
        &[],
    );
    assert!(outcome.contains("kube: InCluster"), "{outcome}");
}

#[test]
fn a_bad_variable_is_named_with_its_value() {
    let outcome = run_child(
        &[
            ("MY_NODE_NAME", NODE),
            ("CLUSTER_NAME", CLUSTER),
            ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "yes"),
        ],
        &[],
    );
    assert!(outcome.starts_with("ERROR="), "{outcome}");
    assert!(
        outcome.contains("AWS_VPC_K8S_CNI_EXTERNALSNAT") && outcome.contains("\"yes\""),
        "{outcome}"
    );
    let outcome = run_child(&[("CLUSTER_NAME", CLUSTER)], &[]);
    // The node name is the one setting without a default.
    assert!(
        outcome.starts_with("ERROR=") && outcome.contains("MY_NODE_NAME"),
        "{outcome}"
    );
}

#[test]
fn boolean_flags_may_stand_alone_and_flags_beat_the_environment() {
    let outcome = run_child(
        &[
            ("MY_NODE_NAME", NODE),
            ("CLUSTER_NAME", CLUSTER),
            ("ENABLE_POD_ENI", "false"),
        ],
        &["--pod-eni", "--external-snat", "--custom-network=false"],
    );
    assert!(outcome.contains("pod_eni: true"), "{outcome}");
    assert!(outcome.contains("external_snat: true"), "{outcome}");
    assert!(outcome.contains("custom_networking: false"), "{outcome}");
}
