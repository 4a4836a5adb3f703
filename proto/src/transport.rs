//! Dialing the controller: TCP, then TLS with our own rustls config (so the
//! client certificate and trusted CA are exactly cutover's), then HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where the controller is: `https://HOST[:PORT]`, the port 7443 when it is
/// left out.
#[derive(Debug, Clone)]
pub struct ControllerAddr {
    pub host: String,
    pub port: u16,
}

/// The controller's port when a URL names none.
pub const DEFAULT_CONTROLLER_PORT: u16 = 7443;

/// The longest controller URL accepted.
pub const MAX_CONTROLLER_URL_BYTES: usize = 1024;

impl ControllerAddr {
    /// Parses a controller URL; the error quotes it: `controller address
    /// "URL": why`.
    pub fn parse(url: &str) -> Result<Self, String> {
        Self::check(url).map_err(|why| format!("controller address {url:?}: {why}"))
    }

    /// The one parser of a controller URL, with the reason alone as its error
    /// (for callers that name the key or flag themselves): `https` only, a
    /// host (a DNS name, an IPv4 address or a bracketed IPv6 one), a port of
    /// 1-65535 or none (7443), no user name or password, no path but "/",
    /// no query and no fragment.
    pub fn check(url: &str) -> Result<Self, String> {
        if url.len() > MAX_CONTROLLER_URL_BYTES {
            return Err(format!(
                "{} bytes; at most {MAX_CONTROLLER_URL_BYTES} are allowed",
                url.len()
            ));
        }
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
            _ => return Err("must start with https://".into()),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if !tail.is_empty() && tail != "/" {
            return Err(format!(
                "{tail:?}: a controller URL has no path, query or fragment (write https://HOST:PORT)"
            ));
        }
        if authority.contains('@') {
            return Err(
                "a controller URL carries no user name or password (the operator and hosts authenticate by certificate)"
                    .into(),
            );
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or("an IPv6 address opened with [ is not closed with ]")?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("[{host}] is not an IPv6 address"));
            }
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("{after:?} after the IPv6 address")),
                },
            }
        } else {
            match authority.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(
                        "an IPv6 address must be written in brackets: https://[::1]:7443".into(),
                    )
                }
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        if ServerName::try_from(host.to_string()).is_err() {
            return Err(format!("{host:?} is not a host name or an IP address"));
        }
        let port = match port {
            None => DEFAULT_CONTROLLER_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("port {p:?} must be a number from 1 to 65535")),
            },
        };
        Ok(ControllerAddr {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for ControllerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}:{}", self.host, self.port)
    }
}

/// How long a dial waits for TCP, TLS and HTTP/2 to be up.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The identity a dial presents: a certificate chain and its key.
pub type ClientIdentity = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// Why a dial failed: our TLS settings could not be made from the files,
/// or the controller could not be reached or refused the handshake.
#[derive(Debug)]
pub enum DialError {
    Tls(cutover_core::Error),
    Connect(tonic::transport::Error),
}

/// Dials the controller at `addr` the one way every client does (agent
/// enrollment and sessions, the CLI): trusting only `ca`, presenting
/// `identity` (none for enrollment, which has no certificate yet), within
/// [`DIAL_TIMEOUT`].
pub async fn dial(
    addr: &ControllerAddr,
    ca: &[rustls::pki_types::CertificateDer<'static>],
    identity: Option<ClientIdentity>,
) -> Result<Channel, DialError> {
    let tls = cutover_core::tls::client_config(ca, identity).map_err(DialError::Tls)?;
    connect(addr, tls, DIAL_TIMEOUT)
        .await
        .map_err(DialError::Connect)
}

/// Opens a channel to the controller over mutual TLS.
pub async fn connect(
    addr: &ControllerAddr,
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let tls = TlsConnector::from(Arc::new(tls));
    let (host, port) = (addr.host.clone(), addr.port);
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, host) = (tls.clone(), host.clone());
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let mut stream = tls.connect(name, tcp).await?;
            await_server_verdict(&mut stream).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let host = if addr.host.contains(':') {
        format!("[{}]", addr.host)
    } else {
        addr.host.clone()
    };
    Endpoint::from_shared(format!("http://{host}:{port}"))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect_with_connector(connector)
        .await
}

/// With TLS 1.3 the client finishes its handshake before the server has
/// judged the client certificate; a refusal then arrives as an alert that
/// would race the first request and be lost as "connection closed". So we
/// read the server's first records (session tickets or HTTP/2 SETTINGS, which
/// a healthy server sends at once) into rustls before handing the stream on:
/// an alert becomes this connection's error, application data stays
/// buffered for HTTP/2.
async fn await_server_verdict(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
) -> std::io::Result<()> {
    let (tcp, conn) = stream.get_mut();
    let mut buf = vec![0u8; 16 * 1024];
    let wait = async {
        loop {
            tcp.readable().await?;
            let n = match tcp.try_read(&mut buf) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "controller closed the connection after the handshake",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            let mut data = &buf[..n];
            while !data.is_empty() {
                conn.read_tls(&mut data)?;
                conn.process_new_packets()
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            }
            return Ok(());
        }
    };
    // A server that says nothing is not refusing us; let HTTP/2 go on.
    match tokio::time::timeout(Duration::from_secs(5), wait).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

/// The whole cause chain of an error on one line, led by a plain
/// explanation when it is a TLS refusal: tonic hides the alert (revoked,
/// expired, unknown CA) several sources deep.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    match explain_tls(&out) {
        Some(why) => format!("{why} ({out})"),
        None => out,
    }
}

/// What a TLS failure means for the operator.
pub fn explain_tls(text: &str) -> Option<&'static str> {
    let has = |s: &str| text.contains(s);
    if has("CertificateRevoked") {
        Some("the controller refused our certificate: this host was revoked")
    } else if has("CertificateExpired") {
        Some("the controller refused our certificate: it has expired")
    } else if has("alert: UnknownCA") || has("DecryptError") || has("BadCertificate") {
        Some("the controller refused our certificate: it was not issued by the controller's CA")
    } else if has("UnknownIssuer") {
        Some("the controller's certificate is not signed by the CA we trust (check the CA file)")
    } else if has("NotValidForName") {
        Some("the controller's certificate does not cover this address (see `cutover pki init --controller-host`)")
    } else if has("Expired") {
        Some("a certificate in the handshake has expired")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_controller_urls() {
        let a = ControllerAddr::parse("https://ctl.example:9000").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("ctl.example", 9000));
        let a = ControllerAddr::parse("https://[::1]").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 7443));
        let a = ControllerAddr::parse("https://[::1]:9/").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 9));
        let a = ControllerAddr::parse("HTTPS://127.0.0.1:65535").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 65535));
        assert_eq!(ControllerAddr::parse("https://ctl").unwrap().port, 7443);
        assert!(ControllerAddr::parse("http://x:1")
            .unwrap_err()
            .contains("https://"));
    }

    #[test]
    fn controller_urls_that_would_dial_elsewhere_are_refused() {
        for (url, why) in [
            (
                "https://127.0.0.1:99999",
                "port \"99999\" must be a number from 1 to 65535",
            ),
            ("https://127.0.0.1:0", "port \"0\""),
            ("https://127.0.0.1:", "port \"\""),
            ("https://127.0.0.1:+80", "port \"+80\""),
            ("https://127.0.0.1:35001/x?y", "no path, query or fragment"),
            ("https://127.0.0.1:35001?y", "no path, query or fragment"),
            ("https://127.0.0.1#f", "no path, query or fragment"),
            ("https://u:p@127.0.0.1:35001", "no user name or password"),
            ("https://u@127.0.0.1", "no user name or password"),
            ("https://:7443", "no host"),
            ("https://", "no host"),
            ("https://::1:7443", "in brackets"),
            ("https://[::1", "not closed"),
            ("https://[nope]:1", "not an IPv6 address"),
            ("https://[::1]x", "after the IPv6 address"),
            ("https://bad host:1", "not a host name"),
            ("127.0.0.1:7443", "https://"),
        ] {
            let e = ControllerAddr::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
            assert!(e.starts_with(&format!("controller address {url:?}")), "{e}");
        }
        let long = format!("https://{}.example", "a".repeat(2000));
        assert!(ControllerAddr::check(&long)
            .unwrap_err()
            .contains("at most"));
    }
}
