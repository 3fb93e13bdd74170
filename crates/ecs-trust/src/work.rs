//! Signed, ordered work (contract §6): `ecsd` signs an envelope for every
//! work item; an agent accepts an item only if it is signed by the key it
//! trusts, addressed to its server, and newer than the last one it applied.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use ecs_agent_proto::{ApplyMode, Envelope, KeyEndorsement, SignedEnvelope, WorkKind};

/// Signed before an envelope's payload (domain separation).
pub const ENVELOPE_CONTEXT: &[u8] = b"ecs-work-envelope-v1\0";
/// Signed before a new key's bytes when the old key endorses it.
pub const ROTATION_CONTEXT: &[u8] = b"ecs-work-key-rotation-v1\0";

/// Why a work item is refused. The text goes back to ecsd as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkError {
    #[error("the work item is not signed by the control plane")]
    Unsigned,
    #[error("the work item's signature is malformed")]
    Malformed,
    #[error("the work item is signed by a key this agent does not trust")]
    UnknownKey,
    #[error("the work item's signature does not verify")]
    BadSignature,
    #[error("the work item is addressed to another server")]
    WrongServer,
    #[error("the work item does not match its signed envelope ({0})")]
    Mismatch(&'static str),
    #[error("the work item is not newer than the last one applied (sequence {seq} <= {last})")]
    Replayed { seq: u64, last: u64 },
    #[error("the key rotation is not endorsed by the trusted key")]
    BadRotation,
}

/// ecsd's work-signing key. Signs with aws-lc (assembly; about half the
/// time of `ed25519-dalek`'s portable code here, docs/benchmarks.md):
/// Ed25519 is deterministic, so the signatures are the same bytes; agents
/// verify them with `ed25519-dalek` ([`WorkVerifier`]).
pub struct WorkSigner {
    /// The RFC 8032 secret seed (zeroized on drop, as aws-lc clears the
    /// key pair's own memory when it frees it).
    seed: Zeroizing<[u8; 32]>,
    pair: Ed25519KeyPair,
}

impl WorkSigner {
    pub fn generate() -> WorkSigner {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(seed.as_mut());
        Self::from_seed(seed)
    }

    pub fn from_bytes(b: &[u8]) -> Option<WorkSigner> {
        let seed: [u8; 32] = b.try_into().ok()?;
        Some(Self::from_seed(Zeroizing::new(seed)))
    }

    fn from_seed(seed: Zeroizing<[u8; 32]>) -> WorkSigner {
        // Any 32 bytes are a seed; the public key is derived from it.
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
            .expect("aws-lc takes any 32-byte Ed25519 seed");
        WorkSigner { seed, pair }
    }

    /// The secret seed, to be stored encrypted.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.seed.clone()
    }

    /// The public key, base64.
    pub fn public(&self) -> String {
        B64.encode(self.pair.public_key().as_ref())
    }

    fn signature(&self, msg: &[u8]) -> String {
        B64.encode(self.pair.sign(msg).as_ref())
    }

    /// Signs an envelope.
    pub fn sign(&self, env: &Envelope) -> SignedEnvelope {
        let payload = serde_json::to_vec(env).expect("an envelope serializes");
        let mut msg = ENVELOPE_CONTEXT.to_vec();
        msg.extend_from_slice(&payload);
        SignedEnvelope {
            payload: B64.encode(&payload),
            signature: self.signature(&msg),
            key: self.public(),
        }
    }

    /// Endorses `next` (base64 public key) as this key's successor.
    pub fn endorse(&self, next: &str) -> Result<KeyEndorsement, WorkError> {
        let next_key = decode_key(next)?;
        let mut msg = ROTATION_CONTEXT.to_vec();
        msg.extend_from_slice(next_key.as_bytes());
        Ok(KeyEndorsement {
            public_key: next.to_owned(),
            endorsed_by: Some(self.public()),
            signature: Some(self.signature(&msg)),
        })
    }
}

fn decode_key(b64: &str) -> Result<VerifyingKey, WorkError> {
    let bytes = B64.decode(b64).map_err(|_| WorkError::Malformed)?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| WorkError::Malformed)?;
    VerifyingKey::from_bytes(&arr).map_err(|_| WorkError::Malformed)
}

fn decode_sig(b64: &str) -> Result<Signature, WorkError> {
    let bytes = B64.decode(b64).map_err(|_| WorkError::Malformed)?;
    let arr: [u8; 64] = bytes.try_into().map_err(|_| WorkError::Malformed)?;
    Ok(Signature::from_bytes(&arr))
}

/// SHA-256 (hex) of sealed bytes, as named in an envelope.
pub fn sealed_hash(sealed: &[u8]) -> String {
    hex::encode(Sha256::digest(sealed))
}

/// The key an agent trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkVerifier {
    key: VerifyingKey,
}

impl WorkVerifier {
    pub fn from_base64(b64: &str) -> Result<WorkVerifier, WorkError> {
        Ok(WorkVerifier {
            key: decode_key(b64)?,
        })
    }

    pub fn public(&self) -> String {
        B64.encode(self.key.as_bytes())
    }

    /// Follows a rotation chain (oldest first) from this key: every key after
    /// the trusted one must be endorsed by its predecessor. Returns the newest
    /// key, or this one when the chain does not go past it. A chain that does
    /// not contain the trusted key is refused.
    pub fn follow(&self, chain: &[KeyEndorsement]) -> Result<WorkVerifier, WorkError> {
        if chain.is_empty() {
            return Ok(self.clone());
        }
        let mine = self.public();
        let start = chain
            .iter()
            .position(|k| k.public_key == mine)
            .ok_or(WorkError::BadRotation)?;
        let mut current = self.clone();
        for next in &chain[start + 1..] {
            if next.endorsed_by.as_deref() != Some(current.public().as_str()) {
                return Err(WorkError::BadRotation);
            }
            let sig = decode_sig(next.signature.as_deref().ok_or(WorkError::BadRotation)?)?;
            let next_key = decode_key(&next.public_key)?;
            let mut msg = ROTATION_CONTEXT.to_vec();
            msg.extend_from_slice(next_key.as_bytes());
            current
                .key
                .verify(&msg, &sig)
                .map_err(|_| WorkError::BadRotation)?;
            current = WorkVerifier { key: next_key };
        }
        Ok(current)
    }

    /// Verifies the signature and returns the envelope it covers.
    pub fn open(&self, signed: Option<&SignedEnvelope>) -> Result<Envelope, WorkError> {
        let signed = signed.ok_or(WorkError::Unsigned)?;
        if decode_key(&signed.key)? != self.key {
            return Err(WorkError::UnknownKey);
        }
        let payload = B64
            .decode(&signed.payload)
            .map_err(|_| WorkError::Malformed)?;
        let sig = decode_sig(&signed.signature)?;
        let mut msg = ENVELOPE_CONTEXT.to_vec();
        msg.extend_from_slice(&payload);
        self.key
            .verify_strict(&msg, &sig)
            .map_err(|_| WorkError::BadSignature)?;
        serde_json::from_slice(&payload).map_err(|_| WorkError::Malformed)
    }
}

/// The agent's checks after the signature: addressed to this server, newer
/// than `last_seq` (the highest sequence applied for this kind of work).
pub fn check_order(env: &Envelope, server_id: &str, last_seq: u64) -> Result<(), WorkError> {
    if env.server_id != server_id {
        return Err(WorkError::WrongServer);
    }
    if env.seq <= last_seq {
        return Err(WorkError::Replayed {
            seq: env.seq,
            last: last_seq,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signer (aws-lc) makes the very signatures RFC 8032 defines:
    /// the RFC's test 2 (a one-byte message), and for a random seed the
    /// same bytes as `ed25519-dalek`, the agents' verifier, makes.
    #[test]
    fn the_signer_makes_rfc_8032_signatures() {
        let seed = hex::decode("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
            .unwrap();
        let signer = WorkSigner::from_bytes(&seed).unwrap();
        assert_eq!(
            B64.decode(signer.public()).unwrap(),
            hex::decode("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
                .unwrap()
        );
        assert_eq!(
            B64.decode(signer.signature(&[0x72])).unwrap(),
            hex::decode(
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
                 085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
            )
            .unwrap()
        );
        let other = WorkSigner::generate();
        assert_eq!(
            WorkSigner::from_bytes(&*other.to_bytes()).unwrap().public(),
            other.public()
        );
        let dalek = ed25519_dalek::SigningKey::from_bytes(&other.to_bytes());
        let msg = b"ecs-work-envelope-v1\0{}";
        assert_eq!(
            B64.decode(other.signature(msg)).unwrap(),
            ed25519_dalek::Signer::sign(&dalek, msg).to_bytes()
        );
    }

    fn env(seq: u64) -> Envelope {
        Envelope {
            server_id: "srv-a".into(),
            id: "req-1".into(),
            seq,
            kind: WorkKind::Reset,
            apply: ApplyMode::Boot,
            hard: false,
            sealed_sha256: Some(sealed_hash(b"sealed")),
            issued_at: "2026-11-27T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_signed_envelope_opens_with_its_key_only() {
        let signer = WorkSigner::generate();
        let other = WorkSigner::generate();
        let v = WorkVerifier::from_base64(&signer.public()).unwrap();
        let signed = signer.sign(&env(3));
        assert_eq!(v.open(Some(&signed)).unwrap(), env(3));
        assert_eq!(v.open(None), Err(WorkError::Unsigned));
        assert_eq!(
            v.open(Some(&other.sign(&env(3)))),
            Err(WorkError::UnknownKey)
        );
        // Another key's signature presented under the trusted key's name.
        let mut forged = other.sign(&env(3));
        forged.key = signer.public();
        assert_eq!(v.open(Some(&forged)), Err(WorkError::BadSignature));
    }

    #[test]
    fn a_changed_payload_does_not_verify() {
        let signer = WorkSigner::generate();
        let v = WorkVerifier::from_base64(&signer.public()).unwrap();
        let mut signed = signer.sign(&env(3));
        let other_payload = signer.sign(&env(4)).payload;
        signed.payload = other_payload;
        assert_eq!(v.open(Some(&signed)), Err(WorkError::BadSignature));
        signed.payload = "%%%".into();
        assert_eq!(v.open(Some(&signed)), Err(WorkError::Malformed));
    }

    #[test]
    fn order_and_address_are_checked() {
        assert_eq!(check_order(&env(5), "srv-a", 4), Ok(()));
        assert_eq!(
            check_order(&env(4), "srv-a", 4),
            Err(WorkError::Replayed { seq: 4, last: 4 })
        );
        assert_eq!(
            check_order(&env(3), "srv-a", 4),
            Err(WorkError::Replayed { seq: 3, last: 4 })
        );
        assert_eq!(
            check_order(&env(9), "srv-b", 0),
            Err(WorkError::WrongServer)
        );
    }

    #[test]
    fn rotation_follows_endorsements_only() {
        let k0 = WorkSigner::generate();
        let k1 = WorkSigner::generate();
        let k2 = WorkSigner::generate();
        let v0 = WorkVerifier::from_base64(&k0.public()).unwrap();
        let first = KeyEndorsement {
            public_key: k0.public(),
            endorsed_by: None,
            signature: None,
        };
        let chain = vec![
            first.clone(),
            k0.endorse(&k1.public()).unwrap(),
            k1.endorse(&k2.public()).unwrap(),
        ];
        assert_eq!(v0.follow(&chain).unwrap().public(), k2.public());
        // An agent already on k1 follows to k2 too.
        let v1 = WorkVerifier::from_base64(&k1.public()).unwrap();
        assert_eq!(v1.follow(&chain).unwrap().public(), k2.public());
        assert_eq!(v0.follow(&[]).unwrap(), v0);
        // A key endorsed by a stranger is refused.
        let stranger = WorkSigner::generate();
        let bad = vec![first.clone(), stranger.endorse(&k1.public()).unwrap()];
        assert_eq!(v0.follow(&bad), Err(WorkError::BadRotation));
        // A forged "endorsed_by" with someone else's signature is refused.
        let mut forged = stranger.endorse(&k1.public()).unwrap();
        forged.endorsed_by = Some(k0.public());
        assert_eq!(v0.follow(&[first, forged]), Err(WorkError::BadRotation));
        // A chain without the trusted key is refused.
        let unrelated = vec![KeyEndorsement {
            public_key: k2.public(),
            endorsed_by: None,
            signature: None,
        }];
        assert_eq!(v0.follow(&unrelated), Err(WorkError::BadRotation));
    }

    #[test]
    fn signer_round_trips_through_bytes() {
        let k = WorkSigner::generate();
        let again = WorkSigner::from_bytes(k.to_bytes().as_ref()).unwrap();
        assert_eq!(again.public(), k.public());
        assert!(WorkSigner::from_bytes(&[1, 2, 3]).is_none());
    }
}
