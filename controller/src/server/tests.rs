//! The listener's bounds, against real TLS clients on loopback.

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

/// A TCP connection that sends the first byte of a TLS record and then
/// nothing: it holds a handshake slot until its handshake times out.
async fn stalled_handshake(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x16]).await.unwrap();
    s
}

/// A TLS client without a certificate, connecting in the background.
fn connect_later(
    w: &World,
) -> tokio::task::JoinHandle<std::io::Result<tokio_rustls::client::TlsStream<TcpStream>>> {
    let ca = cutover_core::tls::read_certs(&w.pki.join(pki::CA_CERT)).unwrap();
    let config = cutover_core::tls::client_config(&ca, None).unwrap();
    let addr = w.addr;
    tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
    })
}

#[tokio::test]
async fn a_connection_over_the_handshake_cap_waits_for_a_slot_and_is_served() {
    let mut w = world(Limits {
        handshakes: 2,
        handshake_wait: Duration::from_secs(3600),
        handshake_timeout: Duration::from_secs(3600),
        ..Limits::default()
    })
    .await;
    let stalled_1 = stalled_handshake(w.addr).await;
    let stalled_2 = stalled_handshake(w.addr).await;
    // Over the cap: waits rather than being closed at once.
    let waiting = connect_later(&w);
    // The server holds it open (neither served nor closed) while both slots
    // are taken: the stalled ones stay connected too.
    let mut buf = [0u8; 1];
    for s in [&stalled_1, &stalled_2] {
        assert_eq!(
            s.try_read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "a connection within the cap was closed"
        );
    }
    // A slot frees: the waiting client's handshake completes and it is served.
    drop(stalled_1);
    let mut client = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the waiting client never got a slot")
        .unwrap()
        .expect("the waiting client's handshake failed");
    let (info, _task) = w.serve_next().await;
    assert!(info.identity.is_none());
    echo(&mut client).await;
    drop(stalled_2);
}

#[tokio::test]
async fn a_connection_that_finds_no_handshake_slot_in_time_is_closed() {
    let w = world(Limits {
        handshakes: 1,
        handshake_wait: Duration::from_millis(200),
        handshake_timeout: Duration::from_secs(3600),
        ..Limits::default()
    })
    .await;
    let _stalled = stalled_handshake(w.addr).await;
    let mut late = stalled_handshake(w.addr).await;
    closed_by_server(&mut late).await;
    let refused = connect_later(&w).await.unwrap();
    assert!(refused.is_err(), "a client got a slot the cap did not have");
}

#[tokio::test]
async fn connections_that_send_no_hello_hold_no_handshake_slot_and_are_closed() {
    let mut w = world(Limits {
        hello_timeout: Duration::from_millis(500),
        handshakes: 1,
        handshake_wait: Duration::from_millis(1),
        ..Limits::default()
    })
    .await;
    // Far more silent connections than handshake slots.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(w.addr).await.unwrap());
    }
    // A real client is not held up by them, with its one slot.
    let mut client = w.tls(false).await;
    let (_, _task) = w.serve_next().await;
    echo(&mut client).await;
    // Each silent one is closed once its hello is overdue.
    for s in &mut silent {
        closed_by_server(s).await;
    }
}

#[tokio::test]
async fn unauthenticated_connections_over_the_cap_are_closed_and_certified_ones_are_not_counted() {
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
    assert_eq!(
        now,
        DescriptorLimit {
            soft_before: lowered,
            soft: hard,
            hard
        }
    );
}

/// A TCP connection from `source` (another loopback address) that sends
/// 11 bytes of a TLS ClientHello and then nothing.
async fn stalled_hello_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    // Record header (handshake, TLS 1.0, 512 bytes), then the start of a
    // ClientHello that never arrives whole.
    s.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .await
    .unwrap();
    s
}

#[tokio::test]
async fn one_address_holding_its_most_stalled_hellos_leaves_handshakes_for_another() {
    let mut w = world(Limits {
        handshakes: 3,
        handshakes_per_source: 2,
        handshake_wait: Duration::from_millis(200),
        client_hello_timeout: Duration::from_secs(3600),
        handshake_timeout: Duration::from_secs(3600),
        ..Limits::default()
    })
    .await;
    let held_1 = stalled_hello_from("127.0.0.1", w.addr).await;
    let held_2 = stalled_hello_from("127.0.0.1", w.addr).await;
    // Over its address's share, though the global cap has room: closed.
    let mut over = stalled_hello_from("127.0.0.1", w.addr).await;
    closed_by_server(&mut over).await;
    // Another address still completes a handshake and is served.
    let ca = cutover_core::tls::read_certs(&w.pki.join(pki::CA_CERT)).unwrap();
    let config = cutover_core::tls::client_config(&ca, None).unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = socket.connect(w.addr).await.unwrap();
    let mut client = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .expect("a handshake from another address was refused");
    let (info, _task) = w.serve_next().await;
    assert_eq!(info.addr.ip().to_string(), "127.0.0.2");
    echo(&mut client).await;
    // The first address's stalled hellos were held all along.
    let mut buf = [0u8; 1];
    for s in [&held_1, &held_2] {
        assert_eq!(
            s.try_read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "a connection within its address's share was closed"
        );
    }
}

#[tokio::test]
async fn a_stalled_partial_hello_is_closed_after_the_hello_deadline_and_frees_its_slot() {
    let mut w = world(Limits {
        handshakes: 1,
        handshake_wait: Duration::from_secs(3600),
        client_hello_timeout: Duration::from_millis(300),
        handshake_timeout: Duration::from_secs(3600),
        ..Limits::default()
    })
    .await;
    let mut stalled = stalled_hello_from("127.0.0.1", w.addr).await;
    // Closed long before the handshake deadline.
    closed_by_server(&mut stalled).await;
    // Its one slot is free again: a real client is served.
    let mut client = w.tls(false).await;
    let (_, _task) = w.serve_next().await;
    echo(&mut client).await;
}

#[tokio::test]
async fn waiters_for_one_address_are_served_in_turn_and_an_idle_address_is_forgotten() {
    let limits = Limits {
        handshakes_per_source: 2,
        handshake_wait: Duration::from_secs(3600),
        ..Limits::default()
    };
    let per_source = Arc::new(PerSource::new(limits.handshakes_per_source));
    let global = Arc::new(Semaphore::new(1000));
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let first = per_source.acquire(ip, &global, limits).await.unwrap();
    let second = per_source.acquire(ip, &global, limits).await.unwrap();
    // Fifty more wait their turn; each freed slot serves exactly one.
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let (release_tx, release) = tokio::sync::watch::channel(0usize);
    for i in 0..50usize {
        let (per_source, global, done_tx) = (per_source.clone(), global.clone(), done_tx.clone());
        let mut release = release.clone();
        tokio::spawn(async move {
            let slot = per_source.acquire(ip, &global, limits).await.unwrap();
            done_tx.send(i).unwrap();
            release.wait_for(|&n| n > i).await.unwrap();
            drop(slot);
        });
        tokio::task::yield_now().await;
    }
    drop(done_tx);
    assert!(done.try_recv().is_err(), "a waiter got a slot over the cap");
    drop(first);
    drop(second);
    let mut served = vec![done.recv().await.unwrap(), done.recv().await.unwrap()];
    for released in 1..=50 {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            done.try_recv().is_err(),
            "more waiters served than slots freed"
        );
        release_tx.send(released).unwrap();
        if served.len() < 50 {
            served.push(done.recv().await.unwrap());
        }
    }
    assert_eq!(served, (0..50).collect::<Vec<_>>(), "not served in turn");
    assert!(done.recv().await.is_none());
    assert_eq!(global.available_permits(), 1000);
    assert_eq!(per_source.tracked(), 0, "an idle address is still tracked");

    // One that gives up waiting leaves nothing behind either.
    let limits = Limits {
        handshake_wait: Duration::from_millis(50),
        ..limits
    };
    let held = [
        per_source.acquire(ip, &global, limits).await.unwrap(),
        per_source.acquire(ip, &global, limits).await.unwrap(),
    ];
    assert!(per_source.acquire(ip, &global, limits).await.is_none());
    drop(held);
    assert_eq!(per_source.tracked(), 0);
    assert_eq!(global.available_permits(), 1000);
}
