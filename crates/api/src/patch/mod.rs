//! The three PATCH flavours kube-apiserver accepts besides apply: RFC 6902 JSON patch,
//! RFC 7386 JSON merge patch and Kubernetes strategic merge patch.
//!
//! Strategic merge patch is only served for built-in kinds: upstream answers a strategic patch on
//! a custom resource with 415 UnsupportedMediaType before any merging, which is the caller's job.

pub mod json;
pub mod merge;
pub mod strategic;

/// Why a patch could not be applied, carrying the HTTP semantics upstream uses.
///
/// - `BadRequest` → 400 BadRequest: the patch document itself is malformed (not decodable as a
///   JSON patch, a strategic directive with a bad format).
/// - `Invalid` → 422 Unprocessable: the patch is well-formed but does not apply to this object
///   (a JSON patch operation on a missing path, a failed `test`, lists of lists in a strategic
///   patch). Upstream builds this with `NewGenericServerResponse(422, ...)`: reason `Invalid`
///   with the text below as its message.
/// - `Internal` → 500 InternalError: strategic patch failures upstream reports as plain errors
///   (a list item without its merge key, an unknown `$patch` directive).
///
/// The texts are upstream's, byte for byte where clients are known to match on them (e.g.
/// "Unable to remove nonexistent key"), so some start with a capital.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

impl PatchError {
    pub fn http_code(&self) -> u16 {
        match self {
            PatchError::BadRequest(_) => 400,
            PatchError::Invalid(_) => 422,
            PatchError::Internal(_) => 500,
        }
    }
}
