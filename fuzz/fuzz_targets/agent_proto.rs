//! The agent protocol: decoding of every `ecs-agent-proto` message from
//! arbitrary bytes, and `ecs-trust`'s work-envelope verification.
//!
//! Inputs starting with a byte other than `\0` are a JSON body: every message
//! type decodes it (never a panic); what decodes re-serializes to a fixed
//! point; a decoded work item or power action goes through the agent's
//! checks (rotation chain, signature, order), and anything that verifies must
//! be one of the envelopes the trusted key really signed (none are in the
//! input unless copied from a genuine one).
//!
//! Inputs starting with `\0` forge from genuine material: the rest of the
//! input is XORed into a genuine signed envelope (payload, signature, key)
//! or a genuine key endorsement; the result verifies only if nothing
//! changed.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ecs_agent_proto as proto;
use ecs_trust::work::{
    ApplyMode, Envelope, KeyEndorsement, SignedEnvelope, WorkKind, WorkSigner, WorkVerifier,
    check_order,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

struct Genuine {
    trusted: WorkVerifier,
    /// The trusted key's endorsement of the next key.
    endorsement: KeyEndorsement,
    next_public: String,
    /// Envelopes signed by the trusted key and by the next one.
    signed: Vec<SignedEnvelope>,
}

static GENUINE: LazyLock<Genuine> = LazyLock::new(|| {
    let first = WorkSigner::from_bytes(&[7; 32]).expect("32 bytes");
    let next = WorkSigner::from_bytes(&[8; 32]).expect("32 bytes");
    let env = |seq| Envelope {
        server_id: "srv-a".into(),
        id: "req-1".into(),
        seq,
        kind: WorkKind::Reset,
        apply: ApplyMode::Boot,
        hard: false,
        sealed_sha256: Some("00".repeat(32)),
        issued_at: "2026-01-01T00:00:00Z".into(),
    };
    Genuine {
        trusted: WorkVerifier::from_base64(&first.public()).expect("valid key"),
        endorsement: first.endorse(&next.public()).expect("valid key"),
        next_public: next.public(),
        signed: vec![first.sign(&env(1)), next.sign(&env(2))],
    }
});

fn decoded(s: &SignedEnvelope) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    Some((
        B64.decode(&s.payload).ok()?,
        B64.decode(&s.signature).ok()?,
        B64.decode(&s.key).ok()?,
    ))
}

/// Decodes `data` as `T`; what decodes re-serializes to a fixed point.
fn roundtrip<T: Serialize + DeserializeOwned>(data: &[u8]) -> Option<T> {
    let t: T = serde_json::from_slice(data).ok()?;
    let once = serde_json::to_vec(&t).expect("serializes");
    let again: T = serde_json::from_slice(&once).expect("own output decodes");
    assert_eq!(
        serde_json::to_vec(&again).expect("serializes"),
        once,
        "not a fixed point"
    );
    Some(t)
}

/// The agent's checks on one work item: only genuine envelopes verify.
fn verify(envelope: Option<&SignedEnvelope>, keys: &[KeyEndorsement]) {
    let g = &*GENUINE;
    let Ok(verifier) = g.trusted.follow(keys) else {
        return;
    };
    let public = verifier.public();
    assert!(
        public == g.trusted.public() || public == g.next_public,
        "followed a rotation to a key the trusted key never endorsed"
    );
    if let Ok(env) = verifier.open(envelope) {
        let got = decoded(envelope.expect("opened")).expect("opened, so decodes");
        assert!(
            g.signed.iter().any(|s| decoded(s).as_ref() == Some(&got)),
            "a forged envelope verified: {env:?}"
        );
        let _ = check_order(&env, "srv-a", 0);
    }
}

fn xor(target: &mut [u8], mask: &mut impl Iterator<Item = u8>) {
    for b in target {
        *b ^= mask.next().unwrap_or(0);
    }
}

fuzz_target!(|data: &[u8]| {
    let g = &*GENUINE;
    if let [0, which, mask @ ..] = data {
        let mut mask = mask.iter().copied();
        if which % 2 == 0 {
            // A genuine envelope, altered.
            let genuine = &g.signed[0];
            let (mut payload, mut sig, mut key) = decoded(genuine).expect("genuine");
            xor(&mut payload, &mut mask);
            xor(&mut sig, &mut mask);
            xor(&mut key, &mut mask);
            let changed = Some((payload.clone(), sig.clone(), key.clone())) != decoded(genuine);
            let forged = SignedEnvelope {
                payload: B64.encode(&payload),
                signature: B64.encode(&sig),
                key: B64.encode(&key),
            };
            let opened = g.trusted.open(Some(&forged));
            assert_eq!(opened.is_ok(), !changed, "{opened:?}");
        } else {
            // A genuine rotation, altered.
            let mut next = B64.decode(&g.endorsement.public_key).expect("genuine");
            let mut sig = B64
                .decode(g.endorsement.signature.as_deref().expect("endorsed"))
                .expect("genuine");
            let (genuine_next, genuine_sig) = (next.clone(), sig.clone());
            xor(&mut next, &mut mask);
            xor(&mut sig, &mut mask);
            let changed = (&next, &sig) != (&genuine_next, &genuine_sig);
            let chain = [
                KeyEndorsement {
                    public_key: g.trusted.public(),
                    endorsed_by: None,
                    signature: None,
                },
                KeyEndorsement {
                    public_key: B64.encode(&next),
                    endorsed_by: g.endorsement.endorsed_by.clone(),
                    signature: Some(B64.encode(&sig)),
                },
            ];
            let followed = g.trusted.follow(&chain);
            assert_eq!(followed.is_ok(), !changed, "{followed:?}");
        }
        return;
    }

    // Responses the agent decodes.
    if let Some(poll) = roundtrip::<proto::Poll>(data) {
        if let Some(w) = &poll.reset {
            verify(w.envelope.as_ref(), &w.keys);
        }
        if let Some(p) = &poll.power {
            verify(p.envelope.as_ref(), &p.keys);
        }
    }
    if let Some(w) = roundtrip::<proto::Work>(data) {
        verify(w.envelope.as_ref(), &w.keys);
    }
    if let Some(p) = roundtrip::<proto::Power>(data) {
        verify(p.envelope.as_ref(), &p.keys);
    }
    if let Some(s) = roundtrip::<SignedEnvelope>(data) {
        verify(Some(&s), &[]);
    }
    if let Some(e) = roundtrip::<proto::EnrollResponse>(data) {
        let _ = g.trusted.follow(&e.work_keys);
    }
    roundtrip::<proto::RekeyChallenge>(data);
    roundtrip::<proto::AckResponse>(data);
    roundtrip::<proto::EnrollTokenResponse>(data);
    roundtrip::<KeyEndorsement>(data);
    if let Some(env) = roundtrip::<Envelope>(data) {
        let _ = check_order(&env, "srv-a", env.seq);
    }
    // Requests ecsd decodes.
    roundtrip::<proto::EnrollRequest>(data);
    roundtrip::<proto::RekeyChallengeRequest>(data);
    roundtrip::<proto::HeartbeatRequest>(data);
    roundtrip::<proto::AckRequest>(data);
    roundtrip::<proto::PowerAck>(data);
    roundtrip::<proto::EnrollTokenRequest>(data);
});
