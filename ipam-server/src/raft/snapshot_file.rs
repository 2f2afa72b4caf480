//! The snapshot data openraft moves around ([`SnapshotFile`]): a file, opened when first used.
//!
//! openraft asks for the current snapshot at every start, only to read its meta, and again when
//! it must send it to another replica. The sendable form carries the whole ledger (see
//! `state_machine::Store::sendable`), which is gigabytes for a ledger of tens of millions of
//! events; making it at every start would turn a restart into minutes of writing. So the current
//! snapshot is handed out *lazily*: the file is made (once per snapshot) and opened on the first
//! read, write or seek, and a handle that is only looked at and dropped costs nothing.
//!
//! ```text
//!   Lazy(make) ──first poll──▶ Opening(task running make) ──done──▶ Open(file) ──▶ tokio::fs::File
//! ```

use std::future::Future;
use std::io;
use std::io::SeekFrom;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::task::ready;

use tokio::io::AsyncRead;
use tokio::io::AsyncSeek;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::task::JoinHandle;

/// What makes the file: runs as a task on first use.
type Make = Box<dyn FnOnce() -> JoinHandle<io::Result<tokio::fs::File>> + Send + Sync>;

enum Stage {
    Lazy(Option<Make>),
    Opening(JoinHandle<io::Result<tokio::fs::File>>),
    Open(tokio::fs::File),
    Failed(io::ErrorKind, String),
}

/// Snapshot data: a file, or the promise of one (see the module docs).
pub struct SnapshotFile {
    stage: Stage,
    /// A seek asked for before the file was open, done once it is.
    pending_seek: Option<SeekFrom>,
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match &self.stage {
            Stage::Lazy(_) => "lazy",
            Stage::Opening(_) => "opening",
            Stage::Open(_) => "open",
            Stage::Failed(..) => "failed",
        };
        f.debug_struct("SnapshotFile").field("stage", &stage).finish()
    }
}

impl From<tokio::fs::File> for SnapshotFile {
    fn from(file: tokio::fs::File) -> Self {
        Self {
            stage: Stage::Open(file),
            pending_seek: None,
        }
    }
}

impl SnapshotFile {
    /// A file that `make` produces when the data is first used.
    pub fn lazy<F>(make: impl FnOnce() -> F + Send + Sync + 'static) -> Self
    where
        F: Future<Output = io::Result<tokio::fs::File>> + Send + 'static,
    {
        Self {
            stage: Stage::Lazy(Some(Box::new(move || tokio::spawn(make())))),
            pending_seek: None,
        }
    }

    /// Whether the file has been made and opened (tests: a handle only looked at stays lazy).
    pub fn is_open(&self) -> bool {
        matches!(self.stage, Stage::Open(_))
    }

    /// Drives the file to open.
    fn poll_stage(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.stage {
                Stage::Lazy(make) => {
                    let Some(make) = make.take() else {
                        return Poll::Ready(Err(io::Error::other("snapshot file maker already used")));
                    };
                    self.stage = Stage::Opening(make());
                }
                Stage::Opening(task) => {
                    let opened = ready!(Pin::new(task).poll(cx))
                        .map_err(|e| io::Error::other(format!("making the snapshot file: {e}")))
                        .and_then(|made| made);
                    match opened {
                        Ok(file) => self.stage = Stage::Open(file),
                        Err(error) => {
                            self.stage = Stage::Failed(error.kind(), error.to_string());
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                Stage::Open(_) => return Poll::Ready(Ok(())),
                Stage::Failed(kind, message) => return Poll::Ready(Err(io::Error::new(*kind, message.clone()))),
            }
        }
    }

    /// The open file, once it is, with any seek asked for before it was open started.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut tokio::fs::File>> {
        ready!(self.poll_stage(cx))?;
        let Stage::Open(file) = &mut self.stage else {
            return Poll::Ready(Err(io::Error::other("the snapshot file is not open")));
        };
        if let Some(position) = self.pending_seek.take() {
            Pin::new(&mut *file).start_seek(position)?;
            // If this is pending, the file finishes the seek before its next operation.
            ready!(Pin::new(&mut *file).poll_complete(cx))?;
        }
        Poll::Ready(Ok(file))
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let file = ready!(self.get_mut().poll_open(cx))?;
        Pin::new(file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let file = ready!(self.get_mut().poll_open(cx))?;
        Pin::new(file).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let file = ready!(self.get_mut().poll_open(cx))?;
        Pin::new(file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let file = ready!(self.get_mut().poll_open(cx))?;
        Pin::new(file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.stage {
            Stage::Open(file) => Pin::new(file).start_seek(position),
            // Done when the file is open (poll_complete opens it).
            _ => {
                this.pending_seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let file = ready!(self.get_mut().poll_open(cx))?;
        Pin::new(file).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;

    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncSeekExt;

    use super::*;

    fn lazy_file(path: std::path::PathBuf, made: Arc<AtomicUsize>) -> SnapshotFile {
        SnapshotFile::lazy(move || async move {
            made.fetch_add(1, Ordering::SeqCst);
            tokio::fs::write(&path, b"0123456789").await?;
            tokio::fs::File::open(&path).await
        })
    }

    #[tokio::test]
    async fn the_file_is_made_on_first_use_only() {
        let path = std::env::temp_dir().join(format!("ipam-snapshot-file-{}", std::process::id()));
        let made = Arc::new(AtomicUsize::new(0));
        drop(lazy_file(path.clone(), Arc::clone(&made)));
        assert_eq!(made.load(Ordering::SeqCst), 0, "a dropped handle made nothing");

        let mut file = lazy_file(path.clone(), Arc::clone(&made));
        assert!(!file.is_open());
        // A seek before anything else is done once the file exists.
        file.seek(SeekFrom::Start(4)).await.unwrap_or_else(|e| panic!("{e}"));
        let mut rest = String::new();
        file.read_to_string(&mut rest).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rest, "456789");
        assert!(file.is_open());
        assert_eq!(made.load(Ordering::SeqCst), 1);
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn a_failure_to_make_the_file_is_an_io_error_every_time() {
        let mut file = SnapshotFile::lazy(|| async { Err(io::Error::new(io::ErrorKind::NotFound, "no snapshot")) });
        let mut buf = Vec::new();
        let first = file.read_to_end(&mut buf).await.err().map(|e| e.kind());
        let again = file.read_to_end(&mut buf).await.err().map(|e| e.kind());
        assert_eq!(
            (first, again),
            (Some(io::ErrorKind::NotFound), Some(io::ErrorKind::NotFound))
        );
    }
}
