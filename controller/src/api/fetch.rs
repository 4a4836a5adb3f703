//! Artifact serving for `Agent.Fetch`, shaped so that no number of slow or
//! hostile fetchers can take the controller: streams are counted per host
//! and in all, a stream whose consumer makes no progress is ended, and file
//! reads run one chunk at a time on a bounded share of tokio's blocking pool
//! (which the store needs too), never a thread pinned for a stream's life.
//!
//! A stream's place under the caps belongs to its producer task, not to the
//! response stream: it is given back the moment the producer ends (sent it
//! all, gave up on a stalled consumer, or saw it go away), so a client that
//! never reads, or a connection that died unnoticed, cannot keep it for the
//! life of the connection. What such a stream still holds afterwards is at
//! most [`READ_AHEAD`] chunks and the status that ends it.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use cutover_core::Sha256Digest;
use cutover_proto::v1;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

/// Fetch streams one host may have open at once (over all its connections).
/// An agent fetches one artifact per install and installs one service at a
/// time; a few more leave room for a resumed download whose old stream has
/// not been noticed dead yet.
pub const PER_HOST_FETCHES: usize = 4;
/// Fetch streams the controller serves at once, over all hosts.
pub const MAX_FETCHES: usize = 512;
/// A stream whose consumer takes no chunk for this long is ended; the agent
/// resumes from the bytes it has.
pub const FETCH_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Artifact file operations (open, read of one chunk) running at once on
/// tokio's blocking pool: the store's calls run there too and must always
/// find a thread.
pub const ARTIFACT_IO: usize = 8;
/// Chunks a stream reads ahead of its consumer, so the next read overlaps
/// the transport's sending of the last one. The stall timeout still counts
/// from the consumer's last take: once these are queued, nothing more is
/// read until it takes one.
pub const READ_AHEAD: usize = 4;

/// The counters behind the caps, shared by every fetch.
pub struct FetchLimits {
    per_host_max: usize,
    max: usize,
    streams: Arc<Semaphore>,
    by_host: Mutex<HashMap<String, usize>>,
    io: Arc<Semaphore>,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits::new(PER_HOST_FETCHES, MAX_FETCHES, ARTIFACT_IO)
    }
}

/// A stream's place under the caps; dropping it gives the place back.
pub struct Slot {
    limits: Arc<FetchLimits>,
    host: String,
    _stream: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_host = self
            .limits
            .by_host
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_host.get_mut(&self.host) {
            *n -= 1;
            if *n == 0 {
                by_host.remove(&self.host);
            }
        }
    }
}

impl FetchLimits {
    pub fn new(per_host_max: usize, max: usize, io: usize) -> FetchLimits {
        FetchLimits {
            per_host_max,
            max,
            streams: Arc::new(Semaphore::new(max)),
            by_host: Mutex::new(HashMap::new()),
            io: Arc::new(Semaphore::new(io)),
        }
    }

    /// A place for one more stream of `host`, or the refusal to send.
    pub fn admit(self: &Arc<Self>, host: &str) -> Result<Slot, Status> {
        let mut by_host = self.by_host.lock().unwrap_or_else(|p| p.into_inner());
        let open = by_host.get(host).copied().unwrap_or(0);
        if open >= self.per_host_max {
            return Err(Status::resource_exhausted(format!(
                "host {host:?} already has {open} artifact fetches open, the most this controller serves one host at once; let one finish or close it, then retry"
            )));
        }
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "the controller is serving {} artifact fetches, the most it serves at once; retry shortly",
                self.max
            )));
        };
        by_host.insert(host.to_string(), open + 1);
        Ok(Slot {
            limits: self.clone(),
            host: host.to_string(),
            _stream: permit,
        })
    }

    /// Runs one blocking artifact file operation on the bounded share of
    /// the blocking pool.
    async fn io<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let _permit = self
            .io
            .acquire()
            .await
            .map_err(|_| std::io::Error::other("artifact I/O limiter closed"))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| std::io::Error::other(format!("artifact I/O task: {e}")))?
    }
}

/// The artifact file one fetch streams, opened, with its size then.
pub struct Opened {
    pub file: Arc<std::fs::File>,
    pub size: u64,
}

/// Opens `path` on the bounded I/O share and reads its size.
pub async fn open(limits: &FetchLimits, path: std::path::PathBuf) -> std::io::Result<Opened> {
    limits
        .io(move || {
            let file = std::fs::File::open(&path)?;
            let size = file.metadata()?.len();
            Ok(Opened {
                file: Arc::new(file),
                size,
            })
        })
        .await
}

/// Parameters of one stream.
pub struct Serve {
    pub host: String,
    pub digest: Sha256Digest,
    pub opened: Opened,
    pub offset: u64,
    /// Bytes per second, if paced.
    pub rate: Option<u64>,
    pub chunk: usize,
    pub stall_timeout: Duration,
}

/// The response stream: the chunks, then, if the producer gave up, the
/// status that says why.
pub struct FetchStream {
    chunks: ReceiverStream<Result<v1::FetchChunk, Status>>,
    ended: Arc<Mutex<Option<Status>>>,
    done: bool,
}

impl Stream for FetchStream {
    type Item = Result<v1::FetchChunk, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.chunks).poll_next(cx) {
            Poll::Ready(None) => {
                self.done = true;
                let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner()).take();
                Poll::Ready(ended.map(Err))
            }
            other => other,
        }
    }
}

/// Starts the producer task of one stream and returns the stream. The task
/// reads one chunk at a time, up to [`READ_AHEAD`] ahead, and hands each on
/// with a timeout: a consumer that takes nothing for `stall_timeout` ends
/// the stream, closing the file. The task owns `slot` and gives it back when
/// it ends, whether or not the transport has dropped the stream yet.
pub fn serve(limits: Arc<FetchLimits>, slot: Slot, s: Serve) -> FetchStream {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let ended = Arc::new(Mutex::new(None));
    let end = ended.clone();
    tokio::spawn(async move {
        let _slot = slot;
        if let Some(status) = produce(&limits, &tx, s).await {
            // Set before `tx` drops, so a consumer that sees the chunks end
            // finds the status.
            *end.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
        }
        drop(tx);
    });
    FetchStream {
        chunks: ReceiverStream::new(rx),
        ended,
        done: false,
    }
}

/// Sends the artifact; returns the status to end the stream with, if any.
async fn produce(
    limits: &FetchLimits,
    tx: &mpsc::Sender<Result<v1::FetchChunk, Status>>,
    s: Serve,
) -> Option<Status> {
    let Serve {
        host,
        digest,
        opened,
        offset,
        rate,
        chunk,
        stall_timeout,
    } = s;
    let started = tokio::time::Instant::now();
    let mut at = offset;
    let mut sent: u64 = 0;
    while at < opened.size {
        let want = usize::try_from(opened.size - at).map_or(chunk, |left| left.min(chunk));
        let file = opened.file.clone();
        let read = limits
            .io(move || {
                let mut buf = vec![0u8; want];
                let n = file.read_at(&mut buf, at)?;
                buf.truncate(n);
                Ok(buf)
            })
            .await;
        let data = match read {
            Ok(d) if d.is_empty() => {
                return Some(Status::internal(format!(
                    "artifact {digest} ends at {at} bytes, before the {} its file had when the fetch began; re-import the release",
                    opened.size
                )))
            }
            Ok(d) => d,
            Err(e) => {
                tracing::error!(%host, artifact = %digest, offset = at, error = %e, "artifact read failed");
                return Some(Status::internal(format!(
                    "artifact {digest}: read at offset {at} failed on the controller: {e}"
                )));
            }
        };
        let n = data.len() as u64;
        let last = at + n >= opened.size;
        match tokio::time::timeout(stall_timeout, tx.send(Ok(v1::FetchChunk { data }))).await {
            Ok(Ok(())) => {}
            // The consumer went away.
            Ok(Err(_)) => return None,
            Err(_) => {
                tracing::warn!(%host, artifact = %digest, offset = at, "artifact fetch made no progress; ended");
                return Some(Status::deadline_exceeded(format!(
                    "artifact {digest}: the fetch took no data for {stall_timeout:?} and was ended at offset {at}; fetch again from the bytes you have"
                )));
            }
        }
        at += n;
        sent += n;
        if let Some(rate) = rate.filter(|r| *r > 0 && !last) {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                // A consumer that goes away while the stream is paced is
                // noticed now, not at the next send.
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tx.closed() => return None,
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_gets_at_most_its_share_and_the_controller_at_most_its_total() {
        let limits = Arc::new(FetchLimits::new(2, 3, 1));
        let a1 = limits.admit("a").unwrap();
        let _a2 = limits.admit("a").unwrap();
        let refused = limits.admit("a").err().expect("third of a refused");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("host \"a\" already has 2"),
            "{refused:?}"
        );
        let _b1 = limits.admit("b").unwrap();
        let full = limits.admit("c").err().expect("fourth in all refused");
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        assert!(
            full.message().contains("serving 3 artifact fetches"),
            "{full:?}"
        );
        // A finished stream gives its place back, to its host and in all.
        drop(a1);
        let _c1 = limits.admit("c").unwrap();
        assert!(limits.admit("a").is_err());
        assert!(limits.by_host.lock().unwrap().get("a") == Some(&1));
    }

    fn artifact(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    async fn start(
        limits: &Arc<FetchLimits>,
        path: std::path::PathBuf,
        offset: u64,
        stall: Duration,
    ) -> FetchStream {
        let opened = open(limits, path).await.unwrap();
        let slot = limits.admit("h").unwrap();
        serve(
            limits.clone(),
            slot,
            Serve {
                host: "h".into(),
                digest: Sha256Digest::of(b"x"),
                opened,
                offset,
                rate: None,
                chunk: 4,
                stall_timeout: stall,
            },
        )
    }

    #[tokio::test]
    async fn a_read_stream_sends_every_byte_from_the_offset() {
        use tokio_stream::StreamExt;
        let limits = Arc::new(FetchLimits::new(1, 1, 1));
        let (_d, path) = artifact(b"0123456789");
        let mut s = start(&limits, path, 3, Duration::from_secs(60)).await;
        let mut got = Vec::new();
        while let Some(c) = s.next().await {
            got.extend(c.unwrap().data);
        }
        assert_eq!(got, b"3456789");
        drop(s);
        assert!(limits.admit("h").is_ok(), "the slot came back");
    }

    #[tokio::test]
    async fn a_stream_nobody_reads_is_ended_with_a_status_after_the_stall_timeout() {
        use tokio_stream::StreamExt;
        let limits = Arc::new(FetchLimits::new(1, 1, 1));
        let (_d, path) = artifact(&[7u8; 64]);
        let mut s = start(&limits, path, 0, Duration::from_millis(50)).await;
        // Nobody reads until the producer has given up.
        while s.ended.lock().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut got = 0;
        let mut last = None;
        while let Some(c) = s.next().await {
            match c {
                Ok(c) => got += c.data.len(),
                Err(status) => last = Some(status),
            }
        }
        let status = last.expect("the stream ends with a status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status.message().contains("took no data for 50ms"),
            "{status:?}"
        );
        assert!(got < 64, "the stream ended early, {got} bytes");
        assert!(got <= READ_AHEAD * 4, "at most the read-ahead was queued");
    }

    /// Polls until `admit` succeeds: the producer task ends on its own.
    async fn admitted(limits: &Arc<FetchLimits>) -> Slot {
        loop {
            if let Ok(slot) = limits.admit("h") {
                return slot;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_stalled_streams_place_is_free_after_the_stall_timeout_though_the_stream_is_kept() {
        let limits = Arc::new(FetchLimits::new(1, 1, 1));
        let (_d, path) = artifact(&[7u8; 64]);
        let s = start(&limits, path, 0, Duration::from_millis(50)).await;
        // Taken while the producer waits on its consumer...
        assert!(limits.admit("h").is_err());
        // ...and given back once it gave up, the stream unread and alive.
        let _again = admitted(&limits).await;
        assert!(
            s.ended.lock().unwrap().is_some(),
            "the producer ended with a status before the place came back"
        );
        assert!(limits.by_host.lock().unwrap().get("h") == Some(&1));
        drop(s);
    }

    #[tokio::test]
    async fn a_stream_sent_whole_gives_its_place_back_before_it_is_read() {
        use tokio_stream::StreamExt;
        let limits = Arc::new(FetchLimits::new(1, 1, 1));
        // Fits the read-ahead: the producer queues it all and ends.
        let (_d, path) = artifact(b"0123456789");
        let mut s = start(&limits, path, 0, Duration::from_secs(3600)).await;
        let _again = admitted(&limits).await;
        let mut got = Vec::new();
        while let Some(c) = s.next().await {
            got.extend(c.unwrap().data);
        }
        assert_eq!(got, b"0123456789");
    }

    #[tokio::test]
    async fn a_paced_stream_whose_consumer_goes_away_gives_its_place_back() {
        let limits = Arc::new(FetchLimits::new(1, 1, 1));
        let (_d, path) = artifact(&[1u8; 64]);
        let opened = open(&limits, path).await.unwrap();
        let slot = limits.admit("h").unwrap();
        let s = serve(
            limits.clone(),
            slot,
            Serve {
                host: "h".into(),
                digest: Sha256Digest::of(b"x"),
                opened,
                offset: 0,
                // 1 byte/s: the producer sleeps 4 s after each chunk.
                rate: Some(1),
                chunk: 4,
                stall_timeout: Duration::from_secs(3600),
            },
        );
        drop(s);
        let _again = admitted(&limits).await;
    }

    #[tokio::test]
    async fn a_file_shorter_than_it_was_ends_the_stream_with_an_error() {
        use tokio_stream::StreamExt;
        let limits = Arc::new(FetchLimits::new(1, 1, 1));
        let (_d, path) = artifact(b"0123456789");
        let opened = open(&limits, path.clone()).await.unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(6)
            .unwrap();
        let slot = limits.admit("h").unwrap();
        let mut s = serve(
            limits.clone(),
            slot,
            Serve {
                host: "h".into(),
                digest: Sha256Digest::of(b"x"),
                opened,
                offset: 0,
                rate: None,
                chunk: 4,
                stall_timeout: Duration::from_secs(60),
            },
        );
        let mut last = None;
        while let Some(c) = s.next().await {
            if let Err(e) = c {
                last = Some(e);
            }
        }
        let e = last.expect("an error at the end");
        assert_eq!(e.code(), tonic::Code::Internal);
        assert!(e.message().contains("ends at 6 bytes"), "{e:?}");
    }
}
