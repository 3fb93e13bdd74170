//! ecsd's work-signing key (contract §6): Ed25519, stored sealed under the
//! master key so replicas share it, rotated by endorsing a new key with the
//! old one. Every work item an agent receives is an envelope signed by it.

use chrono::Utc;
use ecs_agent_proto as proto;
use ecs_trust::work::{WorkSigner, sealed_hash};

use crate::secrets::MasterKey;
use crate::store::{PowerKind, PowerWork, Store, StoreError, StoredWorkKey, Work};

#[derive(Debug, thiserror::Error)]
pub enum WorkKeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored work-signing key {0} does not decrypt under the master key")]
    Sealed(String),
}

/// The current signing key and the chain of keys agents follow to it.
pub struct WorkKeys {
    signer: WorkSigner,
    chain: Vec<proto::KeyEndorsement>,
}

fn owner(public: &str) -> String {
    format!("work-key:{public}")
}

fn stored(master: &MasterKey, signer: &WorkSigner, e: &proto::KeyEndorsement) -> StoredWorkKey {
    StoredWorkKey {
        public_key: signer.public(),
        secret_sealed: master.encrypt(&owner(&signer.public()), signer.to_bytes().as_ref()),
        endorsed_by: e.endorsed_by.clone(),
        signature: e.signature.clone(),
        created: Utc::now(),
    }
}

impl WorkKeys {
    /// Loads the keys, creating the first one if there is none.
    pub async fn load_or_create(
        store: &dyn Store,
        master: &MasterKey,
    ) -> Result<WorkKeys, WorkKeyError> {
        if store.work_keys().await?.is_empty() {
            let signer = WorkSigner::generate();
            let first = proto::KeyEndorsement {
                public_key: signer.public(),
                endorsed_by: None,
                signature: None,
            };
            // Another replica may have won the race; then load its key.
            store
                .add_work_key(stored(master, &signer, &first), true)
                .await?;
        }
        Self::load(store, master).await
    }

    async fn load(store: &dyn Store, master: &MasterKey) -> Result<WorkKeys, WorkKeyError> {
        let keys = store.work_keys().await?;
        let newest = keys.last().expect("at least one key exists");
        let seed = master
            .decrypt(&owner(&newest.public_key), &newest.secret_sealed)
            .map_err(|_| WorkKeyError::Sealed(newest.public_key.clone()))?;
        let signer = WorkSigner::from_bytes(&seed)
            .ok_or_else(|| WorkKeyError::Sealed(newest.public_key.clone()))?;
        let chain = keys
            .iter()
            .map(|k| proto::KeyEndorsement {
                public_key: k.public_key.clone(),
                endorsed_by: k.endorsed_by.clone(),
                signature: k.signature.clone(),
            })
            .collect();
        Ok(WorkKeys { signer, chain })
    }

    /// Makes a new key endorsed by the current one; returns its public key.
    /// Running servers pick it up when restarted (or another replica starts).
    pub async fn rotate(store: &dyn Store, master: &MasterKey) -> Result<String, WorkKeyError> {
        let current = Self::load_or_create(store, master).await?;
        let next = WorkSigner::generate();
        let endorsement = current
            .signer
            .endorse(&next.public())
            .expect("a fresh key is well-formed");
        store
            .add_work_key(stored(master, &next, &endorsement), false)
            .await?;
        Ok(next.public())
    }

    /// The public key agents must trust now.
    pub fn public(&self) -> String {
        self.signer.public()
    }

    /// Every key, oldest first, each endorsed by the one before.
    pub fn chain(&self) -> &[proto::KeyEndorsement] {
        &self.chain
    }

    /// The signed envelope of a reset for one server.
    pub fn sign_reset(&self, server_id: &str, w: &Work) -> proto::SignedEnvelope {
        self.signer.sign(&proto::Envelope {
            server_id: server_id.to_owned(),
            id: w.request_id.clone(),
            seq: w.seq,
            kind: proto::WorkKind::Reset,
            apply: if w.apply_now {
                proto::ApplyMode::Now
            } else {
                proto::ApplyMode::Boot
            },
            hard: false,
            sealed_sha256: Some(sealed_hash(&w.sealed)),
            issued_at: crate::store::fmt_time(Utc::now()),
        })
    }

    /// The signed envelope of a power action for one server.
    pub fn sign_power(&self, server_id: &str, p: &PowerWork) -> proto::SignedEnvelope {
        self.signer.sign(&proto::Envelope {
            server_id: server_id.to_owned(),
            id: p.sub_job_id.clone(),
            seq: p.seq,
            kind: match p.kind {
                PowerKind::Start => proto::WorkKind::Start,
                PowerKind::Stop => proto::WorkKind::Stop,
                PowerKind::Reboot => proto::WorkKind::Reboot,
            },
            apply: proto::ApplyMode::Now,
            hard: p.hard,
            sealed_sha256: None,
            issued_at: crate::store::fmt_time(Utc::now()),
        })
    }
}
