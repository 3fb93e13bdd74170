//! The agent's HTTP client for `ecsd`'s agent API.

use std::time::Duration;

use anyhow::{Context, bail};
use ecs_agent_proto as proto;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    credential: Option<SecretString>,
}

impl Client {
    pub fn new(http: reqwest::Client, endpoint: &str, credential: Option<SecretString>) -> Self {
        Client {
            http,
            base: format!("{}{}", endpoint.trim_end_matches('/'), proto::PREFIX),
            credential,
        }
    }

    /// A client with the timeouts agents use, trusting only `tls` (the
    /// control plane's CA, or a pinned verifier at enrollment). Without `tls`
    /// it can speak plain HTTP only (to a loopback endpoint).
    pub fn http(tls: Option<rustls::ClientConfig>) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(tls) = tls {
            b = b.use_preconfigured_tls(tls);
        }
        b.build().context("building the HTTP client")
    }

    /// A client trusting what enrollment recorded: the pinned CA only, or
    /// the system's roots plus a CA file; plain HTTP (loopback) otherwise.
    pub fn http_for(e: &crate::files::Enrollment) -> anyhow::Result<reqwest::Client> {
        let stored = match &e.ca_pem {
            Some(pem) => ecs_trust::tls::certs_from_pem(pem.as_bytes(), "the stored CA")?,
            None => Vec::new(),
        };
        let tls = if e.system_roots {
            Some(ecs_trust::tls::client_config(
                &ecs_trust::tls::Roots::SystemAnd(stored),
            )?)
        } else if !stored.is_empty() {
            Some(ecs_trust::tls::client_config(
                &ecs_trust::tls::Roots::Only(stored),
            )?)
        } else {
            None
        };
        Self::http(tls)
    }

    pub async fn rekey_challenge(&self, server_id: &str) -> anyhow::Result<proto::RekeyChallenge> {
        let resp = self
            .http
            .post(format!("{}/rekey-challenge", self.base))
            .timeout(Duration::from_secs(30))
            .json(&proto::RekeyChallengeRequest {
                server_id: server_id.to_owned(),
            })
            .send()
            .await
            .context("re-key challenge request")?;
        if !resp.status().is_success() {
            bail!("re-key challenge refused: {}", resp.status());
        }
        resp.json().await.context("re-key challenge response")
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credential {
            Some(c) => req.bearer_auth(c.expose_secret()),
            None => req,
        }
    }

    pub async fn enroll(
        &self,
        req: &proto::EnrollRequest,
    ) -> anyhow::Result<proto::EnrollResponse> {
        let resp = self
            .http
            .post(format!("{}/enroll", self.base))
            .timeout(Duration::from_secs(30))
            .json(req)
            .send()
            .await
            .context("enroll request")?;
        if !resp.status().is_success() {
            bail!(
                "enrollment refused: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        resp.json().await.context("enroll response")
    }

    /// Reports in; an older ecsd's 204 reads as the default answer.
    pub async fn heartbeat(
        &self,
        hb: &proto::HeartbeatRequest,
    ) -> anyhow::Result<proto::HeartbeatResponse> {
        let resp = self
            .auth(self.http.post(format!("{}/heartbeat", self.base)))
            .timeout(Duration::from_secs(30))
            .json(hb)
            .send()
            .await
            .context("heartbeat")?;
        if !resp.status().is_success() {
            bail!("heartbeat refused: {}", resp.status());
        }
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(proto::HeartbeatResponse::default());
        }
        resp.json().await.context("heartbeat answer")
    }

    /// Long-polls for work (a reset newer than `have`, or a power action),
    /// waiting up to `wait`. `power_only`: a stopped server's power driver.
    pub async fn work(
        &self,
        have: Option<&str>,
        wait: Duration,
        power_only: bool,
    ) -> anyhow::Result<Option<proto::Poll>> {
        let mut query = vec![("wait", wait.as_secs().to_string())];
        if let Some(h) = have {
            query.push(("have", h.to_owned()));
        }
        if power_only {
            query.push(("power_only", "true".to_owned()));
        }
        let resp = self
            .auth(self.http.get(format!("{}/work", self.base)))
            .query(&query)
            .timeout(wait + Duration::from_secs(15))
            .send()
            .await
            .context("work poll")?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(None),
            s if s.is_success() => Ok(Some(resp.json().await.context("work body")?)),
            s => bail!("work poll refused: {s}"),
        }
    }

    pub async fn power_ack(&self, ack: &proto::PowerAck) -> anyhow::Result<bool> {
        let resp = self
            .auth(self.http.post(format!("{}/power-ack", self.base)))
            .timeout(Duration::from_secs(30))
            .json(ack)
            .send()
            .await
            .context("power ack")?;
        if !resp.status().is_success() {
            bail!("power ack refused: {}", resp.status());
        }
        Ok(resp
            .json::<proto::AckResponse>()
            .await
            .context("power ack body")?
            .recorded)
    }

    /// Acknowledges an outcome and, as `ack.then_poll` asks, long-polls for
    /// work in the same call (waiting up to its `wait_secs`). The answer's
    /// `work` is absent from an ecsd that does not poll after an ack.
    pub async fn ack_and_poll(
        &self,
        ack: &proto::AckRequest,
    ) -> anyhow::Result<proto::AckResponse> {
        let wait = ack.then_poll.as_ref().map_or(0, |p| p.wait_secs);
        let resp = self
            .auth(self.http.post(format!("{}/ack", self.base)))
            .timeout(Duration::from_secs(30 + wait))
            .json(ack)
            .send()
            .await
            .context("ack")?;
        if !resp.status().is_success() {
            bail!("ack refused: {}", resp.status());
        }
        resp.json::<proto::AckResponse>().await.context("ack body")
    }

    /// Acknowledges an outcome: whether ecsd recorded it.
    pub async fn ack(&self, ack: &proto::AckRequest) -> anyhow::Result<bool> {
        Ok(self.ack_and_poll(ack).await?.recorded)
    }
}
