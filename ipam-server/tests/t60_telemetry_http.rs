//! The observability surface over real sockets: `/metrics`, `/healthz` and `/readyz` as a
//! probe or Prometheus sees them, gRPC metrics recorded by a real tonic server, and span export
//! reaching the configured OTLP endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::Instant;

use ipam_proto::ipam::v1::ForwardReply;
use ipam_proto::ipam::v1::ForwardRequest;
use ipam_proto::ipam::v1::RaftReply;
use ipam_proto::ipam::v1::RaftRequest;
use ipam_proto::ipam::v1::SnapshotChunk;
use ipam_proto::ipam::v1::raft_service_client::RaftServiceClient;
use ipam_proto::ipam::v1::raft_service_server::RaftService;
use ipam_proto::ipam::v1::raft_service_server::RaftServiceServer;
use ipam_server::http::Health;
use ipam_server::http::OPENMETRICS_CONTENT_TYPE;
use ipam_server::http::Readiness;
use ipam_server::metrics::GrpcMetricsLayer;
use ipam_server::metrics::Metrics;
use ipam_server::metrics::SubnetCounts;
use ipam_server::telemetry;
use ipam_server::telemetry::TelemetryConfig;
use ipam_server::telemetry::TelemetryError;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;
use tonic::metadata::MetadataValue;
use tonic::service::Routes;
use tonic::transport::Endpoint;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// A response as the tiny client read it.
#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`; reads to EOF.
async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("no answer to GET {path} in 10 s"))
        .unwrap_or_else(|e| panic!("read: {e}"));
    let raw = String::from_utf8(raw).unwrap_or_else(|e| panic!("not UTF-8: {e}"));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let response = HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    };
    // Bodies here are small strings: hyper sends them with a length, not chunked.
    let length: usize = response
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {response:?}"));
    assert_eq!(response.body.len(), length, "{response:?}");
    response
}

/// The HTTP endpoints on an ephemeral port, and how to stop them.
struct HttpServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start_http(metrics: Metrics, health: Health) -> HttpServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ipam_server::http::serve(listener, metrics, health, async move {
        let _ = stopped.await;
    }));
    HttpServer { addr, stop, task }
}

impl HttpServer {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap_or_else(|_| panic!("the HTTP server did not stop in 10 s"))
            .unwrap_or_else(|e| panic!("the HTTP server task failed: {e}"));
        assert!(result.is_ok(), "{result:?}");
    }
}

#[tokio::test]
async fn probes_and_metrics_over_http() {
    let metrics = Metrics::new();
    metrics.set_subnet_source(|| {
        Some(vec![SubnetCounts {
            subnet_id: "subnet-0a1b2c3d".to_owned(),
            total: 251,
            warm: 9,
            bound: 0,
            cooling: 0,
            free: 241,
            quarantined: 0,
        }])
    });
    metrics.record_exhausted("branch-warm");
    let reason: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(Some("no leader known".to_owned())));
    let current = Arc::clone(&reason);
    let health = Health::new(
        move || match current.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            Some(reason) => Readiness::NotReady(reason),
            None => Readiness::Ready,
        },
    );
    let server = start_http(metrics, health).await;

    let healthz = get(server.addr, "/healthz").await;
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));

    let not_ready = get(server.addr, "/readyz").await;
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.body, "not ready: no leader known\n");

    *reason.lock().unwrap_or_else(PoisonError::into_inner) = None;
    let ready = get(server.addr, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok\n"));

    let scrape = get(server.addr, "/metrics").await;
    assert_eq!(scrape.status, 200);
    assert_eq!(scrape.header("content-type"), Some(OPENMETRICS_CONTENT_TYPE));
    for line in [
        r#"ipam_exhausted_total{what="branch-warm"} 1"#,
        r#"ipam_subnet_addresses{subnet_id="subnet-0a1b2c3d",state="total"} 251"#,
        r#"ipam_subnet_addresses{subnet_id="subnet-0a1b2c3d",state="warm"} 9"#,
        r#"ipam_subnet_addresses{subnet_id="subnet-0a1b2c3d",state="free"} 241"#,
        "# TYPE ipam_raft_term gauge",
    ] {
        assert!(
            scrape.body.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            scrape.body
        );
    }
    assert!(scrape.body.ends_with("# EOF\n"), "{}", scrape.body);

    let missing = get(server.addr, "/metrics/extra").await;
    assert_eq!(missing.status, 404);

    server.shutdown().await;
}

/// A `RaftService` with canned answers: `Vote` is unavailable, `AppendEntries` is refused as
/// exhausted (with the metadata the real services send), `Forward` succeeds.
#[derive(Debug, Clone, Copy)]
struct CannedRaft;

#[tonic::async_trait]
impl RaftService for CannedRaft {
    async fn append_entries(&self, _: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let mut status = Status::resource_exhausted("subnet subnet-0a1b2c3d is exhausted");
        status
            .metadata_mut()
            .insert("ipam-exhausted", MetadataValue::from_static("subnet"));
        Err(status)
    }

    async fn vote(&self, _: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        Err(Status::unavailable("no leader"))
    }

    async fn install_snapshot(&self, _: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftReply>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn forward(&self, _: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        Ok(Response::new(ForwardReply::default()))
    }
}

#[tokio::test]
async fn a_tonic_server_behind_the_layer_counts_methods_codes_and_exhaustion() {
    let metrics = Metrics::new();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let grpc_addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let routes = Routes::new(RaftServiceServer::new(CannedRaft)).prepare();
    let service = GrpcMetricsLayer::new(metrics.clone()).layer(routes);
    let (stop_grpc, grpc_stopped) = oneshot::channel::<()>();
    let grpc = tokio::spawn(Server::builder().serve_with_incoming_shutdown(
        service,
        TcpIncoming::from(listener),
        async move {
            let _ = grpc_stopped.await;
        },
    ));

    let channel = Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap_or_else(|e| panic!("endpoint: {e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut client = RaftServiceClient::new(channel);
    let vote = client.vote(RaftRequest::default()).await;
    assert_eq!(vote.map_err(|s| s.code()).err(), Some(Code::Unavailable));
    for _ in 0..2 {
        let append = client.append_entries(RaftRequest::default()).await;
        assert_eq!(append.map_err(|s| s.code()).err(), Some(Code::ResourceExhausted));
    }
    let forward = client.forward(ForwardRequest::default()).await;
    assert!(forward.is_ok(), "{forward:?}");

    let http = start_http(metrics, Health::always_ready()).await;
    let scrape = get(http.addr, "/metrics").await;
    for line in [
        r#"ipam_grpc_requests_total{service="ipam.v1.RaftService",method="Vote",code="Unavailable"} 1"#,
        r#"ipam_grpc_requests_total{service="ipam.v1.RaftService",method="AppendEntries",code="ResourceExhausted"} 2"#,
        r#"ipam_grpc_requests_total{service="ipam.v1.RaftService",method="Forward",code="OK"} 1"#,
        r#"ipam_grpc_request_duration_seconds_count{service="ipam.v1.RaftService",method="AppendEntries"} 2"#,
        r#"ipam_exhausted_total{what="subnet"} 2"#,
    ] {
        assert!(
            scrape.body.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            scrape.body
        );
    }
    http.shutdown().await;

    drop(client);
    let _ = stop_grpc.send(());
    let served = tokio::time::timeout(Duration::from_secs(10), grpc)
        .await
        .unwrap_or_else(|_| panic!("the gRPC server did not stop in 10 s"))
        .unwrap_or_else(|e| panic!("the gRPC server task failed: {e}"));
    assert!(served.is_ok(), "{served:?}");
}

/// The only test of this binary that installs the global subscriber (a process has one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_exports_spans_to_the_otlp_endpoint_and_refuses_a_second_init() {
    // A stand-in collector: it records what the exporter sends first, then hangs up, so the
    // export fails fast instead of waiting for a gRPC answer.
    let collector = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let endpoint = format!("http://{}", collector.local_addr().unwrap_or_else(|e| panic!("{e}")));
    let received = tokio::spawn(async move {
        let (mut stream, _) = collector.accept().await.unwrap_or_else(|e| panic!("accept: {e}"));
        let mut preface = vec![0; 24];
        stream
            .read_exact(&mut preface)
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        preface
    });

    let config = TelemetryConfig {
        // Only this test's own spans: the other tests of the binary run alongside.
        filter: "t60_telemetry_http=info".to_owned(),
        json: true,
        otlp_endpoint: Some(endpoint),
        service_name: "ipam-server-t60".to_owned(),
    };
    let guard = telemetry::init(&config).unwrap_or_else(|e| panic!("first init: {e}"));
    assert!(guard.exports_spans());
    let again = telemetry::init(&TelemetryConfig::default());
    assert!(matches!(again, Err(TelemetryError::AlreadyInitialized(_))), "{again:?}");

    tracing::info_span!("t60.probe", replica = 1).in_scope(|| {});

    // Dropping the guard flushes the queued span to the collector, within the guard's bound.
    let started = Instant::now();
    drop(guard);
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    let preface = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .unwrap_or_else(|_| panic!("the exporter never connected to the endpoint"))
        .unwrap_or_else(|e| panic!("collector task: {e}"));
    assert_eq!(
        preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "an HTTP/2 (gRPC) connection"
    );
}
