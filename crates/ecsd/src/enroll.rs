//! Enrollment as a service: enrollment and re-key tokens, re-key
//! challenges, enrolling an agent and re-keying one. The agent API handlers,
//! `ecsd admin` and `serve --dev` all come here; only hashes of tokens,
//! credentials and challenge answers are stored.

use chrono::{DateTime, Utc};
use ecs_agent_proto as proto;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::Error;
use crate::secrets::{bearer_hash, new_bearer};
use crate::state::AppState;
use crate::store::{EnrollResult, Enrolled, Enrollment};

/// How long a re-key challenge can be answered.
const CHALLENGE_TTL_SECS: i64 = 300;
/// Most enrollments one token allows.
pub const MAX_TOKEN_USES: u32 = 100_000;
/// Longest token lifetime: 30 days.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 86_400;

/// The token as handed to operators: with the CA pin when serving HTTPS.
fn token_response(
    state: &AppState,
    token: &SecretString,
    project_id: &str,
    uses: u32,
    expires: DateTime<Utc>,
    server_id: Option<String>,
) -> proto::EnrollTokenResponse {
    let pin = state.ca_pin.get();
    proto::EnrollTokenResponse {
        token: token.expose_secret().to_owned(),
        project_id: project_id.to_owned(),
        uses,
        expires: crate::store::fmt_time(expires),
        ca_cert_hash: pin.map(|p| p.to_string()),
        join_token: pin.map(|p| format!("{}.{}", token.expose_secret(), p.hex())),
        server_id,
    }
}

/// Creates an enrollment token; only its hash is stored.
pub async fn issue_enroll_token(
    state: &AppState,
    project_id: &str,
    uses: u32,
    ttl_secs: u64,
) -> Result<proto::EnrollTokenResponse, Error> {
    let token = new_bearer("ecset_");
    let expires = Utc::now() + chrono::Duration::seconds(ttl_secs as i64);
    state
        .store
        .create_enroll_token(
            project_id,
            &bearer_hash(token.expose_secret()),
            expires,
            uses,
        )
        .await?;
    Ok(token_response(
        state, &token, project_id, uses, expires, None,
    ))
}

/// A token asked for through the API: defaults 1 use and one hour, within
/// [`MAX_TOKEN_USES`] and [`MAX_TOKEN_TTL_SECS`].
pub async fn requested_enroll_token(
    state: &AppState,
    project_id: &str,
    req: proto::EnrollTokenRequest,
) -> Result<proto::EnrollTokenResponse, Error> {
    let uses = req.uses.unwrap_or(1);
    let ttl = req.ttl_secs.unwrap_or(3600);
    if !(1..=MAX_TOKEN_USES).contains(&uses) || !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
        let field = if (1..=MAX_TOKEN_USES).contains(&uses) {
            "ttl_secs"
        } else {
            "uses"
        };
        return Err(Error::invalid(
            field,
            "Invalid request body: uses must be 1..100000 and ttl_secs 1..2592000.",
        ));
    }
    issue_enroll_token(state, project_id, uses, ttl).await
}

/// Creates a one-use token that re-keys one server (`ecsd admin
/// rekey-token-create`): for a machine that lost its agent key. `None` if
/// there is no such server.
pub async fn issue_rekey_token(
    state: &AppState,
    server_id: &str,
    ttl_secs: u64,
) -> Result<Option<proto::EnrollTokenResponse>, Error> {
    let token = new_bearer("ecsrk_");
    let expires = Utc::now() + chrono::Duration::seconds(ttl_secs as i64);
    let project = state
        .store
        .create_rekey_token(server_id, &bearer_hash(token.expose_secret()), expires)
        .await?;
    Ok(project.map(|p| token_response(state, &token, &p, 1, expires, Some(server_id.to_owned()))))
}

fn challenge_binding(challenge_id: &str) -> String {
    format!("rekey-challenge:{challenge_id}")
}

/// A random challenge sealed to the server's current agent key; only that
/// key's holder can answer it.
pub async fn rekey_challenge(
    state: &AppState,
    server_id: &str,
) -> Result<proto::RekeyChallenge, Error> {
    let server = state
        .store
        .servers_by_ids(&[server_id.to_owned()])
        .await?
        .pop()
        .ok_or(Error::NotEnrolled)?;
    let key = server
        .agent_public_key
        .as_deref()
        .and_then(|k| ecs_seal::PublicKey::from_bytes(k).ok())
        .ok_or(Error::NotEnrolled)?;
    let challenge_id = uuid::Uuid::new_v4().simple().to_string();
    let answer = new_bearer("");
    let sealed = ecs_seal::seal(&key, &server.id, &challenge_binding(&challenge_id), &answer)
        .map_err(|e| Error::internal("sealing a challenge", e))?;
    state
        .store
        .create_rekey_challenge(
            &challenge_id,
            &server.id,
            &bearer_hash(answer.expose_secret()),
            Utc::now() + chrono::Duration::seconds(CHALLENGE_TTL_SECS),
        )
        .await?;
    Ok(proto::RekeyChallenge {
        challenge_id,
        sealed: sealed.to_base64(),
    })
}

/// Checks what an agent sent; the enrollment to store, with the hash of
/// `credential`.
fn enrollment(req: &proto::EnrollRequest, credential: &SecretString) -> Result<Enrollment, Error> {
    let os_type = ecs_policy::OsType::parse(&req.os_type)
        .ok_or_else(|| Error::invalid("os_type", "os_type must be Linux or Windows."))?;
    let public_key = ecs_seal::PublicKey::from_base64(&req.public_key).map_err(|_| {
        Error::invalid(
            "public_key",
            "public_key must be a base64 X25519 public key.",
        )
    })?;
    let fields = [
        ("machine_id", &req.machine_id),
        ("hostname", &req.hostname),
        ("agent_version", &req.agent_version),
    ];
    if let Some((field, _)) = fields
        .iter()
        .find(|(_, f)| f.is_empty() || f.len() > 255 || f.chars().any(char::is_control))
    {
        return Err(Error::invalid(
            *field,
            "machine_id, hostname and agent_version must be 1..255 printable characters.",
        ));
    }
    Ok(Enrollment {
        machine_id: req.machine_id.clone(),
        hostname: req.hostname.clone(),
        os_type,
        public_key: public_key.to_bytes(),
        agent_version: req.agent_version.clone(),
        credential_hash: bearer_hash(credential.expose_secret()),
    })
}

/// Re-keys a server whose agent answered a challenge sealed to its old key.
async fn rekey_with_proof(
    state: &AppState,
    proof: &proto::RekeyProof,
    enrollment: Enrollment,
    now: DateTime<Utc>,
) -> Result<Enrolled, Error> {
    let refused = || {
        tracing::warn!(server_id = %proof.server_id, "re-key with a wrong or expired challenge answer");
        Error::BadProof
    };
    let (server_id, answer_hash) = state
        .store
        .take_rekey_challenge(&proof.challenge_id, now)
        .await?
        .ok_or_else(refused)?;
    let answered = bearer_hash(&proof.response);
    let matches =
        subtle_eq(answered.as_bytes(), answer_hash.as_bytes()) && server_id == proof.server_id;
    if !matches {
        return Err(refused());
    }
    state
        .store
        .rekey(&server_id, enrollment, now)
        .await?
        .ok_or_else(refused)
}

/// Enrolls an agent: with a token (enrollment or re-key), or re-keys it with
/// proof of its old key. Returns its server, a new credential and the
/// work-signing keys to trust.
pub async fn enroll(
    state: &AppState,
    req: proto::EnrollRequest,
) -> Result<proto::EnrollResponse, Error> {
    let credential = new_bearer("ecsac_");
    let enrollment = enrollment(&req, &credential)?;
    let now = Utc::now();
    let enrolled = match &req.rekey {
        Some(proof) => rekey_with_proof(state, proof, enrollment, now).await?,
        None => match state
            .store
            .enroll(
                &bearer_hash(&req.token),
                enrollment,
                now,
                state.config.duplicate_machine_id,
            )
            .await?
        {
            EnrollResult::Enrolled(e) => e,
            EnrollResult::BadToken => {
                tracing::warn!("enrollment with an invalid, expired or used-up token");
                return Err(Error::BadToken);
            }
            EnrollResult::DuplicateMachine { server_id } => {
                tracing::warn!(%server_id, "enrollment refused: the machine id is already enrolled (prove the old key or use a re-key token)");
                return Err(Error::DuplicateMachine { server_id });
            }
        },
    };
    let work_keys = state
        .work_keys()
        .await
        .map_err(|e| Error::internal("loading the work-signing key", e))?
        .chain()
        .to_vec();
    tracing::info!(server_id = %enrolled.server_id, re_enrolled = enrolled.re_enrolled, "agent enrolled");
    Ok(proto::EnrollResponse {
        server_id: enrolled.server_id,
        project_id: enrolled.project_id,
        credential: credential.expose_secret().to_owned(),
        work_keys,
    })
}

/// Compares two byte strings in time independent of where they differ.
fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> proto::EnrollRequest {
        serde_json::from_value(serde_json::json!({
            "token": "t",
            "machine_id": "m-1",
            "hostname": "web-1",
            "os_type": "Linux",
            "public_key": ecs_seal::generate_keypair().1.to_base64(),
            "agent_version": "1.0",
        }))
        .unwrap()
    }

    fn field(e: Error) -> String {
        match e {
            Error::Invalid { field, .. } => field,
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn an_enrollment_names_the_bad_field_and_stores_only_the_credential_hash() {
        let cred = new_bearer("ecsac_");
        let e = enrollment(&req(), &cred).unwrap();
        assert_eq!(e.credential_hash, bearer_hash(cred.expose_secret()));
        assert_ne!(e.credential_hash, cred.expose_secret());
        let mut r = req();
        r.os_type = "BeOS".into();
        assert_eq!(field(enrollment(&r, &cred).unwrap_err()), "os_type");
        let mut r = req();
        r.public_key = "not a key".into();
        assert_eq!(field(enrollment(&r, &cred).unwrap_err()), "public_key");
        let mut r = req();
        r.hostname = "a\nb".into();
        assert_eq!(field(enrollment(&r, &cred).unwrap_err()), "hostname");
        let mut r = req();
        r.agent_version = "v".repeat(256);
        assert_eq!(field(enrollment(&r, &cred).unwrap_err()), "agent_version");
        let mut r = req();
        r.machine_id = String::new();
        assert_eq!(field(enrollment(&r, &cred).unwrap_err()), "machine_id");
    }

    #[test]
    fn subtle_eq_compares_whole_strings() {
        assert!(subtle_eq(b"abc", b"abc"));
        assert!(!subtle_eq(b"abc", b"abd"));
        assert!(!subtle_eq(b"abc", b"abcd"));
    }
}
