//! The archive's raw headers, read through [`cutover_core::tar_headers`]
//! (which bounds every GNU long name and link and PAX record before it is
//! read), with its refusals as the extractor's errors.

use cutover_core::tar_headers::ExtensionError;
pub(super) use cutover_core::tar_headers::{Extension, Member, Pending, MAX_NAME_BYTES};

use super::ExtractError;

impl From<ExtensionError> for ExtractError {
    fn from(e: ExtensionError) -> Self {
        match e {
            ExtensionError::Refused {
                offset,
                kind,
                problem,
            } => ExtractError::Header {
                offset,
                kind,
                problem,
            },
            ExtensionError::Unreadable { source, .. } => ExtractError::Corrupt(source),
        }
    }
}
