//! The fleet simulator: N virtual servers in one process, each with its own
//! key, root file system (`etc/passwd`, `etc/shadow`, `etc/login.defs`) and
//! boot id, all running the same [`Agent`] code as a real server. A
//! simulated restart writes a new boot id and restarts that server's agent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::agent::{Agent, BootSource, Options, PowerControl, PowerEvent};
use crate::client::Client;
use crate::files::StateDir;

/// How to build a fleet.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub endpoint: String,
    /// Needed only for servers not yet enrolled.
    pub token: Option<secrecy::SecretString>,
    /// Whom to trust while enrolling (the CA pin, a CA file, or plain loopback HTTP).
    pub trust: crate::agent::EnrollTrust,
    pub root_base: PathBuf,
    pub linux: usize,
    pub windows: usize,
    pub prefix: String,
    pub poll: Duration,
    pub heartbeat: Duration,
}

/// One virtual server, as listed in `<root_base>/fleet.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SimServer {
    pub name: String,
    pub server_id: String,
    pub os_type: String,
    pub root: PathBuf,
}

struct Running {
    server: SimServer,
    opts: Options,
    /// The agent, while the server is on.
    task: Option<JoinHandle<()>>,
    /// The virtual BMC, while the server is off: it waits for `start`.
    bmc: Option<JoinHandle<()>>,
}

/// A running fleet.
pub struct Fleet {
    http: reqwest::Client,
    servers: Mutex<BTreeMap<String, Running>>,
    events: tokio::sync::mpsc::UnboundedSender<PowerEvent>,
    controller: Mutex<Option<JoinHandle<()>>>,
}

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";
const SHADOW: &str = "root:!:20000:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\n";
const LOGIN_DEFS: &str = "# simulated server\nENCRYPT_METHOD SHA512\n";

/// A simulated Windows server keeps its Administrator hash in the same kind
/// of file, so that the same agent code applies and tests can verify it.
const SHADOW_WINDOWS: &str = "Administrator:!:20000:0:99999:7:::\n";

fn prepare_root(root: &Path, os: &str) -> anyhow::Result<()> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    let shadow = if os == "Windows" {
        SHADOW_WINDOWS
    } else {
        SHADOW
    };
    for (name, content, mode) in [
        ("passwd", PASSWD, 0o644),
        ("shadow", shadow, 0o640),
        ("login.defs", LOGIN_DEFS, 0o644),
    ] {
        let p = etc.join(name);
        if !p.exists() {
            std::fs::write(&p, content)?;
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        }
    }
    let boot = root.join("boot_id");
    if !boot.exists() {
        std::fs::write(&boot, uuid::Uuid::new_v4().to_string())?;
    }
    let machine = etc.join("machine-id");
    if !machine.exists() {
        std::fs::write(&machine, uuid::Uuid::new_v4().simple().to_string())?;
    }
    Ok(())
}

impl Fleet {
    /// Prepares, enrolls (where needed) and starts every virtual server.
    pub async fn start(spec: FleetSpec) -> anyhow::Result<Arc<Fleet>> {
        let mut names = Vec::new();
        for i in 0..spec.linux {
            names.push((format!("{}linux-{:04}", spec.prefix, i + 1), "Linux"));
        }
        for i in 0..spec.windows {
            names.push((format!("{}windows-{:04}", spec.prefix, i + 1), "Windows"));
        }
        let (events, mut event_rx) = tokio::sync::mpsc::unbounded_channel::<PowerEvent>();
        // Enroll with bounded concurrency.
        let sem = Arc::new(tokio::sync::Semaphore::new(32));
        let mut jobs = Vec::new();
        for (name, os) in names {
            let (spec, sem, events) = (spec.clone(), sem.clone(), events.clone());
            jobs.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.expect("semaphore open");
                let root = spec.root_base.join(&name);
                prepare_root(&root, os)?;
                let state_dir = root.join("var/lib/ecs-agent");
                let state = StateDir(state_dir.clone());
                let server_id = match state.load_enrollment()? {
                    // Enrolled before signed work: enroll again (proving the old key).
                    Some(e) if !e.work_key.is_empty() => e.server_id,
                    _ => {
                        let token = spec
                            .token
                            .as_ref()
                            .context("an enrollment token is needed")?;
                        let machine_id = std::fs::read_to_string(root.join("etc/machine-id"))?;
                        crate::agent::enroll(crate::agent::EnrollParams {
                            endpoint: &spec.endpoint,
                            token,
                            trust: spec.trust.clone(),
                            state_dir: &state_dir,
                            machine_id: machine_id.trim(),
                            hostname: &name,
                            os_type: os,
                        })
                        .await
                        .with_context(|| format!("enrolling {name}"))?
                        .server_id
                    }
                };
                let opts = Options {
                    power: PowerControl::Simulated {
                        name: name.clone(),
                        events: events.clone(),
                    },
                    root: root.clone(),
                    state_dir,
                    boot: BootSource::File(root.join("boot_id")),
                    poll: spec.poll,
                    heartbeat: spec.heartbeat,
                    endpoint: Some(spec.endpoint.clone()),
                };
                anyhow::Ok(Running {
                    server: SimServer {
                        name,
                        server_id,
                        os_type: os.to_owned(),
                        root,
                    },
                    opts,
                    task: None,
                    bmc: None,
                })
            }));
        }
        let mut servers = BTreeMap::new();
        for j in jobs {
            let r = j.await.context("enrollment task")??;
            servers.insert(r.server.name.clone(), r);
        }
        // Every simulated server enrolled with the same control plane: one
        // client trusting its CA serves them all.
        let http = match servers.values().next() {
            Some(r) => crate::client::Client::http_for(
                &StateDir(r.opts.state_dir.clone())
                    .load_enrollment()?
                    .context("a simulated server's enrollment is gone")?,
            )?,
            None => crate::client::Client::http(None)?,
        };
        let fleet = Arc::new(Fleet {
            http,
            servers: Mutex::new(servers),
            events,
            controller: Mutex::new(None),
        });
        // The "hypervisor": carries out the power actions the agents accepted.
        let weak = Arc::downgrade(&fleet);
        let controller = tokio::spawn(async move {
            while let Some(ev) = event_rx.recv().await {
                let Some(fleet) = weak.upgrade() else { break };
                let result = match ev.action.as_str() {
                    "reboot" => fleet.restart(&ev.name).await,
                    "stop" => fleet.power_off(&ev.name).await,
                    "start" => fleet.power_on(&ev.name).await,
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    tracing::error!(server = %ev.name, error = %format!("{e:#}"), "simulated power action failed");
                }
            }
        });
        *fleet.controller.lock().expect("fleet lock") = Some(controller);
        for n in &fleet.names() {
            fleet.start_agent(n)?;
        }
        let list = fleet.list();
        crate::files::write_private(
            &spec.root_base.join("fleet.json"),
            &serde_json::to_vec_pretty(&list)?,
        )?;
        Ok(fleet)
    }

    /// Runs `f` on one server's entry, under the fleet lock.
    fn with_server<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Running) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let mut servers = self.servers.lock().expect("fleet lock");
        let r = servers
            .get_mut(name)
            .with_context(|| format!("no simulated server {name}"))?;
        f(r)
    }

    fn names(&self) -> Vec<String> {
        self.servers
            .lock()
            .expect("fleet lock")
            .keys()
            .cloned()
            .collect()
    }

    fn start_agent(&self, name: &str) -> anyhow::Result<()> {
        self.with_server(name, |r| {
            // Its own HTTP client, as a real server's agent has: one connection
            // per agent (a shared pool would open extra ones under load).
            let agent = Agent::load_own(r.opts.clone())?;
            let label = name.to_owned();
            r.task = Some(tokio::spawn(async move {
                if let Err(e) = agent.run().await {
                    tracing::error!(server = %label, error = %format!("{e:#}"), "simulated agent stopped");
                }
            }));
            Ok(())
        })
    }

    /// The servers, by name.
    pub fn list(&self) -> Vec<SimServer> {
        self.servers
            .lock()
            .expect("fleet lock")
            .values()
            .map(|r| r.server.clone())
            .collect()
    }

    /// Restarts one virtual server: its agent stops as on power loss, the
    /// server gets a new boot id, and the agent starts again.
    pub async fn restart(&self, name: &str) -> anyhow::Result<()> {
        self.restart_many(&[name.to_owned()]).await
    }

    /// Restarts every virtual server at once.
    pub async fn restart_all(&self) -> anyhow::Result<()> {
        self.restart_many(&self.names()).await
    }

    async fn restart_many(&self, names: &[String]) -> anyhow::Result<()> {
        let mut stopped = Vec::with_capacity(names.len());
        for name in names {
            if let Some(t) = self.with_server(name, |r| Ok(r.task.take()))? {
                t.abort();
                stopped.push(t);
            }
        }
        for t in stopped {
            let _ = t.await;
        }
        for name in names {
            let root = self.with_server(name, |r| Ok(r.server.root.clone()))?;
            std::fs::write(root.join("boot_id"), uuid::Uuid::new_v4().to_string())?;
            self.start_agent(name)?;
        }
        Ok(())
    }

    /// Powers a virtual server off: its agent stops and a virtual BMC waits
    /// for a `start` action with the server's credential.
    pub async fn power_off(&self, name: &str) -> anyhow::Result<()> {
        let (task, client) = self.with_server(name, |r| {
            let state = StateDir(r.opts.state_dir.clone());
            let e = state.load_enrollment()?.context("not enrolled")?;
            let endpoint = r.opts.endpoint.clone().unwrap_or(e.endpoint);
            Ok((
                r.task.take(),
                Client::new(self.http.clone(), &endpoint, Some(e.credential)),
            ))
        })?;
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        let (events, label) = (self.events.clone(), name.to_owned());
        let bmc = tokio::spawn(async move {
            loop {
                match client.work(None, Duration::from_secs(25), true).await {
                    Ok(Some(ecs_agent_proto::Poll { power: Some(p), .. })) => {
                        let start = p.action == "start";
                        let ack = ecs_agent_proto::PowerAck {
                            job_id: p.job_id,
                            ok: start,
                            reason: (!start).then(|| "the server is powered off".to_owned()),
                        };
                        if client.power_ack(&ack).await.is_ok() && start {
                            let _ = events.send(PowerEvent {
                                name: label.clone(),
                                action: "start".into(),
                            });
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        });
        self.with_server(name, |r| {
            r.bmc = Some(bmc);
            Ok(())
        })
    }

    /// Powers a virtual server on: a new boot id and its agent starts.
    pub async fn power_on(&self, name: &str) -> anyhow::Result<()> {
        if let Some(b) = self.with_server(name, |r| Ok(r.bmc.take()))? {
            b.abort();
        }
        self.restart_many(&[name.to_owned()]).await
    }

    /// Stops every agent and virtual BMC.
    pub fn stop(&self) {
        for r in self.servers.lock().expect("fleet lock").values_mut() {
            for t in [r.task.take(), r.bmc.take()].into_iter().flatten() {
                t.abort();
            }
        }
        if let Some(c) = self.controller.lock().expect("fleet lock").take() {
            c.abort();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}
