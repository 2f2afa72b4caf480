//! A dedicated OS thread inside a network namespace, to run work there.
//!
//! The network namespace is a property of a *thread*, not of a process; whatever a thread creates
//! while it is inside a namespace stays bound to that namespace: a netlink or UDP socket, and a
//! child process (`nft`), which inherits the namespace of the thread that spawns it. So the host
//! module never switches namespaces on a tokio worker (the CNI project's `pkg/ns` explains how that
//! goes wrong); it starts one thread per namespace, which `setns(2)`s once and is never switched
//! back, and sends it closures:
//!
//! ```text
//!   caller (any runtime)                   "netns:/run/netns/x" thread (setns'd, never restored)
//!   Netns::run(f) ───── job channel ─────▶ current-thread runtime:
//!         ▲                                  · runs each job f() in turn (sockets, `nft`)
//!         └──────── oneshot(result) ◀─────── · drives the rtnetlink connections opened there
//! ```
//!
//! The thread ends when the [`Netns`] is dropped (its job channel closes), and with it the
//! netlink connections it drove. The workspace forbids `unsafe`; `nix::sched::setns` is safe.

use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::HostError;

/// The namespace of the process (its main thread): the host's, for an agent that never switches.
pub const PROCESS_NETNS: &str = "/proc/self/ns/net";

type Job = Box<dyn FnOnce() + Send>;

/// A thread inside one network namespace, running the closures it is given.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    jobs: mpsc::UnboundedSender<Job>,
}

impl Netns {
    /// Starts a thread inside the namespace at `path` (e.g. `/run/netns/<name>`, or
    /// [`PROCESS_NETNS`]). Fails if the file is not a network namespace or `setns` is refused.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, HostError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| HostError::Netns(format!("open {}: {e}", path.display())))?;
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), HostError>>(1);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name(format!("netns:{shown}"))
            .spawn(move || {
                let entered = nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| HostError::Netns(format!("setns {shown}: {e}")))
                    .and_then(|()| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|e| HostError::Netns(format!("runtime for {shown}: {e}")))
                    });
                drop(file);
                let runtime = match entered {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                runtime.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        job();
                        // Let the connections opened by this job make progress before the next.
                        tokio::task::yield_now().await;
                    }
                });
            })
            .map_err(|e| HostError::Netns(format!("spawn thread for {}: {e}", path.display())))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { path, jobs }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HostError::Netns(format!("thread for {} died", path.display()))),
        }
    }

    /// The namespace's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the namespace's thread and returns its result. `f` runs inside that thread's
    /// current-thread tokio runtime, so it may `tokio::spawn` futures that stay on the thread. A
    /// panic in `f` is returned as an error; the thread survives it.
    pub async fn run<F, R>(&self, f: F) -> Result<R, HostError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
        });
        self.jobs.send(job).map_err(|_| self.gone())?;
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) => Err(HostError::Netns(format!(
                "a job in {} panicked: {}",
                self.path.display(),
                panic_message(panic.as_ref())
            ))),
            Err(_) => Err(self.gone()),
        }
    }

    /// An rtnetlink handle whose socket lives in this namespace; the connection is driven by the
    /// namespace's thread for as long as this [`Netns`] lives.
    pub async fn rtnetlink(&self) -> Result<rtnetlink::Handle, HostError> {
        self.run(|| {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            Ok::<_, std::io::Error>(handle)
        })
        .await?
        .map_err(|e| HostError::Netns(format!("netlink socket in {}: {e}", self.path.display())))
    }

    fn gone(&self) -> HostError {
        HostError::Netns(format!("the thread of {} is gone", self.path.display()))
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panic() {
        // The process's own namespace (no network is changed). setns(2) needs CAP_SYS_ADMIN even
        // for the namespace one is in: unprivileged, there is nothing more to check here.
        let ns = match Netns::open(PROCESS_NETNS) {
            Ok(ns) => ns,
            Err(HostError::Netns(msg)) if msg.contains("EPERM") => return,
            Err(e) => panic!("open: {e}"),
        };
        assert_eq!(ns.run(|| 40 + 2).await.expect("job runs"), 42);
        let err = ns
            .run(|| -> u32 { panic!("boom") })
            .await
            .expect_err("a panic is an error");
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(ns.run(|| "still alive").await.expect("thread survives"), "still alive");
    }

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        let err = Netns::open("/proc/self/status").expect_err("not a netns");
        assert!(matches!(err, HostError::Netns(_)), "{err}");
    }
}
