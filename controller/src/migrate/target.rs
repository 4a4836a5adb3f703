//! A migration target: its connection string checked and shown without a
//! password, and a connection made with the password read from its file,
//! TLS verified against its CA, `application_name` saying who connects,
//! and the session's `lock_timeout` and `statement_timeout` set. Errors
//! name the database and its host:port, never the credentials.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::Client;

use crate::config::{DatabaseConfig, SslMode, MAX_URL_LEN};
use crate::error::{Error, Result};

/// The largest password file read.
pub const MAX_PASSWORD_BYTES: u64 = 4096;
/// How long a connection may take to be made.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a `databases.*.url` at config load: a connection string
/// `tokio-postgres` reads, of bounded length, naming a host and carrying
/// no password (that goes in `password_file`: a URL is read by whoever
/// reads the config, and so no error or log can ever show one). The
/// error never quotes the URL.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!(
            "{} bytes; at most {MAX_URL_LEN} are allowed",
            url.len()
        ));
    }
    // tokio-postgres's reason may quote a piece of the text (an option
    // name, a character), which could be a piece of a password.
    let config = tokio_postgres::Config::from_str(url).map_err(|_| {
        "not a PostgreSQL connection string (postgresql://user@host:port/db or host=… user=… dbname=…)".to_string()
    })?;
    if config.get_password().is_some() {
        return Err(
            "carries a password; take it out and put it in the file password_file names (mode 600)"
                .into(),
        );
    }
    if config.get_hosts().is_empty() {
        return Err("names no host (give host=… or postgresql://user@HOST/db)".into());
    }
    if config.get_ssl_mode() != tokio_postgres::config::SslMode::Prefer {
        return Err(
            "sets sslmode; TLS is set by the keys sslmode and ca_file of the table, not in the url: take it out"
                .into(),
        );
    }
    Ok(())
}

/// `host:port` of the connection string, as errors name the database.
pub fn address(url: &str) -> String {
    let Ok(config) = tokio_postgres::Config::from_str(url) else {
        return "an unreadable address".into();
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
        Some(Host::Tcp(h)) => format!("{h}:{port}"),
        Some(Host::Unix(p)) => format!("{}/.s.PGSQL.{port}", p.display()),
        None => format!("localhost:{port}"),
    }
}

/// What a connection says it is, as `pg_stat_activity` shows it (at most
/// 63 bytes, as PostgreSQL keeps).
pub fn application_name(controller: &str, database: &str) -> String {
    let mut name = format!("cutover-controller {controller} migrate {database}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// The one-line reason a PostgreSQL call failed: its message (and
/// SQLSTATE) for a database error, the error and its cause otherwise.
pub fn describe(e: &tokio_postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let s = cause.to_string();
                if !text.contains(&s) {
                    text.push_str(": ");
                    text.push_str(&s);
                }
                source = cause.source();
            }
            text
        }
    };
    cutover_core::views::bounded(&text.replace(['\n', '\r'], " "), 1024).into_owned()
}

/// Connects to `name` as `app` and sets the session's timeouts.
pub async fn connect(name: &str, db: &DatabaseConfig, app: &str) -> Result<Client> {
    let at = address(&db.url);
    let refused = |why: String| Error::Unavailable(format!("database {name:?} ({at}): {why}"));
    let mut config = tokio_postgres::Config::from_str(&db.url)
        .map_err(|_| refused("the configured url is not a connection string".into()))?;
    if let Some(file) = &db.password_file {
        config.password(read_password(file).map_err(refused)?);
    }
    config
        .application_name(app)
        .connect_timeout(CONNECT_TIMEOUT);
    let connecting = async {
        match db.sslmode {
            SslMode::Disable => {
                let (client, conn) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| refused(format!("cannot connect: {}", describe(&e))))?;
                spawn_connection(name, conn);
                Ok::<_, Error>(client)
            }
            SslMode::Require | SslMode::VerifyFull => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = tls_config(db).map_err(refused)?;
                let (client, conn) = config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                    .await
                    .map_err(|e| refused(format!("cannot connect: {}", describe(&e))))?;
                spawn_connection(name, conn);
                Ok(client)
            }
        }
    };
    let client = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| refused(format!("no connection within {CONNECT_TIMEOUT:?}")))??;
    client
        .batch_execute(&super::run::timeouts(db))
        .await
        .map_err(|e| refused(format!("cannot set its timeouts: {}", describe(&e))))?;
    Ok(client)
}

/// The password in `file`: private to the controller's user (and group),
/// at most [`MAX_PASSWORD_BYTES`], UTF-8, not empty; a trailing newline
/// dropped.
pub fn read_password(file: &std::path::Path) -> std::result::Result<String, String> {
    let f =
        std::fs::File::open(file).map_err(|e| format!("password_file {}: {e}", file.display()))?;
    private(&f, file)?;
    let bytes = cutover_core::fsutil::read_bounded(f, file, MAX_PASSWORD_BYTES)
        .map_err(|e| format!("password_file: {e}"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("password_file {}: not UTF-8", file.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!(
            "password_file {} is empty; write the role's password in it",
            file.display()
        ));
    }
    Ok(password.to_string())
}

/// Permission bits a password file may not have: writable by its group,
/// or any access by others.
const NOT_PRIVATE: u32 = 0o027;

/// Refuses a password file others could read or change.
fn private(f: &std::fs::File, path: &std::path::Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = f
        .metadata()
        .map_err(|e| format!("password_file {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & NOT_PRIVATE != 0 {
        return Err(format!(
            "password_file {} is open to others (mode {:03o}); make it private with `chmod 600 {}` (or 640 for a group the controller shares)",
            path.display(),
            mode & 0o777,
            path.display()
        ));
    }
    Ok(())
}

fn spawn_connection<S, T>(name: &str, conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
{
    let name = name.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(database = %name, error = %describe(&e), "database connection ended");
        }
    });
}

fn tls_config(db: &DatabaseConfig) -> std::result::Result<rustls::ClientConfig, String> {
    let ca = db
        .ca_file
        .as_ref()
        .ok_or_else(|| "TLS needs ca_file".to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in cutover_core::tls::read_certs(ca).map_err(|e| format!("ca_file: {e}"))? {
        roots
            .add(cert)
            .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(cutover_core::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_password_is_refused_without_quoting_it() {
        for url in [
            "postgresql://app:s3cret@db.example:5433/billing",
            "postgres://app@db/billing?sslmode=disable&password=s3cret",
            "postgres://app@db/billing?pass%77ord=s3cret",
            "host=db user=app password='s3 cret' dbname=billing",
            "host=db\npassword=s3cret",
        ] {
            let e = check_url(url).unwrap_err();
            assert!(
                e.contains("password_file") && !e.contains("s3"),
                "{url}: {e}"
            );
        }
        check_url("postgresql://app@127.0.0.1:5432/billing").unwrap();
        for tls in [
            "postgresql://app@db/b?sslmode=require",
            "host=db sslmode=disable",
        ] {
            assert!(
                check_url(tls)
                    .unwrap_err()
                    .contains("the keys sslmode and ca_file"),
                "{tls}"
            );
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_quoting_it() {
        let e = check_url("postgresql://app@db:notaport/x").unwrap_err();
        assert!(
            !e.contains("notaport") && e.contains("connection string"),
            "{e}"
        );
        assert!(check_url(&"x".repeat(MAX_URL_LEN + 1))
            .unwrap_err()
            .contains("bytes"));
    }

    #[test]
    fn a_password_file_open_to_others_is_refused_naming_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "secret\n").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o640, true),
            (0o400, true),
            (0o644, false),
            (0o660, false),
            (0o602, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let f = std::fs::File::open(&path).unwrap();
            let got = private(&f, &path);
            assert_eq!(got.is_ok(), ok, "{mode:o}: {got:?}");
            if let Err(e) = got {
                assert!(
                    e.contains("chmod 600") && e.contains(&format!("{mode:03o}")),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn the_address_is_host_and_port() {
        assert_eq!(address("postgresql://app@10.0.0.1:6543/b"), "10.0.0.1:6543");
        assert_eq!(address("host=db user=x"), "db:5432");
    }

    #[test]
    fn the_application_name_fits_what_postgresql_keeps() {
        assert_eq!(
            application_name("ctl", "billing"),
            "cutover-controller ctl migrate billing"
        );
        assert!(application_name(&"h".repeat(100), "billing").len() <= 63);
    }
}
