//! moto's EC2 server on a loopback port, for the tests of the aws-sdk-ec2 adapter.
//!
//! `scripts/install-moto.sh` installs it into `.venv/` at the repository root; `MOTO_SERVER`
//! names another `moto_server`. Without one the tests fail under `CI=true` and skip locally.

use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types;
use ipam_node_agent::ec2::aws::AwsEc2;
use ipam_node_agent::ec2::aws::AwsEc2Config;
use ipam_node_agent::ec2::aws::StaticCredentials;

/// moto's default region; its built-in AMIs live there.
pub const REGION: &str = "us-east-1";
/// How long moto may take to answer after starting (its imports are slow on a cold machine).
const STARTUP: Duration = Duration::from_secs(60);

/// A running `moto_server`, killed on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    /// "http://127.0.0.1:PORT".
    pub endpoint: String,
    log: PathBuf,
}

fn moto_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("MOTO_SERVER={} is not a file", path.display()))
        };
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.is_file() {
        Ok(venv)
    } else {
        Err(format!(
            "{} is missing: run `bash scripts/install-moto.sh` (or set MOTO_SERVER)",
            venv.display()
        ))
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|e| panic!("binding a free port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("the free port's address: {e}"))
        .port()
}

fn skip_or_fail(test: &str, reason: &str) -> Option<Moto> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs moto_server, and CI=true makes that a failure, not a skip: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
    None
}

impl Moto {
    /// Starts moto for `test`; `None` (after printing why) when moto is not installed and this is
    /// not CI. Panics under `CI=true` when moto is missing or does not come up.
    pub fn start(test: &str) -> Option<Self> {
        let binary = match moto_binary() {
            Ok(binary) => binary,
            Err(reason) => return skip_or_fail(test, &reason),
        };
        // The port is free when chosen; another process can take it before moto binds it, so try
        // a few ports.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = std::env::temp_dir().join(format!("moto-{}-{port}.log", std::process::id()));
            let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
            let err_file = log_file
                .try_clone()
                .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
            let child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(err_file)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
            let mut moto = Self {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
                log,
            };
            match moto.wait_until_up(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) {
                Ok(()) => return Some(moto),
                Err(why) => last = why,
            }
        }
        panic!("{test}: moto_server did not come up: {last}")
    }

    fn wait_until_up(&mut self, addr: SocketAddr) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "exited with {status}; log {}:\n{}",
                    self.log.display(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "no answer on {addr} within {STARTUP:?}; log {}",
            self.log.display()
        ))
    }

    /// The adapter's configuration for this server: its endpoint, moto's region, dummy keys.
    pub fn config(&self) -> AwsEc2Config {
        AwsEc2Config {
            region: Some(REGION.to_owned()),
            endpoint_url: Some(self.endpoint.clone()),
            credentials: Some(StaticCredentials {
                access_key_id: "testing".to_owned(),
                secret_access_key: "testing".to_owned(),
            }),
            max_attempts: 1,
            ..AwsEc2Config::default()
        }
    }

    /// A fresh adapter (a fresh SDK client: what a restarted agent has).
    pub async fn ec2(&self) -> AwsEc2 {
        AwsEc2::new(self.config())
            .await
            .unwrap_or_else(|e| panic!("AwsEc2 for moto: {e}"))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// What the tests need in moto: a VPC, a subnet, a security group and a running instance.
#[derive(Debug, Clone)]
pub struct World {
    /// The subnet, 10.0.1.0/24.
    pub subnet_id: String,
    /// Its availability zone.
    pub availability_zone: String,
    /// A security group of the VPC.
    pub security_group: String,
    /// A running m5.large in the subnet.
    pub instance_id: String,
}

/// The subnet's CIDR.
pub const SUBNET_CIDR: &str = "10.0.1.0/24";

/// Creates the VPC, subnet, security group and instance through the SDK directly (the `Ec2`
/// trait has no such calls).
pub async fn setup(client: &Client) -> World {
    let availability_zone = format!("{REGION}a");
    let vpc = client
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateVpc: {e:?}"));
    let vpc_id = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .unwrap_or_else(|| panic!("CreateVpc without an id"))
        .to_owned();
    let subnet = client
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block(SUBNET_CIDR)
        .availability_zone(&availability_zone)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateSubnet: {e:?}"));
    let subnet_id = subnet
        .subnet()
        .and_then(|s| s.subnet_id())
        .unwrap_or_else(|| panic!("CreateSubnet without an id"))
        .to_owned();
    let group = client
        .create_security_group()
        .vpc_id(&vpc_id)
        .group_name("pods")
        .description("pods")
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateSecurityGroup: {e:?}"));
    let security_group = group
        .group_id()
        .unwrap_or_else(|| panic!("CreateSecurityGroup without an id"))
        .to_owned();
    let images = client
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeImages: {e:?}"));
    let image_id = images
        .images()
        .iter()
        .find_map(|i| i.image_id())
        .unwrap_or_else(|| panic!("moto has no AMI"))
        .to_owned();
    let run = client
        .run_instances()
        .image_id(image_id)
        .instance_type(types::InstanceType::M5Large)
        .subnet_id(&subnet_id)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap_or_else(|e| panic!("RunInstances: {e:?}"));
    let instance_id = run
        .instances()
        .first()
        .and_then(|i| i.instance_id())
        .unwrap_or_else(|| panic!("RunInstances without an instance"))
        .to_owned();
    World {
        subnet_id,
        availability_zone,
        security_group,
        instance_id,
    }
}
