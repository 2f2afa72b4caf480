//! Instance limits (EC2 first, cached, the built-in table when EC2 fails) and the agent's metrics
//! (EC2 calls measured by `InstrumentedEc2`, scraped over HTTP from 127.0.0.1), on the EC2
//! simulator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipam_core::limits::InstanceLimits;
use ipam_core::limits::lookup;
use ipam_node_agent::ec2::Ec2;
use ipam_node_agent::ec2::sim::Latency;
use ipam_node_agent::ec2::sim::Operation;
use ipam_node_agent::ec2::sim::SimConfig;
use ipam_node_agent::ec2::sim::SimEc2;
use ipam_node_agent::limits::LimitsError;
use ipam_node_agent::limits::LimitsResolver;
use ipam_node_agent::limits::LimitsSource;
use ipam_node_agent::metrics::InstrumentedEc2;
use ipam_node_agent::metrics::Metrics;
use ipam_node_agent::metrics::OPENMETRICS_CONTENT_TYPE;
use ipam_node_agent::metrics::serve;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;

const SUBNET: &str = "subnet-0000000000000000a";
const CUSTOM: &str = "x9.custom";
const CUSTOM_LIMITS: InstanceLimits = InstanceLimits {
    max_enis: 4,
    ipv4_per_eni: 12,
    branch_enis: 0,
    trunking: false,
};

/// A simulator without throttling, one subnet and one type the built-in table does not know.
fn sim() -> Arc<SimEc2> {
    let sim = SimEc2::builder()
        .config(SimConfig {
            throttle: None,
            ..SimConfig::default()
        })
        .subnet(SUBNET, "10.0.0.0/24", "us-west-2a")
        .instance_type(CUSTOM, CUSTOM_LIMITS)
        .build()
        .unwrap_or_else(|e| panic!("simulator setup: {e}"));
    Arc::new(sim)
}

fn describe_calls(sim: &SimEc2) -> u64 {
    sim.stats(Operation::DescribeInstanceTypes).calls
}

#[tokio::test]
async fn limits_come_from_ec2_once_then_from_the_cache() {
    let sim = sim();
    let resolver = LimitsResolver::new(Arc::clone(&sim));

    let first = resolver.limits(CUSTOM).await.expect("limits from EC2");
    let second = resolver.limits(CUSTOM).await.expect("limits from the cache");

    assert_eq!(first.limits, CUSTOM_LIMITS);
    assert_eq!(first.source, LimitsSource::Ec2);
    assert_eq!(second, first);
    assert_eq!(describe_calls(&sim), 1, "the second lookup is a cache hit");
}

#[tokio::test(start_paused = true)]
async fn callers_racing_on_a_cold_cache_ask_ec2_once() {
    let sim = sim();
    sim.set_operation_latency(
        Operation::DescribeInstanceTypes,
        Latency::fixed(Duration::from_millis(200)),
    );
    let resolver = LimitsResolver::new(Arc::clone(&sim));

    let (a, b) = tokio::join!(resolver.limits(CUSTOM), resolver.limits(CUSTOM));

    assert_eq!(a.expect("a").limits, CUSTOM_LIMITS);
    assert_eq!(b.expect("b").limits, CUSTOM_LIMITS);
    assert_eq!(describe_calls(&sim), 1);
}

#[tokio::test]
async fn branch_enis_come_from_the_table_since_ec2_does_not_say() {
    let sim = sim();
    let resolver = LimitsResolver::new(Arc::clone(&sim));
    let table = lookup("m5.large").expect("m5.large is in the table");
    assert!(table.trunking && table.branch_enis > 0);

    let resolved = resolver.limits("m5.large").await.expect("m5.large");

    assert_eq!(resolved.source, LimitsSource::Ec2);
    assert_eq!(resolved.limits, table);
}

#[tokio::test]
async fn a_trunking_type_the_table_does_not_know_is_taken_without_trunking() {
    let sim = sim();
    let trunking = InstanceLimits {
        max_enis: 8,
        ipv4_per_eni: 30,
        branch_enis: 54,
        trunking: true,
    };
    sim.add_instance_type("x9.trunky", trunking).expect("a trunking type");
    let resolver = LimitsResolver::new(Arc::clone(&sim));

    let resolved = resolver.limits("x9.trunky").await.expect("limits from EC2");

    assert_eq!(resolved.source, LimitsSource::Ec2);
    assert_eq!(
        resolved.limits,
        InstanceLimits {
            branch_enis: 0,
            trunking: false,
            ..trunking
        }
    );
}

#[tokio::test]
async fn an_ec2_failure_falls_back_to_the_built_in_table_and_says_so() {
    let sim = sim();
    sim.fail_next(Operation::DescribeInstanceTypes, "InternalError", 1);
    let resolver = LimitsResolver::new(Arc::clone(&sim));

    let resolved = resolver.limits("m5.large").await.expect("limits from the table");
    let again = resolver.limits("m5.large").await.expect("limits from the cache");

    assert_eq!(resolved.source, LimitsSource::BuiltIn);
    assert_eq!(Some(resolved.limits), lookup("m5.large"));
    assert_eq!(again, resolved);
    assert_eq!(describe_calls(&sim), 1, "EC2 was tried once, the fallback was cached");
    assert_eq!(sim.stats(Operation::DescribeInstanceTypes).failed, 1);
}

#[tokio::test]
async fn a_type_neither_ec2_nor_the_table_knows_is_an_error_and_not_cached() {
    let sim = sim();
    let resolver = LimitsResolver::new(Arc::clone(&sim));

    let error = resolver.limits("z1.mystery").await.expect_err("nobody knows it");

    let LimitsError::Unknown { instance_type, ec2 } = &error;
    assert_eq!(instance_type, "z1.mystery");
    assert!(ec2.contains("InvalidInstanceType"), "{ec2}");
    assert!(error.to_string().contains("z1.mystery"), "{error}");

    // EC2 failing for a type only EC2 knows is the same error.
    sim.fail_next(Operation::DescribeInstanceTypes, "RequestLimitExceeded", 1);
    let error = resolver
        .limits(CUSTOM)
        .await
        .expect_err("EC2 failed, the table does not know it");
    assert!(error.to_string().contains("RequestLimitExceeded"), "{error}");
    // Nothing was cached: the next lookup asks EC2 again, and succeeds.
    let resolved = resolver.limits(CUSTOM).await.expect("EC2 answers now");
    assert_eq!(resolved.source, LimitsSource::Ec2);
    assert_eq!(describe_calls(&sim), 3);
}

/// A path in the temporary directory unique to this process and `name`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("ipam-t62-{}-{name}.json", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn the_file_cache_spares_the_next_agent_an_ec2_call() {
    let file = TempFile::new("file-cache");
    let first_sim = sim();
    let first = LimitsResolver::new(Arc::clone(&first_sim)).with_file_cache(&file.0);
    assert_eq!(first.limits(CUSTOM).await.expect("from EC2").source, LimitsSource::Ec2);
    assert!(file.0.exists(), "EC2's answer was written");

    // A restarted agent: a new resolver, a new (failing) EC2.
    let second_sim = sim();
    second_sim.fail_next(Operation::DescribeInstanceTypes, "InternalError", 1);
    let second = LimitsResolver::new(Arc::clone(&second_sim)).with_file_cache(&file.0);
    let resolved = second.limits(CUSTOM).await.expect("from the file");

    assert_eq!(resolved.source, LimitsSource::FileCache);
    assert_eq!(resolved.limits, CUSTOM_LIMITS);
    assert_eq!(describe_calls(&second_sim), 0);
}

#[tokio::test]
async fn a_corrupt_file_cache_is_ignored() {
    let file = TempFile::new("corrupt");
    std::fs::write(&file.0, b"{ not json").expect("write the corrupt cache");
    let sim = sim();
    let resolver = LimitsResolver::new(Arc::clone(&sim)).with_file_cache(&file.0);

    let resolved = resolver.limits(CUSTOM).await.expect("from EC2");

    assert_eq!(resolved.source, LimitsSource::Ec2);
    let rewritten = std::fs::read_to_string(&file.0).expect("the cache was rewritten");
    assert!(rewritten.contains(CUSTOM), "{rewritten}");
}

/// The value of the sample `name{labels}` (labels in any order, exactly these) in OpenMetrics
/// `text`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if series_name != name {
            return None;
        }
        let mut found: Vec<(&str, &str)> = series_labels
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        let mut wanted = labels.to_vec();
        found.sort_unstable();
        wanted.sort_unstable();
        (found == wanted).then(|| value.parse().ok()).flatten()
    })
}

/// GET `path` from `address` over HTTP/1.1: (status, content type, body).
async fn http_get(address: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("receive");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a header and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type").then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    // The body may be chunked; the samples are whole lines either way, and a chunk size line
    // never parses as a sample.
    (status, content_type, body.to_owned())
}

#[tokio::test]
async fn ec2_calls_and_failures_by_code_are_scraped_over_http() {
    let sim = sim();
    let metrics = Metrics::new();
    let ec2 = InstrumentedEc2::new(Arc::clone(&sim), metrics.clone());
    let subnets = [SUBNET.to_owned()];

    ec2.describe_subnets(&subnets).await.expect("DescribeSubnets");
    ec2.describe_subnets(&subnets).await.expect("DescribeSubnets");
    sim.fail_next(Operation::DescribeSubnets, "RequestLimitExceeded", 1);
    let throttled = ec2.describe_subnets(&subnets).await.expect_err("throttled");
    assert_eq!(throttled.code, "RequestLimitExceeded", "errors pass through unchanged");
    let missing = ec2
        .attach_network_interface("eni-00000000000000000", "i-0123456789abcdef0", 1)
        .await
        .expect_err("no such ENI");
    assert_eq!(missing.code, "InvalidNetworkInterfaceID.NotFound");
    ec2.describe_instance_types(&[CUSTOM.to_owned()])
        .await
        .expect("DescribeInstanceTypes");

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, metrics, async {
        let _ = stopped.await;
    }));
    let (status, content_type, text) = http_get(address, "/metrics").await;
    let _ = stop.send(());
    server.await.expect("the server task").expect("the server");

    assert_eq!(status, 200);
    assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
    let req = |api| sample(&text, "ipam_agent_ec2api_req_total", &[("api", api)]);
    assert_eq!(req("DescribeSubnets"), Some(3.0), "{text}");
    assert_eq!(req("AttachNetworkInterface"), Some(1.0));
    assert_eq!(req("DescribeInstanceTypes"), Some(1.0));
    assert_eq!(req("CreateNetworkInterface"), None, "never called");
    let errors = |api, code| {
        sample(
            &text,
            "ipam_agent_aws_api_error_total",
            &[("api", api), ("error", code)],
        )
    };
    assert_eq!(errors("DescribeSubnets", "RequestLimitExceeded"), Some(1.0));
    assert_eq!(
        errors("AttachNetworkInterface", "InvalidNetworkInterfaceID.NotFound"),
        Some(1.0)
    );
    assert_eq!(errors("DescribeInstanceTypes", "RequestLimitExceeded"), None);
    let latency_count = |api, error| {
        sample(
            &text,
            "ipam_agent_aws_api_latency_ms_count",
            &[("api", api), ("error", error)],
        )
    };
    assert_eq!(latency_count("DescribeSubnets", "false"), Some(2.0));
    assert_eq!(latency_count("DescribeSubnets", "true"), Some(1.0));
    // The simulator counted the same calls.
    assert_eq!(sim.stats(Operation::DescribeSubnets).calls, 3);
}

#[tokio::test(start_paused = true)]
async fn latency_is_measured_on_tokios_clock_in_milliseconds() {
    let sim = sim();
    sim.set_operation_latency(Operation::DescribeSubnets, Latency::fixed(Duration::from_millis(300)));
    let metrics = Metrics::new();
    let ec2 = InstrumentedEc2::new(Arc::clone(&sim), metrics.clone());

    ec2.describe_subnets(&[SUBNET.to_owned()])
        .await
        .expect("DescribeSubnets");

    let text = metrics.encode().expect("encode");
    let labels = |le| [("api", "DescribeSubnets"), ("error", "false"), ("le", le)];
    let bucket = |le| sample(&text, "ipam_agent_aws_api_latency_ms_bucket", &labels(le));
    assert_eq!(bucket("250.0"), Some(0.0), "{text}");
    assert_eq!(bucket("500.0"), Some(1.0));
    let sum = sample(
        &text,
        "ipam_agent_aws_api_latency_ms_sum",
        &[("api", "DescribeSubnets"), ("error", "false")],
    )
    .expect("the sum");
    assert!((sum - 300.0).abs() < 1.0, "{sum}");
}

#[test]
fn pool_and_request_metrics_carry_the_vpc_cnis_names() {
    let metrics = Metrics::new();
    metrics.set_enis(3, 4);
    metrics.set_ip_max(27);
    metrics.set_addresses(18, 7);
    metrics.set_eni_assigned("eni-1", 5);
    metrics.set_eni_assigned("eni-2", 2);
    metrics.remove_eni("eni-2");
    metrics.record_add_ip();
    metrics.record_add_ip();
    metrics.record_del_ip("pod-deleted");
    metrics.record_no_available_ip();
    metrics.record_reconcile("eni");
    metrics.record_error("warm-pool");
    let guard = metrics.action("increase-pool");

    let text = metrics.encode().expect("encode");
    let value = |name, labels: &[(&str, &str)]| sample(&text, name, labels);
    assert_eq!(value("ipam_agent_eni_allocated", &[]), Some(3.0), "{text}");
    assert_eq!(value("ipam_agent_eni_max", &[]), Some(4.0));
    assert_eq!(value("ipam_agent_ip_max", &[]), Some(27.0));
    assert_eq!(value("ipam_agent_total_ip_addresses", &[]), Some(18.0));
    assert_eq!(value("ipam_agent_assigned_ip_addresses", &[]), Some(7.0));
    assert_eq!(value("ipam_agent_assigned_ip_per_eni", &[("eni", "eni-1")]), Some(5.0));
    assert_eq!(
        value("ipam_agent_assigned_ip_per_eni", &[("eni", "eni-2")]),
        None,
        "removed"
    );
    assert_eq!(value("ipam_agent_add_ip_req_total", &[]), Some(2.0));
    assert_eq!(
        value("ipam_agent_del_ip_req_total", &[("reason", "pod-deleted")]),
        Some(1.0)
    );
    assert_eq!(value("ipam_agent_no_available_ip_addresses_total", &[]), Some(1.0));
    assert_eq!(value("ipam_agent_reconcile_total", &[("fn", "eni")]), Some(1.0));
    assert_eq!(value("ipam_agent_error_total", &[("fn", "warm-pool")]), Some(1.0));
    assert_eq!(
        value("ipam_agent_action_inprogress", &[("fn", "increase-pool")]),
        Some(1.0)
    );

    drop(guard);
    let text = metrics.encode().expect("encode");
    assert_eq!(
        sample(&text, "ipam_agent_action_inprogress", &[("fn", "increase-pool")]),
        Some(0.0)
    );
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
}

#[tokio::test]
async fn the_wrappers_compose_behind_dyn_ec2_as_the_agent_holds_it() {
    let sim = sim();
    let metrics = Metrics::new();
    let plain: Arc<dyn Ec2> = sim.clone();
    let measured: Arc<dyn Ec2> = Arc::new(InstrumentedEc2::new(plain, metrics.clone()));
    let resolver = LimitsResolver::new(measured);

    resolver.limits(CUSTOM).await.expect("from EC2");
    resolver.limits(CUSTOM).await.expect("from the cache");

    let text = metrics.encode().expect("encode");
    assert_eq!(
        sample(
            &text,
            "ipam_agent_ec2api_req_total",
            &[("api", "DescribeInstanceTypes")]
        ),
        Some(1.0),
        "{text}"
    );
}
