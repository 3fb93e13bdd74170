//! ecsctl's view of the public API: the shared signed client (`ecs-client`)
//! built from the resolved profile, with `-v` request logging.

use anyhow::Context;
use ecs_client::{Client, Config, Reply, Trust};

use crate::config::Resolved;

pub use ecs_client::ApiError;

pub struct Api {
    client: Client,
}

impl Api {
    /// A client verifying the server against the system's roots plus the
    /// configured CA file. Plain HTTP only to a loopback address.
    pub fn new(cfg: Resolved, verbose: bool) -> anyhow::Result<Self> {
        let mut c = Config::new(cfg.endpoint, cfg.project_id, cfg.access_key, cfg.secret_key);
        c.token = cfg.token;
        c.user_agent = format!("ecsctl/{}", env!("CARGO_PKG_VERSION"));
        if verbose {
            c.observer = Some(std::sync::Arc::new(|method, path, status, request_id| {
                eprintln!("{method} {path} -> {status} (request {request_id})")
            }));
        }
        if let Some(f) = &cfg.ca_file {
            let pem = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            c.trust = Trust::SystemAnd(pem);
        }
        Ok(Api {
            client: Client::new(c)?,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Keeps an API error's type (main picks the exit code from it); other
    /// failures say what was being done.
    pub fn api_result<T>(
        &self,
        what: &str,
        r: Result<Reply<T>, ecs_client::Error>,
    ) -> anyhow::Result<Reply<T>> {
        match r {
            Ok(reply) => Ok(reply),
            Err(ecs_client::Error::Api(e)) => Err(anyhow::Error::new(*e)),
            Err(e) => Err(anyhow::Error::new(e).context(what.to_owned())),
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

/// Server-supplied text for one table cell or line: no control characters
/// at all (newlines included).
pub fn cell(s: &str) -> String {
    strip_controls(s).replace('\n', "\u{fffd}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let name = cell("web\u{1b}[2J\u{1b}]0;pwned\u{7}");
        let reason = cell("a\rb\u{9b}c\nd");
        assert!(!name.chars().any(char::is_control), "{name:?}");
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
        assert!(name.starts_with("web"));
        assert_eq!(strip_controls("ok\u{1b}[31m"), "ok\u{fffd}[31m");
        assert_eq!(strip_controls("two\nlines"), "two\nlines");
    }
}
