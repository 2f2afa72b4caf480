//! The `node-agent` binary refuses a bad configuration before touching anything, with a message
//! that names the knob (environment variable and flag) and the value.

use std::process::Command;

fn agent(env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_node-agent"));
    command.env_clear().args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run node-agent");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_vpc_cni_knobs() {
    let output = Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .arg("--help")
        .output()
        .expect("run node-agent --help");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for knob in [
        "WARM_IP_TARGET",
        "AWS_VPC_K8S_CNI_EXTERNALSNAT",
        "ENI_CONFIG_LABEL_DEF",
        "MY_NODE_NAME",
    ] {
        assert!(text.contains(knob), "--help does not mention {knob}:\n{text}");
    }
}

#[test]
fn a_missing_node_name_is_named() {
    let (code, stderr) = agent(&[], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("MY_NODE_NAME"), "{stderr}");
}

#[test]
fn a_bad_warm_target_is_named_with_its_value() {
    let (code, stderr) = agent(&[("MY_NODE_NAME", "node-a"), ("WARM_IP_TARGET", "lots")], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("WARM_IP_TARGET") && stderr.contains("lots"), "{stderr}");
}

#[test]
fn a_bad_snat_exclusion_is_named() {
    let (code, stderr) = agent(
        &[
            ("MY_NODE_NAME", "node-a"),
            ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "10.0.0.0/8,not-a-cidr"),
        ],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS") && stderr.contains("not-a-cidr"),
        "{stderr}"
    );
}
