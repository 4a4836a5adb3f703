//! Artifacts fetched from the controller: the `Source` the install
//! pipeline reads from, over the controller's `Fetch` call.

use std::sync::Arc;

use cutover_proto::v1;
use cutover_proto::AgentClient;

use crate::error::Result;
use crate::link::dial::{status_text, Dialer};
use crate::link::identity::Identity;
use crate::Config;

/// Artifacts come from the controller's `Fetch`, on a fresh connection per
/// attempt so a restarted controller is simply dialled again.
pub struct ControllerSource(Arc<Dialer>);

impl ControllerSource {
    /// A source for `config`'s controller, dialled as `identity`.
    pub fn new(config: &Config, identity: Identity) -> Result<ControllerSource> {
        Ok(ControllerSource(Arc::new(Dialer::new(config, identity)?)))
    }

    /// A source dialled through the session's own dialer (so a renewed
    /// identity is used at once).
    pub fn over(dialer: Arc<Dialer>) -> ControllerSource {
        ControllerSource(dialer)
    }
}

impl crate::install::fetch::Source for ControllerSource {
    fn open<'a>(
        &'a self,
        sha256: &'a cutover_core::Sha256Digest,
        offset: u64,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = std::result::Result<crate::install::fetch::Chunks, String>,
                > + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            let channel = self.0.channel().await.map_err(|e| e.to_string())?;
            let mut client = AgentClient::new(channel)
                .max_decoding_message_size(cutover_proto::MAX_MESSAGE_BYTES);
            let stream = client
                .fetch(v1::FetchRequest {
                    sha256: sha256.to_hex(),
                    offset,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            use futures::StreamExt;
            let chunks = stream.map(|r| r.map(|c| c.data).map_err(|s| status_text(&s)));
            Ok(Box::pin(chunks) as crate::install::fetch::Chunks)
        })
    }
}
