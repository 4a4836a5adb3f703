//! The listener: TCP accept, the TLS handshake with our verifier (revoked
//! and foreign certificates are refused here), and the peer's identity
//! handed to tonic as connection info. Connections that have not proven who
//! they are are bounded: a connection that sends no byte of its TLS hello
//! within seconds is closed before it takes a handshake slot; handshakes in
//! progress are capped, in all and per source address (one over a cap waits
//! a moment for a slot, then is closed), so one address can never take every
//! slot; a hello must be complete within seconds, the handshake a little
//! later, so a stalled partial hello frees its slot fast; connections without a client certificate (enrollment) are
//! capped, and each lives a bounded time.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use cutover_core::pki::PeerIdentity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// Who is on the other end of a connection, as its certificate says.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// `None` when the client presented no certificate (enrollment).
    pub identity: Option<PeerIdentity>,
}

/// A TLS connection that carries its verified peer identity.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
    /// Set on a connection without a client certificate.
    expiry: Option<Expiry>,
    /// Until the peer's first bytes arrive: a connection that never speaks
    /// (HTTP/2 or anything) is closed, certified or not.
    silent_until: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The end of life of an unauthenticated connection, and the slot it holds
/// until it is dropped.
struct Expiry {
    deadline: Pin<Box<tokio::time::Sleep>>,
    lifetime: Duration,
    _slot: OwnedSemaphorePermit,
}

impl TlsConn {
    /// Past its lifetime an unauthenticated connection fails every read and
    /// write, so HTTP/2 drops it (and its descriptor) whatever it is doing.
    /// Polling the deadline wakes the connection's reader when it passes.
    fn check_expiry(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        let Some(e) = &mut self.expiry else {
            return Ok(());
        };
        if e.deadline.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "connection without a client certificate from {} outlived its {:?}",
                self.info.addr, e.lifetime
            ),
        ))
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check_expiry(cx)?;
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(deadline) = &mut self.silent_until {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.silent_until = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "{} sent nothing after its TLS handshake; closed",
                            self.info.addr
                        ),
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check_expiry(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check_expiry(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Bounds on connections that have not proven who they are.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a new connection may stay silent before the first byte of
    /// its TLS hello (a client sends it at once). Until then it holds no
    /// handshake slot, only its descriptor.
    pub hello_timeout: Duration,
    /// TLS handshakes in progress at once (counted from the hello's first
    /// byte); a connection over it waits up to `handshake_wait` for a slot,
    /// then is closed.
    pub handshakes: usize,
    /// Handshakes in progress at once from one source address (a part of
    /// `handshakes`, so one address never takes them all); one over it
    /// waits up to `handshake_wait` too.
    pub handshakes_per_source: usize,
    pub handshake_wait: Duration,
    /// How long a connection with a handshake slot may take to send its
    /// whole ClientHello (a client sends it at once).
    pub client_hello_timeout: Duration,
    /// How long the whole handshake may take, from the slot.
    pub handshake_timeout: Duration,
    /// Connections without a client certificate (enrollment) open at once;
    /// one over it is closed right after its handshake. Connections with a
    /// verified certificate are not counted.
    pub unauthenticated: usize,
    /// How long a connection without a client certificate may stay open:
    /// enough for an enrollment.
    pub unauthenticated_lifetime: Duration,
    /// How long any connection may stay silent after its handshake before
    /// its first bytes (a real client sends the HTTP/2 preface at once).
    pub first_bytes_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            hello_timeout: Duration::from_secs(5),
            // Generous: a handshake costs the controller milliseconds, but
            // in a reconnect storm the clients are as starved of CPU as the
            // controller and hold their slot for seconds (1,024 made 10,000
            // simulated agents, which share one address, take twice as long
            // to return). Stalled hellos give theirs back within
            // `client_hello_timeout`.
            handshakes: 4096,
            handshakes_per_source: 2048,
            // As long as a handshake may take: in a reconnect storm of
            // thousands of agents on a busy controller, a connection waits
            // its turn instead of being closed into the agent's backoff
            // (1 s made 10,000 agents take 42 s instead of 16 s to return).
            handshake_wait: Duration::from_secs(10),
            client_hello_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            unauthenticated: 64,
            unauthenticated_lifetime: Duration::from_secs(10),
            first_bytes_timeout: Duration::from_secs(10),
        }
    }
}

/// Logs a refusal at most once per interval, so a flood does not become a
/// flood of log lines; counts what it did not log.
struct Throttled {
    last_ms: AtomicI64,
    skipped: AtomicI64,
}

impl Throttled {
    const INTERVAL_MS: i64 = 10_000;

    fn new() -> Throttled {
        Throttled {
            last_ms: AtomicI64::new(i64::MIN),
            skipped: AtomicI64::new(0),
        }
    }

    /// `Some(n)`: log now, `n` refusals went unlogged since the last line.
    fn due(&self) -> Option<i64> {
        self.due_at(cutover_core::views::now_ms())
    }

    fn due_at(&self, now: i64) -> Option<i64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= Self::INTERVAL_MS
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.skipped.swap(0, Ordering::Relaxed))
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Handshakes in progress per source address: one fair (FIFO) semaphore per
/// address with a handshake in progress or waiting, so a freed slot wakes
/// the one connection next in line, not every waiter (in a reconnect storm
/// from one address thousands wait at once).
struct PerSource {
    each: usize,
    sources: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

/// A handshake slot (its address's and the global one), given back when
/// dropped.
struct SourceSlot {
    of: Arc<PerSource>,
    ip: IpAddr,
    source: Option<OwnedSemaphorePermit>,
    global: Option<OwnedSemaphorePermit>,
}

impl PerSource {
    fn new(each: usize) -> PerSource {
        PerSource {
            each,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `ip` once it holds fewer than its share and a global one
    /// is free, waiting up to `handshake_wait` in all.
    async fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        global: &Arc<Semaphore>,
        limits: Limits,
    ) -> Option<SourceSlot> {
        let deadline = tokio::time::Instant::now() + limits.handshake_wait;
        let source = {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            sources
                .entry(ip)
                .or_insert_with(|| Arc::new(Semaphore::new(self.each)))
                .clone()
        };
        // From here a slot dropped on the way out forgets an idle address.
        let mut slot = SourceSlot {
            of: self.clone(),
            ip,
            source: None,
            global: None,
        };
        let permit = tokio::time::timeout_at(deadline, source.acquire_owned());
        slot.source = Some(permit.await.ok()?.ok()?);
        let permit = tokio::time::timeout_at(deadline, global.clone().acquire_owned());
        slot.global = Some(permit.await.ok()?.ok()?);
        Some(slot)
    }

    /// Addresses with a handshake in progress or waiting.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.global = None;
        self.source = None;
        let mut sources = self.of.sources.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it (clones are made under this lock, and every
        // waiter and permit holds one): nobody is using or waiting for it.
        if sources
            .get(&self.ip)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            sources.remove(&self.ip);
        }
    }
}

/// The TLS handshake of a connection holding a slot: its ClientHello within
/// `client_hello_timeout`, the whole within `handshake_timeout`.
async fn handshake(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    limits: Limits,
) -> Result<std::io::Result<TlsStream<TcpStream>>, &'static str> {
    let whole = tokio::time::Instant::now() + limits.handshake_timeout;
    let hello_by = whole.min(tokio::time::Instant::now() + limits.client_hello_timeout);
    let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = match tokio::time::timeout_at(hello_by, lazy).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return Ok(Err(e)),
        Err(_) => return Err("no complete TLS ClientHello in time"),
    };
    tokio::time::timeout_at(whole, start.into_stream(config))
        .await
        .map_err(|_| "TLS handshake timed out")
}

/// Accepts connections until `stop` is cancelled (then the listener is
/// closed and the port free), handshaking each on its own task within
/// `limits`, and yields the ones that passed.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: Limits,
    stop: CancellationToken,
) -> mpsc::Receiver<std::io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(1024);
    let handshakes = Arc::new(Semaphore::new(limits.handshakes));
    let per_source = Arc::new(PerSource::new(limits.handshakes_per_source));
    let unauthenticated = Arc::new(Semaphore::new(limits.unauthenticated));
    let busy_log = Arc::new(Throttled::new());
    let unauth_log = Arc::new(Throttled::new());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => a,
            };
            let (tcp, addr) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let config = config.clone();
            let per_source = per_source.clone();
            let tx = tx.clone();
            let handshakes = handshakes.clone();
            let busy_log = busy_log.clone();
            let unauthenticated = unauthenticated.clone();
            let unauth_log = unauth_log.clone();
            tokio::spawn(async move {
                // Silent connections cost a descriptor for `hello_timeout`,
                // never a handshake slot that agents need.
                let mut first = [0u8; 1];
                match tokio::time::timeout(limits.hello_timeout, tcp.peek(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => return,
                    Err(_) => {
                        tracing::debug!(peer = %addr, "no TLS hello in time; closed");
                        return;
                    }
                }
                let Some(slot) = per_source.acquire(addr.ip(), &handshakes, limits).await else {
                    if let Some(skipped) = busy_log.due() {
                        tracing::warn!(peer = %addr, limit = limits.handshakes, per_address = limits.handshakes_per_source, skipped, "too many TLS handshakes in progress; closing connections that found no slot within {:?}", limits.handshake_wait);
                    }
                    return;
                };
                let handshake = handshake(tcp, config, limits).await;
                drop(slot);
                match handshake {
                    Ok(Ok(tls)) => {
                        let identity = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| PeerIdentity::from_der(c).ok());
                        let expiry = if identity.is_some() {
                            None
                        } else {
                            let Ok(slot) = unauthenticated.try_acquire_owned() else {
                                if let Some(skipped) = unauth_log.due() {
                                    tracing::warn!(peer = %addr, limit = limits.unauthenticated, skipped, "too many connections without a client certificate; closing new ones at once");
                                }
                                return;
                            };
                            Some(Expiry {
                                deadline: Box::pin(tokio::time::sleep(
                                    limits.unauthenticated_lifetime,
                                )),
                                lifetime: limits.unauthenticated_lifetime,
                                _slot: slot,
                            })
                        };
                        let conn = TlsConn {
                            inner: tls,
                            info: PeerInfo { addr, identity },
                            expiry,
                            silent_until: Some(Box::pin(tokio::time::sleep(
                                limits.first_bytes_timeout,
                            ))),
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(peer = %addr, error = %e, "TLS handshake refused")
                    }
                    Err(why) => tracing::info!(peer = %addr, "{why}; closed"),
                }
            });
        }
        tracing::info!("listener closed");
    });
    rx
}

/// The limit on open descriptors at start: what it was, and what the
/// controller made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimit {
    /// The soft limit the controller was started with.
    pub soft_before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft limit on open descriptors to the hard limit, so that
/// connected agents, not a distribution's default of 1024, decide how many
/// connections the controller can hold (one descriptor each).
pub fn raise_descriptor_limit() -> std::io::Result<DescriptorLimit> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok(DescriptorLimit {
        soft_before: soft,
        soft: hard.max(soft),
        hard,
    })
}

#[cfg(test)]
mod tests;
