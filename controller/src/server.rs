//! The listener: TCP accept, the TLS handshake with our verifier (revoked
//! and foreign certificates are refused here), and the peer's identity
//! handed to tonic as connection info. Connections that have not proven who
//! they are are bounded: handshakes in progress and connections without a
//! client certificate (enrollment) are capped, over the cap closed at once,
//! and each lives a bounded time.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cutover_core::pki::PeerIdentity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
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
    /// TLS handshakes in progress at once; a connection accepted over it is
    /// closed at once.
    pub handshakes: usize,
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
            handshakes: 256,
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
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(limits.handshakes));
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
            let Ok(handshake_slot) = handshakes.clone().try_acquire_owned() else {
                if let Some(skipped) = busy_log.due() {
                    tracing::warn!(peer = %addr, limit = limits.handshakes, skipped, "too many TLS handshakes in progress; closing new connections at once");
                }
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let unauthenticated = unauthenticated.clone();
            let unauth_log = unauth_log.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
                drop(handshake_slot);
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
                    Err(_) => tracing::info!(peer = %addr, "TLS handshake timed out"),
                }
            });
        }
        tracing::info!("listener closed");
    });
    rx
}

/// Raises the soft limit on open descriptors to the hard limit, so that
/// connected agents, not a distribution's default of 1024, decide how many
/// connections the controller can hold. Returns the limit now in force.
pub fn raise_descriptor_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok(hard.max(soft))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_core::pki;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Real certificates from our PKI and a listener on loopback.
    struct World {
        _dir: tempfile::TempDir,
        pki: std::path::PathBuf,
        addr: SocketAddr,
        rx: mpsc::Receiver<std::io::Result<TlsConn>>,
        stop: CancellationToken,
    }

    async fn world(limits: Limits) -> World {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        pki::init(&pki::InitOptions {
            dir: &pki,
            controller_hosts: &["127.0.0.1".to_string()],
            operator_name: "op",
        })
        .unwrap();
        let config = cutover_core::tls::server_config(
            &cutover_core::tls::read_certs(&pki.join(pki::CA_CERT)).unwrap(),
            cutover_core::tls::read_certs(&pki.join(pki::CONTROLLER_CERT)).unwrap(),
            cutover_core::tls::read_key(&pki.join(pki::CONTROLLER_KEY)).unwrap(),
            cutover_core::tls::RevokedHosts::default(),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let rx = incoming(listener, Arc::new(config), limits, stop.clone());
        World {
            _dir: dir,
            pki,
            addr,
            rx,
            stop,
        }
    }

    impl World {
        /// A TLS client, with the operator certificate or none.
        async fn tls(&self, operator: bool) -> tokio_rustls::client::TlsStream<TcpStream> {
            let ca = cutover_core::tls::read_certs(&self.pki.join(pki::CA_CERT)).unwrap();
            let identity = operator.then(|| {
                (
                    cutover_core::tls::read_certs(&self.pki.join(pki::OPERATOR_CERT)).unwrap(),
                    cutover_core::tls::read_key(&self.pki.join(pki::OPERATOR_KEY)).unwrap(),
                )
            });
            let config = cutover_core::tls::client_config(&ca, identity).unwrap();
            let tcp = TcpStream::connect(self.addr).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect("127.0.0.1".try_into().unwrap(), tcp)
                .await
                .unwrap()
        }

        /// The next connection that passed, echoed by a task as a server
        /// would serve it; the task returns how the connection ended.
        async fn serve_next(&mut self) -> (PeerInfo, tokio::task::JoinHandle<std::io::Error>) {
            let mut conn = self.rx.recv().await.unwrap().unwrap();
            let info = conn.info.clone();
            let task = tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) => return std::io::Error::other("peer closed"),
                        Ok(n) => {
                            if let Err(e) = conn.write_all(&buf[..n]).await {
                                return e;
                            }
                            if let Err(e) = conn.flush().await {
                                return e;
                            }
                        }
                        Err(e) => return e,
                    }
                }
            });
            (info, task)
        }
    }

    /// Waits for the server to close `stream`: a read ends (EOF or error)
    /// instead of hanging. The outer bound only keeps a broken build from
    /// hanging the suite.
    async fn closed_by_server(stream: &mut (impl tokio::io::AsyncRead + Unpin)) {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        });
        read.await
            .expect("the server never closed a connection over its limit");
    }

    async fn echo(stream: &mut tokio_rustls::client::TlsStream<TcpStream>) {
        stream.write_all(b"ping").await.unwrap();
        stream.flush().await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn handshakes_over_the_cap_are_closed_at_once_and_a_freed_slot_serves_again() {
        let mut w = world(Limits {
            handshakes: 2,
            handshake_timeout: Duration::from_secs(3600),
            ..Limits::default()
        })
        .await;
        // Two connections that never say hello hold both handshake slots
        // (for an hour, as far as the timeout goes).
        let silent_1 = TcpStream::connect(w.addr).await.unwrap();
        let silent_2 = TcpStream::connect(w.addr).await.unwrap();
        // The third is closed at once rather than queued.
        let mut third = TcpStream::connect(w.addr).await.unwrap();
        closed_by_server(&mut third).await;
        let mut buf = [0u8; 1];
        for s in [&silent_1, &silent_2] {
            assert_eq!(
                s.try_read(&mut buf).unwrap_err().kind(),
                std::io::ErrorKind::WouldBlock,
                "a connection within the cap was closed"
            );
        }
        // One silent client goes away: its slot frees and a real client
        // completes its handshake and is served.
        drop(silent_1);
        let mut client = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                // Until the server noticed the EOF, the slot may still be taken.
                let ca = cutover_core::tls::read_certs(&w.pki.join(pki::CA_CERT)).unwrap();
                let config = cutover_core::tls::client_config(&ca, None).unwrap();
                let tcp = TcpStream::connect(w.addr).await.unwrap();
                if let Ok(s) = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect("127.0.0.1".try_into().unwrap(), tcp)
                    .await
                {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        let (info, _task) = w.serve_next().await;
        assert!(info.identity.is_none());
        echo(&mut client).await;
        drop(silent_2);
    }

    #[tokio::test]
    async fn unauthenticated_connections_over_the_cap_are_closed_and_certified_ones_are_not_counted(
    ) {
        let mut w = world(Limits {
            unauthenticated: 2,
            unauthenticated_lifetime: Duration::from_secs(3600),
            ..Limits::default()
        })
        .await;
        let mut first = w.tls(false).await;
        let (_, t1) = w.serve_next().await;
        let mut second = w.tls(false).await;
        let (_, _t2) = w.serve_next().await;
        // The handshake succeeds, then the connection is closed: no slot.
        let mut third = w.tls(false).await;
        closed_by_server(&mut third).await;
        echo(&mut first).await;
        echo(&mut second).await;
        // An operator is not held up by the enrollment cap.
        let mut operator = w.tls(true).await;
        let (info, _t3) = w.serve_next().await;
        assert_eq!(
            info.identity.map(|i| i.role),
            Some(cutover_core::pki::Role::Operator("op".into()))
        );
        echo(&mut operator).await;
        // A slot frees when its connection ends: once the server has seen
        // the first client go, a new one is served.
        drop(first);
        let ended = t1.await.unwrap();
        assert_eq!(ended.kind(), std::io::ErrorKind::UnexpectedEof, "{ended}");
        let mut fourth = w.tls(false).await;
        let (_, _t4) = w.serve_next().await;
        echo(&mut fourth).await;
        echo(&mut second).await;
    }

    #[tokio::test]
    async fn an_unauthenticated_connection_fails_past_its_lifetime_and_a_certified_one_has_none() {
        let mut w = world(Limits {
            unauthenticated_lifetime: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let mut client = w.tls(false).await;
        let (_, task) = w.serve_next().await;
        // The server side's pending read fails with the lifetime error even
        // though the client says nothing; the client sees the close.
        let ended = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ended.kind(), std::io::ErrorKind::TimedOut, "{ended}");
        assert!(
            ended.to_string().contains("without a client certificate"),
            "{ended}"
        );
        closed_by_server(&mut client).await;
        let _operator = w.tls(true).await;
        let conn = w.rx.recv().await.unwrap().unwrap();
        assert!(conn.info.identity.is_some());
        assert!(
            conn.expiry.is_none(),
            "a certified connection got a lifetime"
        );
    }

    #[tokio::test]
    async fn a_certified_connection_that_never_speaks_is_closed_and_one_that_speaks_is_not() {
        let mut w = world(Limits {
            first_bytes_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        // Says something at once, then nothing for longer than the bound.
        let mut speaker = w.tls(true).await;
        let (_, speaker_task) = w.serve_next().await;
        echo(&mut speaker).await;
        // Says nothing at all.
        let mut silent = w.tls(true).await;
        let (info, silent_task) = w.serve_next().await;
        assert!(info.identity.is_some());
        let ended = tokio::time::timeout(Duration::from_secs(60), silent_task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ended.kind(), std::io::ErrorKind::TimedOut, "{ended}");
        assert!(
            ended
                .to_string()
                .contains("sent nothing after its TLS handshake"),
            "{ended}"
        );
        closed_by_server(&mut silent).await;
        // The speaker, silent since well past the bound, is still served.
        echo(&mut speaker).await;
        assert!(!speaker_task.is_finished());
    }

    #[tokio::test]
    async fn stopping_closes_the_listener_so_the_port_can_be_bound_again() {
        let w = world(Limits::default()).await;
        w.stop.cancel();
        let addr = w.addr;
        tokio::time::timeout(Duration::from_secs(60), async move {
            loop {
                if std::net::TcpListener::bind(addr).is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the port stayed bound after stop");
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_the_count_left_unlogged() {
        let t = Throttled::new();
        assert_eq!(t.due_at(1_000), Some(0));
        assert_eq!(t.due_at(1_001), None);
        assert_eq!(t.due_at(1_000 + Throttled::INTERVAL_MS - 1), None);
        assert_eq!(t.due_at(1_000 + Throttled::INTERVAL_MS), Some(2));
        assert_eq!(t.due_at(1_000 + Throttled::INTERVAL_MS), None);
        // A clock that steps back never panics or logs in a loop.
        assert_eq!(t.due_at(0), None);
    }

    #[test]
    fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Lower the soft limit (which any process may raise back), then
        // check the controller's start-up call undoes it.
        let lowered = soft.min(hard).min(512);
        setrlimit(Resource::RLIMIT_NOFILE, lowered, hard).unwrap();
        let now = raise_descriptor_limit().unwrap();
        let (soft_after, hard_after) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((soft_after, hard_after), (hard, hard));
        assert_eq!(now, hard);
    }
}
