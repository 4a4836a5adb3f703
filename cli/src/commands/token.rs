//! `cutover token list` and `cutover token revoke`: the join tokens still
//! waiting to be used. The controller keeps only their SHA-256, so a
//! token is never shown again after `token create` printed it.

use cutover_core::views::JoinTokenView;
use cutover_proto::v1;

use super::rollout::decode;
use crate::client::ConnectArgs;
use crate::error::Result;
use crate::output::{self, Format};

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
