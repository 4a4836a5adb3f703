//! The operator's connection to the controller, authenticated by the
//! operator certificate.

use std::path::PathBuf;

use cutover_core::pki;
use cutover_proto::transport::{dial, ControllerAddr, DialError};
use cutover_proto::OperatorClient;
use tonic::transport::Channel;

use crate::error::{Error, Result};

/// Where the controller is and which certificate to present.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The controller's address, `https://HOST[:PORT]` (port 7443 when left
    /// out).
    #[arg(
        long,
        global = true,
        env = "CUTOVER_CONTROLLER",
        default_value = "https://127.0.0.1:7443",
        value_parser = controller_url
    )]
    pub controller: String,
    /// Directory made by `cutover pki init`: ca.pem, operator.pem, operator-key.pem.
    #[arg(long, global = true, env = "CUTOVER_PKI_DIR", default_value = "pki")]
    pub pki_dir: PathBuf,
    /// CA certificate (overrides PKI_DIR/ca.pem).
    #[arg(long, global = true, env = "CUTOVER_CA")]
    pub ca: Option<PathBuf>,
    /// Operator certificate (overrides PKI_DIR/operator.pem).
    #[arg(long, global = true, env = "CUTOVER_CERT")]
    pub cert: Option<PathBuf>,
    /// Operator private key (overrides PKI_DIR/operator-key.pem).
    #[arg(long, global = true, env = "CUTOVER_KEY")]
    pub key: Option<PathBuf>,
}

/// `--controller` and `CUTOVER_CONTROLLER` go through the one parser of a
/// controller URL when the command line is read, so a bad one is a usage
/// error (exit 2) before anything is dialed.
fn controller_url(url: &str) -> std::result::Result<String, String> {
    ControllerAddr::check(url).map(|_| url.to_string())
}

impl ConnectArgs {
    /// One of the operator's files, and what to say when it cannot be
    /// read: which flag, environment variable or default pointed at it.
    fn file(&self, explicit: &Option<PathBuf>, name: &str, flag: &str, env: &str) -> Credential {
        match explicit {
            Some(path) => Credential {
                path: path.clone(),
                hint: format!("it was named by {flag} (or {env})"),
            },
            None => Credential {
                path: self.pki_dir.join(name),
                hint: format!(
                    "it is {name} in the --pki-dir directory (CUTOVER_PKI_DIR, default `pki`); point --pki-dir at the directory `cutover pki init --dir` made, or name the file with {flag} (or {env})"
                ),
            },
        }
    }

    /// Connects, or explains which file or which part of the handshake failed.
    pub async fn operator(&self) -> Result<OperatorClient<Channel>> {
        let addr = ControllerAddr::parse(&self.controller).map_err(Error::Usage)?;
        let ca = self.file(&self.ca, pki::CA_CERT, "--ca", "CUTOVER_CA");
        let ca = ca.read(cutover_core::tls::read_certs)?;
        let cert = self.file(&self.cert, pki::OPERATOR_CERT, "--cert", "CUTOVER_CERT");
        let certs = cert.read(cutover_core::tls::read_certs)?;
        let key = self.file(&self.key, pki::OPERATOR_KEY, "--key", "CUTOVER_KEY");
        let key = key.read(cutover_core::tls::read_key)?;
        let channel = dial(&addr, &ca, Some((certs, key)))
            .await
            .map_err(|e| match e {
                DialError::Tls(e) => Error::from(e),
                DialError::Connect(e) => Error::Connect {
                    addr: addr.to_string(),
                    detail: connect_failure(&e),
                },
            })?;
        Ok(OperatorClient::new(channel)
            .max_decoding_message_size(cutover_proto::MAX_OPERATOR_MESSAGE_BYTES))
    }
}

/// A file of the operator's credentials and where its name came from.
struct Credential {
    path: PathBuf,
    hint: String,
}

impl Credential {
    fn read<T>(&self, read: impl FnOnce(&std::path::Path) -> cutover_core::Result<T>) -> Result<T> {
        read(&self.path).map_err(|e| Error::Failed(format!("{e}; {}", self.hint)))
    }
}

/// Why dialing failed, in words, and what to check when it is not TLS.
fn connect_failure(e: &tonic::transport::Error) -> String {
    match crate::error::reason_parts(e) {
        (Some(why), root) => format!("{why} ({root})"),
        (None, root) => format!("{root}; check that cutover-controller runs there and that --controller (or CUTOVER_CONTROLLER) names it"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn a_controller_flag_that_would_dial_another_port_or_carries_more_is_a_usage_error() {
        for (url, why) in [
            (
                "https://127.0.0.1:99999",
                "must be a number from 1 to 65535",
            ),
            ("https://127.0.0.1:0", "must be a number from 1 to 65535"),
            ("https://127.0.0.1:35001/x?y", "no path, query or fragment"),
            ("https://u:p@127.0.0.1:35001", "no user name or password"),
            ("http://127.0.0.1:1", "https://"),
        ] {
            let e = crate::Cli::try_parse_from(["cutover", "--controller", url, "hosts"])
                .err()
                .unwrap_or_else(|| panic!("{url} was accepted"));
            assert_eq!(e.exit_code(), 2, "{url}");
            let text = e.to_string();
            assert!(
                text.contains("--controller") && text.contains(url) && text.contains(why),
                "{url}: {text}"
            );
        }
        let ok = crate::Cli::try_parse_from(["cutover", "--controller", "https://ctl/", "hosts"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.connect.controller, "https://ctl/");
    }
}
