//! The CLI's error type and exit codes: 1 for a failure, 2 for a usage
//! error, 130 when Ctrl-C stopped a command that follows a rollout or
//! the event log.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the controller at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    /// A call that failed in transport, not by the controller's answer.
    /// `addr` is filled in by [`Error::at_controller`] once the command
    /// is done (the conversion from `tonic::Status` does not know it).
    #[error("lost the connection to the controller at {addr}: {detail}; check that cutover-controller still runs there and is reachable, then run the command again")]
    Lost { addr: String, detail: String },
    #[error("{0}")]
    Rpc(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] cutover_core::Error),
    #[error("{0}")]
    Failed(String),
    #[error("interrupted: rollout {id} goes on running on the controller; follow it again with `cutover rollout watch {id}` or stop it with `cutover rollout abort {id}`")]
    Interrupted { id: u64 },
    /// Ctrl-C ended `cutover migrate` while the controller ran it.
    #[error("interrupted: the migrate goes on on the controller (the CLI never cuts a migration short); see what it applied with `cutover migrate status`")]
    MigrateGoesOn,
    /// Ctrl-C ended a command that follows something open-ended
    /// (`events --follow`): nothing is left running.
    #[error("interrupted")]
    Stopped,
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            // 128 + SIGINT, as a shell reports a command Ctrl-C ended.
            Error::Interrupted { .. } | Error::Stopped | Error::MigrateGoesOn => 130,
            _ => 1,
        }
    }

    /// Names the controller in a transport failure.
    pub fn at_controller(self, controller: &str) -> Self {
        match self {
            Error::Lost { detail, .. } => Error::Lost {
                addr: cutover_proto::transport::ControllerAddr::parse(controller)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| controller.to_string()),
                detail,
            },
            other => other,
        }
    }
}

impl From<tonic::Status> for Error {
    /// A status the controller sent carries its own one-line message. One
    /// that tonic made from a failed connection carries the transport
    /// error as its source, and its `Display` prints that error's `Debug`
    /// form: never shown, only its root cause, in words ([`reason`]).
    fn from(s: tonic::Status) -> Self {
        if std::error::Error::source(&s).is_some() || s.message().is_empty() {
            Error::Lost {
                addr: String::new(),
                detail: reason(&s),
            }
        } else {
            Error::Rpc(s.message().to_string())
        }
    }
}

/// What went wrong on the way to the controller, in words: the root cause
/// of the error chain (`connection refused`, `invalid peer certificate:
/// UnknownIssuer`), led by what a TLS refusal means for the operator.
/// Wrappers that only say where the error passed ("transport error",
/// "client error (Connect)") and any `Debug` text are left out.
pub fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    match reason_parts(e) {
        (Some(why), root) => format!("{why} ({root})"),
        (None, root) => root,
    }
}

/// [`reason`]'s two parts: what a TLS refusal means, if it is one, and the
/// root cause.
pub fn reason_parts(e: &(dyn std::error::Error + 'static)) -> (Option<&'static str>, String) {
    let mut texts = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let text = match e.downcast_ref::<tonic::Status>() {
            Some(s) => s.message().to_string(),
            None => e.to_string(),
        };
        texts.push(text);
        next = e.source();
    }
    let joined = texts.join(": ");
    let root = texts
        .iter()
        .rev()
        .map(|t| plain(t))
        .find(|t| !t.is_empty() && !WRAPPERS.iter().any(|w| w.eq_ignore_ascii_case(t)))
        .unwrap_or_else(|| "the connection failed".into());
    (cutover_proto::transport::explain_tls(&joined), root)
}

/// Texts of errors that wrap the cause without saying it.
const WRAPPERS: [&str; 6] = [
    "transport error",
    "client error (connect)",
    "error trying to connect",
    "connection error",
    "service was not ready",
    "the connection failed",
];

/// One error's text as a person reads it: lower case first letter, no
/// `(os error N)`, no `Debug` rendering of a nested error.
fn plain(text: &str) -> String {
    let text = match text.find(" (os error ") {
        Some(at) => &text[..at],
        None => text,
    };
    if text.contains("source:") || text.contains("::") || text.contains("Error(") {
        return String::new();
    }
    let mut chars = text.trim().chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_lost_its_connection_is_one_line_naming_the_controller_and_no_debug_text() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "Connection reset by peer (os error 104)",
        );
        let status = tonic::Status::from_error(Box::new(io));
        assert!(
            status.to_string().contains("source:"),
            "tonic's own text: {status}"
        );
        let e = Error::from(status).at_controller("https://127.0.0.1:7443/");
        let text = e.to_string();
        assert_eq!(
            text,
            "lost the connection to the controller at https://127.0.0.1:7443: connection reset by peer; check that cutover-controller still runs there and is reachable, then run the command again"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn a_status_the_controller_sent_is_its_message() {
        let e = Error::from(tonic::Status::not_found("no rollout 9"));
        assert_eq!(e.to_string(), "no rollout 9");
        let e = Error::from(tonic::Status::unavailable("host \"h1\" is offline"));
        assert_eq!(
            e.at_controller("https://c").to_string(),
            "host \"h1\" is offline"
        );
    }

    #[test]
    fn a_tls_refusal_says_what_it_means_and_its_cause() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Wrapper(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        assert_eq!(
            reason(&e),
            "the controller's certificate is not signed by the CA we trust (check the CA file) (invalid peer certificate: UnknownIssuer)"
        );
    }

    #[test]
    fn interrupted_exits_130() {
        assert_eq!(Error::Interrupted { id: 3 }.exit_code(), 130);
    }
}
