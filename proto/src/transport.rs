//! Dialing the controller: TCP, then TLS with our own rustls config (so the
//! client certificate and trusted CA are exactly cutover's), then HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where the controller is: `https://HOST:PORT`.
#[derive(Debug, Clone)]
pub struct ControllerAddr {
    pub host: String,
    pub port: u16,
}

impl ControllerAddr {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("controller address {url:?}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "controller address {url:?} must start with https://"
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("controller address {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(ControllerAddr {
            host,
            port: uri.port_u16().unwrap_or(7443),
        })
    }
}

impl std::fmt::Display for ControllerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}:{}", self.host, self.port)
    }
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
        assert_eq!(ControllerAddr::parse("https://[::1]").unwrap().host, "::1");
        assert!(ControllerAddr::parse("http://x:1")
            .unwrap_err()
            .contains("https://"));
    }
}
