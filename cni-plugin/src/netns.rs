//! A dedicated OS thread inside a network namespace, to run netlink and `/proc/sys` work there.
//!
//! The network namespace belongs to a *thread*; whatever a thread creates while inside one stays
//! bound to it: a netlink socket, and the `/proc/sys/net` file it opens. So the plumbing never
//! switches a tokio worker's namespace (the CNI project's `pkg/ns` explains how that goes wrong):
//! it starts one thread per namespace, which `setns(2)`s once, is never switched back and ends
//! with its [`Netns`], and sends it closures:
//!
//! ```text
//!   caller (any runtime)                 "netns" thread (setns'd once, discarded at the end)
//!   Netns::run(f) ──── job channel ────▶ current-thread runtime:
//!         ▲                                · runs each job f() in turn (sysctl writes)
//!         └─────── oneshot(result) ◀────── · drives the rtnetlink connections opened there
//! ```
//!
//! [`Netns::current`] does not `setns` at all: a new thread starts in the namespace of the thread
//! that creates it, which is how the plugin's "host" is the caller's namespace (and a test's
//! "host" one it made). The workspace forbids `unsafe`; `nix::sched::setns` is safe.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

/// Why a namespace thread could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file does not exist (the pod is gone, or never was).
    #[error("network namespace {} does not exist", .0.display())]
    Missing(PathBuf),
    /// The file exists but is not a network namespace (e.g. a bind mount already unmounted).
    #[error("{} is not a network namespace: {errno}", path.display())]
    NotANamespace {
        /// The file.
        path: PathBuf,
        /// What `setns(2)` said.
        errno: Errno,
    },
    /// Opening the namespace file failed for another reason.
    #[error("opening network namespace {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `setns(2)` refused (typically EPERM: no CAP_SYS_ADMIN).
    #[error("entering network namespace {}: {errno}", path.display())]
    Setns {
        /// The namespace.
        path: PathBuf,
        /// What `setns(2)` said.
        errno: Errno,
    },
    /// The thread, its runtime or its netlink socket could not be made.
    #[error("starting work in {place}: {source}")]
    Start {
        /// The namespace, as [`Netns::describe`] says it.
        place: String,
        /// The error.
        source: std::io::Error,
    },
    /// The namespace's thread ended (it panicked, or the runtime stopped).
    #[error("the thread working in {0} is gone")]
    Gone(String),
    /// A job panicked on the namespace's thread.
    #[error("a job in {place} panicked: {message}")]
    Panicked {
        /// The namespace.
        place: String,
        /// The panic's message.
        message: String,
    },
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread inside one network namespace, running the closures it is given.
#[derive(Debug)]
pub struct Netns {
    /// The namespace file, kept open (its descriptor can name the namespace to the kernel); `None`
    /// for [`Netns::current`].
    file: Option<File>,
    place: String,
    jobs: mpsc::UnboundedSender<Job>,
}

impl Netns {
    /// A thread in the namespace of the calling thread (no `setns`, no privilege needed).
    pub fn current() -> Result<Self, NetnsError> {
        Self::start(None, "the caller's network namespace".to_owned())
    }

    /// A thread inside the namespace at `path` (`/var/run/netns/<name>`, `/proc/<pid>/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| match Errno::from_raw(source.raw_os_error().unwrap_or(0)) {
            // A /proc/<pid> whose process is gone answers either.
            Errno::ENOENT | Errno::ESRCH => NetnsError::Missing(path.clone()),
            _ => NetnsError::Open {
                path: path.clone(),
                source,
            },
        })?;
        let place = format!("network namespace {}", path.display());
        Self::start(Some((file, path)), place)
    }

    fn start(target: Option<(File, PathBuf)>, place: String) -> Result<Self, NetnsError> {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), NetnsError>>(1);
        let (file, enter) = match target {
            Some((file, path)) => {
                let copy = file.try_clone().map_err(|source| NetnsError::Open {
                    path: path.clone(),
                    source,
                })?;
                (Some(file), Some((copy, path)))
            }
            None => (None, None),
        };
        let thread_place = place.clone();
        std::thread::Builder::new()
            .name("netns".to_owned())
            .spawn(move || {
                let entered = match enter {
                    Some((file, path)) => {
                        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| match errno {
                            Errno::EINVAL => NetnsError::NotANamespace { path, errno },
                            _ => NetnsError::Setns { path, errno },
                        })
                    }
                    None => Ok(()),
                };
                let runtime = entered.and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|source| NetnsError::Start {
                            place: thread_place,
                            source,
                        })
                });
                let runtime = match runtime {
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
            .map_err(|source| NetnsError::Start {
                place: place.clone(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { file, place, jobs }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(NetnsError::Gone(place)),
        }
    }

    /// Says which namespace this is, for messages: "network namespace /var/run/netns/x".
    pub fn describe(&self) -> &str {
        &self.place
    }

    /// The namespace file's descriptor (for `IFLA_NET_NS_FD`); `None` for [`Netns::current`].
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().map(AsFd::as_fd)
    }

    /// Runs `f` on the namespace's thread, inside its current-thread runtime, and returns its
    /// result. A panic in `f` is an error; the thread survives it.
    pub async fn run<F, R>(&self, f: F) -> Result<R, NetnsError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
        });
        self.jobs.send(job).map_err(|_| NetnsError::Gone(self.place.clone()))?;
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) => Err(NetnsError::Panicked {
                place: self.place.clone(),
                message: panic_message(panic.as_ref()),
            }),
            Err(_) => Err(NetnsError::Gone(self.place.clone())),
        }
    }

    /// An rtnetlink handle whose socket lives in this namespace, usable from any runtime; the
    /// namespace's thread drives the connection for as long as this [`Netns`] lives.
    pub async fn rtnetlink(&self) -> Result<rtnetlink::Handle, NetnsError> {
        self.run(|| {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            Ok::<_, std::io::Error>(handle)
        })
        .await?
        .map_err(|source| NetnsError::Start {
            place: self.place.clone(),
            source,
        })
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
    async fn runs_jobs_in_the_callers_namespace_and_survives_a_panic() {
        // No setns, no network change: works unprivileged.
        let ns = Netns::current().expect("thread starts");
        assert!(ns.fd().is_none());
        assert_eq!(ns.run(|| 40 + 2).await.expect("job runs"), 42);
        let err = ns
            .run(|| -> u32 { panic!("boom") })
            .await
            .expect_err("a panic is an error");
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(ns.run(|| "still alive").await.expect("thread survives"), "still alive");
    }

    #[test]
    fn a_missing_file_is_a_missing_namespace() {
        let err = Netns::open("/nonexistent/netns/x").expect_err("absent");
        assert!(matches!(err, NetnsError::Missing(_)), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        // EINVAL as root, EPERM otherwise: refused either way.
        let err = Netns::open("/proc/self/status").expect_err("not a netns");
        assert!(
            matches!(err, NetnsError::NotANamespace { .. } | NetnsError::Setns { .. }),
            "{err}"
        );
    }
}
