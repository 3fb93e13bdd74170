//! A client of the public API that signs like the Huawei SDKs.

use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::config::Resolved;

/// An error answered by ecsd, in either of its two shapes.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub request_id: String,
    pub internal: Vec<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (HTTP {}, request {})",
            self.code, self.message, self.status, self.request_id
        )
    }
}

impl std::error::Error for ApiError {}

pub struct Api {
    http: reqwest::Client,
    cfg: Resolved,
    verbose: bool,
}

pub struct Reply {
    pub request_id: String,
    pub body: Value,
}

impl Api {
    /// A client verifying the server against the system's roots plus the
    /// configured CA file. Plain HTTP only to a loopback address.
    pub fn new(cfg: Resolved, verbose: bool) -> anyhow::Result<Self> {
        if cfg.endpoint.starts_with("http://") {
            anyhow::ensure!(
                ecs_trust::tls::is_loopback_http(&cfg.endpoint),
                "refusing plain HTTP to {}: passwords would cross the network in the clear (use https://)",
                cfg.endpoint
            );
        }
        let extra = match &cfg.ca_file {
            Some(f) => ecs_trust::tls::certs_from_file(f)?,
            None => Vec::new(),
        };
        let tls = ecs_trust::tls::client_config(&ecs_trust::tls::Roots::SystemAnd(extra))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .use_preconfigured_tls(tls)
            .build()
            .context("building the HTTP client")?;
        Ok(Api { http, cfg, verbose })
    }

    /// A signed call. `path` is relative to `/v1/{project_id}`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let path = format!("/v1/{}{}", self.cfg.project_id, path);
        let url = reqwest::Url::parse_with_params(&format!("{}{}", self.cfg.endpoint, path), query)
            .context("building the URL")?;
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let date = chrono::Utc::now().format(ecs_sign::DATE_FORMAT).to_string();
        let bytes = zeroize::Zeroizing::new(match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        });
        let mut headers = vec![
            ("Host".to_owned(), host),
            ("X-Project-Id".to_owned(), self.cfg.project_id.clone()),
            ("X-Sdk-Date".to_owned(), date),
            (
                "User-Agent".to_owned(),
                format!("ecsctl/{}", env!("CARGO_PKG_VERSION")),
            ),
        ];
        if body.is_some() {
            headers.push((
                "Content-Type".to_owned(),
                "application/json;charset=UTF-8".to_owned(),
            ));
        }
        let auth = ecs_sign::sign(
            &self.cfg.access_key,
            self.cfg.secret_key.expose_secret().as_bytes(),
            method,
            url.path(),
            url.query().unwrap_or(""),
            &headers,
            &bytes,
        )
        .context("signing the request")?;
        let mut req = self.http.request(method.parse()?, url.clone());
        for (k, v) in headers.iter().filter(|(k, _)| k != "Host") {
            req = req.header(k, v);
        }
        req = req.header("Authorization", auth);
        if body.is_some() {
            req = req.body(bytes.to_vec());
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {}", self.cfg.endpoint))?;
        let status = resp.status().as_u16();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if self.verbose {
            eprintln!("{method} {} -> {status} (request {request_id})", url.path());
        }
        // Server-supplied text reaches the terminal: no control characters.
        let text = strip_controls(&resp.text().await.unwrap_or_default());
        let mut body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        sanitize(&mut body);
        if status >= 400 {
            let (code, message) = match (&body["error_code"], &body["error_msg"], &body["error"]) {
                (Value::String(c), Value::String(m), _) => (c.clone(), m.clone()),
                (_, _, e) if e.is_object() => (
                    e["code"].as_str().unwrap_or("unknown").to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                ),
                _ => (status.to_string(), text.chars().take(300).collect()),
            };
            return Err(ApiError {
                status,
                code,
                message,
                request_id,
                internal: body["internalError"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            }
            .into());
        }
        Ok(Reply { request_id, body })
    }

    /// Every server of the project (pages of 1000, following `marker`).
    pub async fn all_servers(&self) -> anyhow::Result<Vec<Value>> {
        let mut out: Vec<Value> = Vec::new();
        loop {
            let mut q = vec![("limit", "1000".to_owned())];
            if let Some(last) = out.last() {
                q.push(("marker", last["id"].as_str().unwrap_or_default().to_owned()));
            }
            let page = self.call("GET", "/cloudservers/detail", &q, None).await?;
            let servers = page.body["servers"].as_array().cloned().unwrap_or_default();
            let done = servers.len() < 1000;
            out.extend(servers);
            if done {
                return Ok(out);
            }
        }
    }
}

/// Replaces terminal control characters (ESC, BEL, CR, C1 controls...) in
/// server-supplied text, so that a hostile server name or reason cannot
/// rewrite the operator's terminal.
pub fn strip_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// Strips control characters from every string in a JSON value.
pub fn sanitize(v: &mut Value) {
    match v {
        Value::String(s) if s.chars().any(char::is_control) => {
            *s = strip_controls(s).replace('\n', "\u{fffd}")
        }
        Value::Array(a) => a.iter_mut().for_each(sanitize),
        Value::Object(o) => o.values_mut().for_each(sanitize),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let mut v = serde_json::json!({
            "servers": [{"name": "web\u{1b}[2J\u{1b}]0;pwned\u{7}", "reason": "a\rb\u{9b}c"}],
            "n": 3
        });
        sanitize(&mut v);
        let name = v["servers"][0]["name"].as_str().unwrap();
        let reason = v["servers"][0]["reason"].as_str().unwrap();
        assert!(!name.chars().any(char::is_control), "{name:?}");
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
        assert!(name.starts_with("web"));
        assert_eq!(v["n"], 3);
        // JSON text itself: escapes are decoded first, then stripped.
        assert_eq!(strip_controls("ok\u{1b}[31m"), "ok\u{fffd}[31m");
    }
}
