//! The node agent's `agent.v1.CniBackend`, over its unix socket.
//!
//! ```text
//!   plugin ──(gRPC over /run/ipam-eks/agent.sock)──▶ node agent ──▶ IPAM server
//! ```
//!
//! Every call is bounded by the command's timeout; failures keep the gRPC code so that the
//! commands map them to CNI codes on purpose (see [`AgentError::cni_code`]).

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use ipam_proto::agent::v1 as api;
use ipam_proto::agent::v1::cni_backend_client::CniBackendClient;
use tokio::net::UnixStream;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::spec::ErrorCode;

/// How long connecting to the socket may take (a local socket answers at once or not at all).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call to the agent failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The socket could not be connected to (no agent, wrong path, permissions).
    #[error("cannot reach the node agent at {}: {reason}", socket.display())]
    Unreachable {
        /// The socket's path.
        socket: PathBuf,
        /// What connecting said.
        reason: String,
    },
    /// The agent did not answer in time.
    #[error("the node agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent answered with an error status.
    #[error("the node agent answered {code:?}: {message}")]
    Status {
        /// The gRPC code.
        code: tonic::Code,
        /// The agent's message.
        message: String,
    },
}

/// A result alias for agent calls.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    /// Whether the agent could not be asked at all (rather than answering no).
    pub fn unreachable(&self) -> bool {
        match self {
            AgentError::Unreachable { .. } | AgentError::Timeout(_) => true,
            AgentError::Status { code, .. } => matches!(code, tonic::Code::Unavailable | tonic::Code::DeadlineExceeded),
        }
    }

    /// The CNI code for this failure: transient conditions are 11 (try again later), a request
    /// the agent found malformed is 4, one that contradicts its records is 100, anything else 101.
    pub fn cni_code(&self) -> ErrorCode {
        match self {
            AgentError::Unreachable { .. } | AgentError::Timeout(_) => ErrorCode::TryAgainLater,
            AgentError::Status { code, .. } => match code {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted => {
                    ErrorCode::TryAgainLater
                }
                tonic::Code::InvalidArgument => ErrorCode::InvalidEnvironment,
                tonic::Code::FailedPrecondition | tonic::Code::NotFound | tonic::Code::AlreadyExists => {
                    ErrorCode::AgentRefused
                }
                _ => ErrorCode::AgentFailed,
            },
        }
    }

    /// What the operator should do about it, for the error's `msg`.
    pub fn advice(&self) -> &'static str {
        match self {
            AgentError::Unreachable { .. } => {
                "check that the ipam-eks node agent is running on this node and that the config's socket is its \
                 socket; the runtime will retry"
            }
            AgentError::Timeout(_) => "the node agent is slow or stuck; check its logs; the runtime will retry",
            AgentError::Status { code, .. } => match code {
                tonic::Code::ResourceExhausted => {
                    "no address is free on this node yet; the agent is growing its pool, \
                                                   the runtime will retry"
                }
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    "the agent or the IPAM server behind it cannot answer now; the runtime will retry"
                }
                tonic::Code::InvalidArgument => {
                    "the runtime passed incomplete CNI variables (CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS, \
                     K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS)"
                }
                tonic::Code::FailedPrecondition | tonic::Code::NotFound | tonic::Code::AlreadyExists => {
                    "the request contradicts the agent's records (e.g. the attachment is bound to another pod); see \
                     the agent's logs"
                }
                _ => "the node agent failed; see its logs",
            },
        }
    }
}

/// A connected client of the agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    client: CniBackendClient<Channel>,
    timeout: Duration,
}

impl AgentClient {
    /// Connects to the agent's socket; each later call is bounded by `timeout`.
    ///
    /// # Errors
    ///
    /// [`AgentError::Unreachable`] when the socket cannot be connected to.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let unreachable = |reason: String| AgentError::Unreachable {
            socket: socket.to_owned(),
            reason,
        };
        let path = socket.to_owned();
        let endpoint = Endpoint::from_static("http://localhost")
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout);
        let connecting = endpoint.connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(path).await?)) }
        }));
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT.min(timeout), connecting).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => return Err(unreachable(describe(&error))),
            Err(_) => return Err(unreachable(format!("no connection within {CONNECT_TIMEOUT:?}"))),
        };
        Ok(Self {
            client: CniBackendClient::new(channel),
            timeout,
        })
    }

    /// `Add`.
    ///
    /// # Errors
    ///
    /// The agent's status, or a timeout.
    pub async fn add(&mut self, request: api::AddRequest) -> Result<api::AddResponse> {
        let timeout = self.timeout;
        bounded(timeout, self.client.add(request)).await
    }

    /// `Del`.
    ///
    /// # Errors
    ///
    /// The agent's status, or a timeout.
    pub async fn del(&mut self, request: api::DelRequest) -> Result<api::DelResponse> {
        let timeout = self.timeout;
        bounded(timeout, self.client.del(request)).await
    }

    /// `Check`.
    ///
    /// # Errors
    ///
    /// The agent's status, or a timeout.
    pub async fn check(&mut self, request: api::CheckRequest) -> Result<api::CheckResponse> {
        let timeout = self.timeout;
        bounded(timeout, self.client.check(request)).await
    }

    /// `Status`.
    ///
    /// # Errors
    ///
    /// The agent's status, or a timeout.
    pub async fn status(&mut self) -> Result<api::StatusResponse> {
        let timeout = self.timeout;
        bounded(timeout, self.client.status(api::StatusRequest {})).await
    }

    /// `Gc`.
    ///
    /// # Errors
    ///
    /// The agent's status, or a timeout.
    pub async fn gc(&mut self, request: api::GcRequest) -> Result<api::GcResponse> {
        let timeout = self.timeout;
        bounded(timeout, self.client.gc(request)).await
    }
}

async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(AgentError::Status {
            code: status.code(),
            message: status.message().to_owned(),
        }),
        Err(_) => Err(AgentError::Timeout(timeout)),
    }
}

/// An error and its sources on one line (tonic's transport error alone says only "transport error").
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
