//! `cutover token create|list|revoke`: one-time join tokens for new hosts.
//! The controller keeps only their SHA-256, so a token is never shown
//! again after `token create` printed it.

use std::time::Duration;

use cutover_core::views::{from_ms, JoinTokenView};
use cutover_proto::v1;

use super::rollout::decode;
use crate::client::ConnectArgs;
use crate::doc::{self, results::TokenMade};
use crate::error::Result;
use crate::output::{self, Format};

/// A one-time join token for `host` from the controller (`token create`,
/// and the demo's agents).
pub async fn new_token(
    client: &mut cutover_proto::OperatorClient<tonic::transport::Channel>,
    host: &str,
    ttl: Duration,
    replace: bool,
) -> Result<v1::CreateTokenResponse> {
    Ok(client
        .create_token(v1::CreateTokenRequest {
            host: host.into(),
            ttl_s: ttl.as_secs().max(1),
            replace,
        })
        .await?
        .into_inner())
}

pub async fn create(
    c: &ConnectArgs,
    host: &str,
    ttl: Duration,
    replace: bool,
    out: Format,
) -> Result<()> {
    let r = new_token(&mut c.operator().await?, host, ttl, replace).await?;
    if out == Format::Json {
        output::json(&TokenMade {
            host,
            token: &r.token,
            expires_at: doc::at(r.expires_at_ms),
            replaces: replace,
        });
    } else {
        let expires = output::when(from_ms(r.expires_at_ms));
        // The token alone on stdout, so that scripts can capture it.
        println!("{}", r.token);
        eprintln!("join token for host {host}, valid once until {expires}");
    }
    Ok(())
}

/// `cutover token list`: host, created, expires, whether it replaces.
pub async fn list(c: &ConnectArgs, out: Format) -> Result<()> {
    let doc = c
        .operator()
        .await?
        .list_tokens(v1::Empty {})
        .await?
        .into_inner();
    let tokens: Vec<JoinTokenView> = decode("join tokens", doc)?;
    if out == Format::Json {
        output::json(&tokens);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.host.clone(),
                output::when(t.created),
                output::when(t.expires),
                if t.replaces { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    output::table(&["HOST", "CREATED", "EXPIRES", "REPLACES"], &rows);
    Ok(())
}

/// `cutover token revoke HOST`: one line saying how many were dropped.
pub async fn revoke(c: &ConnectArgs, host: &str, out: Format) -> Result<()> {
    let r = c
        .operator()
        .await?
        .revoke_tokens(v1::HostRequest { host: host.into() })
        .await?
        .into_inner();
    if out == Format::Json {
        output::json(&crate::doc::results::TokensRevoked {
            host,
            revoked: r.revoked,
        });
        return Ok(());
    }
    let host = output::escape(host);
    match r.revoked {
        0 => println!("host {host} had no unused join tokens"),
        1 => println!("revoked 1 unused join token for host {host}"),
        n => println!("revoked {n} unused join tokens for host {host}"),
    }
    Ok(())
}
