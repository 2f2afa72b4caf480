//! The node's identity: from IMDSv2 (a fake IMDS on 127.0.0.1 that, like the real one, answers
//! nothing without a session token) and from flags.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::response::Response;
use ipam_core::cidr::Ipv4Cidr;
use ipam_node_agent::identity::Field;
use ipam_node_agent::identity::Identity;
use ipam_node_agent::identity::IdentityError;
use ipam_node_agent::identity::IdentityFlags;
use ipam_node_agent::identity::IdentitySource;
use ipam_node_agent::identity::Origin;
use ipam_node_agent::identity::imds_client;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;

const TOKEN: &str = "AQAEAFake-token-for-the-test==";
const MAC: &str = "0e:1a:2b:3c:4d:5e";

/// What the fake IMDS holds and saw.
#[derive(Debug, Default)]
struct Fake {
    /// Paths under /latest/meta-data/ and their answers.
    data: BTreeMap<String, String>,
    /// Refuse to hand out tokens (403), as an instance with IMDS turned off does.
    tokens_disabled: bool,
    /// Token PUTs answered with a token.
    tokens_issued: u32,
    /// Requests refused for a missing or wrong token.
    unauthorized: u32,
    /// Metadata GETs answered (200 or 404).
    answered: u32,
}

type Shared = Arc<Mutex<Fake>>;

fn realistic() -> BTreeMap<String, String> {
    let macs = format!("network/interfaces/macs/{MAC}");
    [
        ("instance-id", "i-0a1b2c3d4e5f67890".to_owned()),
        ("instance-type", "m5.large".to_owned()),
        ("placement/availability-zone", "us-west-2b".to_owned()),
        ("placement/region", "us-west-2".to_owned()),
        ("local-ipv4", "10.0.17.23".to_owned()),
        // IMDS answers the MAC in lower case; the upper case here checks the normalisation.
        ("mac", MAC.to_uppercase()),
        (&format!("{macs}/interface-id"), "eni-0f1e2d3c4b5a69788".to_owned()),
        (&format!("{macs}/subnet-id"), "subnet-0123abcd4567ef890".to_owned()),
        // IMDS lists a VPC's blocks one a line, primary first, with no trailing newline.
        (
            &format!("{macs}/vpc-ipv4-cidr-blocks"),
            "10.0.0.0/16\n100.64.0.0/16".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn imds(State(fake): State<Shared>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let mut fake = fake.lock().expect("fake IMDS lock");
    if uri.path() == "/latest/api/token" {
        if method != Method::PUT {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        if fake.tokens_disabled {
            return StatusCode::FORBIDDEN.into_response();
        }
        // IMDS requires the TTL header, 1..=21600 seconds.
        let ttl = headers
            .get("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|ttl| (1..=21_600).contains(ttl));
        let Some(ttl) = ttl else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        fake.tokens_issued += 1;
        return ([("x-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())], TOKEN).into_response();
    }
    let token = headers.get("x-aws-ec2-metadata-token").and_then(|v| v.to_str().ok());
    if token != Some(TOKEN) {
        fake.unauthorized += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if method != Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    fake.answered += 1;
    let path = uri.path().strip_prefix("/latest/meta-data/").unwrap_or_default();
    match fake.data.get(path) {
        Some(value) => value.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A fake IMDS on an ephemeral loopback port, serving `data`.
async fn start(data: BTreeMap<String, String>) -> (SocketAddr, Shared) {
    let fake: Shared = Arc::new(Mutex::new(Fake {
        data,
        ..Fake::default()
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake IMDS");
    let address = listener.local_addr().expect("the fake IMDS's address");
    let router = Router::new().fallback(imds).with_state(Arc::clone(&fake));
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("the fake IMDS serves");
    });
    (address, fake)
}

fn endpoint(address: SocketAddr) -> String {
    format!("http://{address}")
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().expect("a test CIDR")
}

/// The status of a GET without a token, spoken by hand (the SDK client always sends one).
async fn status_without_token(address: SocketAddr, path: &str) -> u16 {
    let mut stream = TcpStream::connect(address).await.expect("connect to the fake IMDS");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("receive");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("an HTTP status line")
}

#[tokio::test]
async fn identity_comes_from_imdsv2_with_a_session_token() {
    let (address, fake) = start(realistic()).await;
    let client = imds_client(Some(&endpoint(address))).expect("an IMDS client");

    let identity = Identity::from_imds(&client).await.expect("the identity from IMDS");

    assert_eq!(
        identity,
        Identity {
            instance_id: "i-0a1b2c3d4e5f67890".to_owned(),
            instance_type: "m5.large".to_owned(),
            availability_zone: "us-west-2b".to_owned(),
            region: "us-west-2".to_owned(),
            primary_ip: Ipv4Addr::new(10, 0, 17, 23),
            primary_mac: MAC.to_owned(),
            primary_eni_id: Some("eni-0f1e2d3c4b5a69788".to_owned()),
            subnet_id: "subnet-0123abcd4567ef890".to_owned(),
            vpc_cidrs: vec![cidr("10.0.0.0/16"), cidr("100.64.0.0/16")],
            origin: Origin::Imds,
        }
    );
    let fake = fake.lock().expect("fake IMDS lock");
    assert_eq!(fake.tokens_issued, 1, "one session token, reused for every request");
    assert_eq!(fake.unauthorized, 0, "every request carried the token");
    assert_eq!(fake.answered, 9, "the nine paths of the identity");
}

#[tokio::test]
async fn the_fake_imds_refuses_requests_without_a_token_as_imdsv2_does() {
    let (address, fake) = start(realistic()).await;
    assert_eq!(
        status_without_token(address, "/latest/meta-data/instance-id").await,
        401
    );
    assert_eq!(fake.lock().expect("fake IMDS lock").unauthorized, 1);
}

#[tokio::test]
async fn a_path_imds_does_not_have_is_named_in_the_error() {
    let mut data = realistic();
    data.remove("placement/region");
    let (address, _fake) = start(data).await;
    let client = imds_client(Some(&endpoint(address))).expect("an IMDS client");

    let error = Identity::from_imds(&client).await.expect_err("no region");

    assert!(
        matches!(&error, IdentityError::ImdsMissing { field: Field::Region, path } if path == "placement/region"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("/latest/meta-data/placement/region"), "{message}");
    assert!(message.contains("404"), "{message}");
}

#[tokio::test]
async fn a_missing_per_mac_path_names_the_mac() {
    let mut data = realistic();
    data.remove(&format!("network/interfaces/macs/{MAC}/subnet-id"));
    let (address, _fake) = start(data).await;
    let client = imds_client(Some(&endpoint(address))).expect("an IMDS client");

    let error = Identity::from_imds(&client).await.expect_err("no subnet");

    assert!(
        matches!(
            &error,
            IdentityError::ImdsMissing {
                field: Field::SubnetId,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains(&format!("network/interfaces/macs/{MAC}/subnet-id")),
        "{error}"
    );
}

#[tokio::test]
async fn a_value_of_the_wrong_shape_is_refused_naming_the_path() {
    let mut data = realistic();
    data.insert("local-ipv4".to_owned(), "10.0.17".to_owned());
    let (address, _fake) = start(data).await;
    let client = imds_client(Some(&endpoint(address))).expect("an IMDS client");

    let error = Identity::from_imds(&client).await.expect_err("a bad address");

    assert!(
        matches!(&error, IdentityError::BadValue { field: Field::PrimaryIp, origin: Origin::Imds, value, .. } if value == "10.0.17"),
        "{error:?}"
    );
    assert!(error.to_string().contains("local-ipv4"), "{error}");
}

#[tokio::test]
async fn imds_without_tokens_is_an_error_not_a_fallback_to_imdsv1() {
    let (address, fake) = start(realistic()).await;
    fake.lock().expect("fake IMDS lock").tokens_disabled = true;
    let client = imds_client(Some(&endpoint(address))).expect("an IMDS client");

    let error = Identity::from_imds(&client).await.expect_err("no token");

    assert!(
        matches!(
            &error,
            IdentityError::Imds {
                field: Field::InstanceId,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("token"), "{error}");
    assert_eq!(fake.lock().expect("fake IMDS lock").answered, 0);
}

#[tokio::test]
async fn an_unreachable_imds_is_an_error() {
    // A port nothing listens on: bind, learn it, close.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let client = imds_client(Some(&endpoint(address))).expect("an IMDS client");

    let error = Identity::from_imds(&client).await.expect_err("nothing listens");

    assert!(matches!(error, IdentityError::Imds { .. }), "{error:?}");
}

#[test]
fn an_imds_endpoint_that_is_not_a_uri_is_refused() {
    let error = imds_client(Some("http://exa mple")).expect_err("not a URI");
    assert!(matches!(error, IdentityError::BadEndpoint { .. }), "{error:?}");
}

#[tokio::test]
async fn the_source_resolves_imds_and_may_override_the_vpc_cidrs() {
    let (address, _fake) = start(realistic()).await;
    let source = IdentitySource::Imds {
        endpoint: Some(endpoint(address)),
        vpc_cidrs: Some(vec![cidr("172.16.0.0/12")]),
    };

    let identity = source.resolve().await.expect("the identity");

    assert_eq!(identity.instance_id, "i-0a1b2c3d4e5f67890");
    assert_eq!(identity.vpc_cidrs, vec![cidr("172.16.0.0/12")]);
}

fn flags() -> IdentityFlags {
    IdentityFlags {
        instance_id: Some("i-0123456789abcdef0".to_owned()),
        instance_type: Some("c5.xlarge".to_owned()),
        availability_zone: Some("eu-west-1c".to_owned()),
        region: None,
        primary_ip: Some("10.1.2.3".to_owned()),
        primary_mac: Some("02:AB:cd:00:11:22".to_owned()),
        primary_eni_id: None,
        subnet_id: Some("subnet-1".to_owned()),
        vpc_cidrs: vec!["10.1.0.0/16".to_owned(), " 100.64.0.0/10".to_owned()],
    }
}

#[tokio::test]
async fn identity_from_flags_derives_the_region_and_needs_no_imds() {
    let identity = Identity::from_flags(&flags()).expect("the identity from flags");
    assert_eq!(
        identity,
        Identity {
            instance_id: "i-0123456789abcdef0".to_owned(),
            instance_type: "c5.xlarge".to_owned(),
            availability_zone: "eu-west-1c".to_owned(),
            region: "eu-west-1".to_owned(),
            primary_ip: Ipv4Addr::new(10, 1, 2, 3),
            primary_mac: "02:ab:cd:00:11:22".to_owned(),
            primary_eni_id: None,
            subnet_id: "subnet-1".to_owned(),
            vpc_cidrs: vec![cidr("10.1.0.0/16"), cidr("100.64.0.0/10")],
            origin: Origin::Flags,
        }
    );
    let resolved = IdentitySource::Given(identity.clone())
        .resolve()
        .await
        .expect("a given identity");
    assert_eq!(resolved, identity);
}

#[test]
fn an_explicit_region_and_eni_are_kept() {
    let identity = Identity::from_flags(&IdentityFlags {
        availability_zone: Some("us-west-2-lax-1a".to_owned()),
        region: Some("us-west-2".to_owned()),
        primary_eni_id: Some("eni-0abc".to_owned()),
        ..flags()
    })
    .expect("a Local Zone with its region");
    assert_eq!(identity.region, "us-west-2");
    assert_eq!(identity.primary_eni_id.as_deref(), Some("eni-0abc"));
}

#[test]
fn every_required_flag_is_named_when_missing() {
    type Clear = fn(&mut IdentityFlags);
    let cases: [(Field, Clear); 7] = [
        (Field::InstanceId, |f| f.instance_id = None),
        (Field::InstanceType, |f| f.instance_type = Some("  ".to_owned())),
        (Field::AvailabilityZone, |f| f.availability_zone = None),
        (Field::PrimaryIp, |f| f.primary_ip = None),
        (Field::PrimaryMac, |f| f.primary_mac = None),
        (Field::SubnetId, |f| f.subnet_id = None),
        (Field::VpcCidrs, |f| f.vpc_cidrs.clear()),
    ];
    for (field, clear) in cases {
        let mut given = flags();
        clear(&mut given);
        let error = Identity::from_flags(&given).expect_err("a flag missing");
        assert!(
            matches!(error, IdentityError::MissingFlag { field: f } if f == field),
            "{field:?}: {error:?}"
        );
        assert!(error.to_string().contains(field.flag()), "{error}");
    }
    // A zone the region cannot be derived from needs --region.
    let error = Identity::from_flags(&IdentityFlags {
        availability_zone: Some("us-west-2-lax-1a".to_owned()),
        ..flags()
    })
    .expect_err("no region");
    assert!(
        matches!(error, IdentityError::MissingFlag { field: Field::Region }),
        "{error:?}"
    );
}

#[test]
fn every_bad_flag_value_is_named() {
    type Spoil = fn(&mut IdentityFlags);
    let cases: [(Field, &str, Spoil); 9] = [
        (Field::InstanceId, "0123456789abcdef0", |f| {
            f.instance_id = Some("0123456789abcdef0".to_owned())
        }),
        (Field::InstanceType, "m5large", |f| {
            f.instance_type = Some("m5large".to_owned())
        }),
        (Field::AvailabilityZone, "US WEST", |f| {
            f.availability_zone = Some("US WEST".to_owned())
        }),
        (Field::Region, "us_west_2", |f| f.region = Some("us_west_2".to_owned())),
        (Field::PrimaryIp, "10.1.2.300", |f| {
            f.primary_ip = Some("10.1.2.300".to_owned())
        }),
        (Field::PrimaryMac, "02:ab:cd:00:11", |f| {
            f.primary_mac = Some("02:ab:cd:00:11".to_owned())
        }),
        (Field::PrimaryEniId, "i-0abc", |f| {
            f.primary_eni_id = Some("i-0abc".to_owned())
        }),
        (Field::SubnetId, "sn-1", |f| f.subnet_id = Some("sn-1".to_owned())),
        (Field::VpcCidrs, "10.1.0.1/16", |f| {
            f.vpc_cidrs = vec!["10.1.0.1/16".to_owned()]
        }),
    ];
    for (field, value, spoil) in cases {
        let mut given = flags();
        spoil(&mut given);
        let error = Identity::from_flags(&given).expect_err("a bad value");
        assert!(
            matches!(&error, IdentityError::BadValue { field: f, origin: Origin::Flags, value: v, .. } if *f == field && v == value),
            "{field:?}: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(field.flag()) && message.contains(value), "{message}");
    }
}
