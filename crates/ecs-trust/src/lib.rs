//! Trust on the wire (contract §6), shared by `ecsd`, `ecs-agent` and `ecsctl`:
//!
//! - [`tls`]: rustls client configurations (system roots plus a CA file, a
//!   stored CA only, or a CA pin checked before anything is sent), and the
//!   kubeadm-style pin of a CA's public key.
//! - [`work`]: Ed25519 work envelopes that `ecsd` signs and agents verify,
//!   and the rotation of the work-signing key (a new key is endorsed by the
//!   old one).

pub mod tls;
pub mod work;

pub use tls::CaPin;
pub use work::{WorkError, WorkSigner, WorkVerifier};
