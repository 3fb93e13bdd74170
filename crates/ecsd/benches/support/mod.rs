//! Shared by the bench binaries: signed requests like the Huawei SDKs send.
#![allow(dead_code)]

/// Where and as whom to call.
pub struct Api {
    pub base: String,
    pub host: String,
    pub project: String,
    pub ak: String,
    pub sk: String,
}

impl Api {
    /// A signed request; returns (status, X-Request-Id, body).
    pub async fn call(
        &self,
        client: &reqwest::Client,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, String, Vec<u8>) {
        let date = chrono::Utc::now().format(ecs_sign::DATE_FORMAT).to_string();
        let mut headers = vec![
            ("Host".to_string(), self.host.clone()),
            ("X-Project-Id".to_string(), self.project.clone()),
            ("X-Sdk-Date".to_string(), date.clone()),
        ];
        if body.is_some() {
            headers.push((
                "Content-Type".into(),
                "application/json;charset=UTF-8".into(),
            ));
        }
        let bytes = body.unwrap_or_default();
        let auth = ecs_sign::sign(
            &self.ak,
            self.sk.as_bytes(),
            method,
            path,
            "",
            &headers,
            &bytes,
        )
        .unwrap();
        let mut req = client.request(method.parse().unwrap(), format!("{}{}", self.base, path));
        for (k, v) in headers.iter().filter(|(k, _)| k != "Host") {
            req = req.header(k, v);
        }
        let resp = req
            .header("Authorization", auth)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let rid = resp
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, rid, resp.bytes().await.unwrap().to_vec())
    }

    pub fn reset_body(ids: &[String], password: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "new_password": password,
            "servers": ids.iter().map(|i| serde_json::json!({"id": i})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }
}
