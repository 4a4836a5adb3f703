//! `cutover channel set|list|default`: the names that point at releases
//! (`stable`, `rc`) and which one is the fleet's default.

use cutover_core::views::ChannelView;
use cutover_proto::v1;

use crate::client::ConnectArgs;
use crate::error::{Error, Result};
use crate::output::{self, Format};

pub async fn set(c: &ConnectArgs, name: &str, version: &str, out: Format) -> Result<()> {
    c.operator()
        .await?
        .set_channel(v1::SetChannelRequest {
            name: name.into(),
            version: version.into(),
        })
        .await?;
    if out == Format::Json {
        return print_channel(c, name).await;
    }
    println!("channel {name} -> {version}");
    Ok(())
}

/// The channel as the controller now has it (`-o json` of `channel set`
/// and `channel default`).
async fn print_channel(c: &ConnectArgs, name: &str) -> Result<()> {
    let channel = channels(c)
        .await?
        .into_iter()
        .find(|ch| ch.name == name)
        .ok_or_else(|| {
            Error::Rpc(format!(
                "the controller lists no channel {name:?} after setting it"
            ))
        })?;
    output::json(&channel);
    Ok(())
}

pub async fn default(c: &ConnectArgs, name: &str, out: Format) -> Result<()> {
    c.operator()
        .await?
        .set_default_channel(v1::ChannelName { name: name.into() })
        .await?;
    if out == Format::Json {
        return print_channel(c, name).await;
    }
    println!("default channel is now {name}");
    Ok(())
}

pub async fn channels(c: &ConnectArgs) -> Result<Vec<ChannelView>> {
    let list = c
        .operator()
        .await?
        .list_channels(v1::Empty {})
        .await?
        .into_inner();
    Ok(list.channels.into_iter().map(Into::into).collect())
}

pub async fn list(c: &ConnectArgs, out: Format) -> Result<()> {
    let channels = channels(c).await?;
    if out == Format::Json {
        output::json(&channels);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = channels
        .iter()
        .map(|ch| {
            vec![
                ch.name.clone(),
                ch.version.clone(),
                if ch.is_default {
                    "yes".into()
                } else {
                    String::new()
                },
                output::when(ch.updated_at),
            ]
        })
        .collect();
    output::table(&["CHANNEL", "VERSION", "DEFAULT", "UPDATED"], &rows);
    Ok(())
}
