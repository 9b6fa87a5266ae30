//! The Stratus control plane: HTTP API → app layer → store, with the orchestrator running
//! beside it. [`start`] brings it all up on a data directory and returns a handle; `stratus
//! serve` and the tests both use it.
//!
//! The data directory holds `stratus.db` (SQLite state), `master.key` (encrypts credentials)
//! and, after the first start, `admin.token` (the first admin's API token, mode 0600).

pub mod app;
pub mod background;
pub mod blobs;
pub mod cluster;
pub mod crypto;
pub mod drivers;
pub mod http;
pub mod reconcile;
pub mod serve;
mod watch;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use stratus_store::SqliteStore;
use tokio::task::JoinHandle;
use tracing::info;

use crate::app::{App, AppSettings};
use crate::crypto::KeyRing;
use crate::drivers::{Drivers, LocalBase};

/// How to run the control plane.
#[derive(Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The URL instances use to reach the control plane; defaults to `http://<listen>`.
    pub public_url: Option<String>,
    pub boot_deadline: Duration,
    /// How long a terminating server's decommission scripts may take, all together, before the
    /// instance is destroyed anyway.
    pub decommission_timeout: Duration,
    pub reconcile_interval: Duration,
    /// Run the orchestrator (off only for benchmarks that measure the API alone).
    pub reconcile: bool,
    /// How to run the local cloud's instance init (`stratus instance-init`): program and
    /// leading arguments. `None`: this control plane opens no local clouds.
    pub instance_init: Option<Vec<std::ffi::OsString>>,
    /// The agent local instances run: a binary on this host and its arguments.
    pub instance_agent: Option<stratus_local::init::AgentSpec>,
    /// On the fake cloud, play the agent (record boot scripts as runs, move servers on). Off,
    /// fake servers wait in `booting` for a real or test agent to enrol, like on other clouds.
    pub simulate_agents: bool,
    /// The largest artifact object accepted.
    pub artifact_max: u64,
    /// A PostgreSQL URL to keep the state in (several replicas share it); `None`: SQLite in
    /// the data directory.
    pub store_url: Option<String>,
    /// Where artifact bytes live: an `s3://` URL (see `blobs::S3Location`); `None`: the data
    /// directory's `artifacts/`.
    pub artifacts: Option<String>,
    /// An S3 access key (id, secret) for `artifacts` instead of the environment's AWS
    /// credentials (when embedding the control plane; `stratus serve` takes the environment).
    pub artifacts_key: Option<(String, String)>,
    /// A CA certificate (PEM) agents trust for the public URL besides the system's (it goes into
    /// each instance's user-data).
    pub agent_ca_pem: Option<String>,
    /// The API listeners' connection limits (head timeout, connections per client and in
    /// total; see [`serve`]).
    pub limits: serve::Limits,
    /// Agent sessions held at once (one per agent credential; see `app::hub::Hub`).
    pub max_agent_sessions: usize,
    /// On clouds that do not sign instance identities, an enrolling agent's connection must
    /// come from one of its instance's addresses (the cloud's private or public IP). Off when
    /// agents reach the control plane through a proxy or NAT (`stratus serve
    /// --agents-behind-proxy`).
    pub agent_source_check: bool,
    /// Certificates (PEM) whose keys sign instance-identity documents on clouds the control
    /// plane does not sign for (AWS publishes one per region). When any are given, an agent on
    /// such a cloud enrols only with a document signed (RSA-SHA256, the metadata service's
    /// `instance-identity/signature`) by one of them.
    pub identity_certificates: Vec<String>,
    /// The in-memory clouds of the `fake` driver, by cloud name. Each control plane has its
    /// own unless the caller gives several the same map: replicas in one process then see one
    /// fake cloud, as replicas of a real deployment see one real cloud.
    pub fake_clouds: drivers::FakeClouds,
    /// Tests only: hold the operation driver before a step (the restart tests kill the control
    /// plane exactly there).
    pub operation_gate: Option<app::operations::StepGate>,
    /// Wraps each cloud driver when it is made (tests and benchmarks count calls or play a
    /// throttled cloud with `stratus_cloud::counting` / `throttling`).
    pub wrap_driver: Option<drivers::WrapDriver>,
}

/// Shown without secrets: the store URL's password and the S3 secret are redacted.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("store_url", &self.store_url.as_deref().map(stratus_store::redact_url))
            .field("artifacts", &self.artifacts)
            .field(
                "artifacts_key",
                &self
                    .artifacts_key
                    .as_ref()
                    .map(|(id, _)| format!("{id} (secret hidden)")),
            )
            .field("simulate_agents", &self.simulate_agents)
            .field("limits", &self.limits)
            .field("max_agent_sessions", &self.max_agent_sessions)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            public_url: None,
            boot_deadline: Duration::from_secs(120),
            decommission_timeout: Duration::from_secs(120),
            reconcile_interval: Duration::from_secs(1),
            reconcile: true,
            instance_init: None,
            instance_agent: None,
            simulate_agents: true,
            artifact_max: stratus_types::artifact::OBJECT_MAX_DEFAULT,
            store_url: None,
            artifacts: None,
            artifacts_key: None,
            agent_ca_pem: None,
            limits: serve::Limits::default(),
            max_agent_sessions: app::gateway::MAX_SESSIONS_DEFAULT,
            agent_source_check: true,
            identity_certificates: vec![],
            fake_clouds: drivers::FakeClouds::default(),
            operation_gate: None,
            wrap_driver: None,
        }
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct Running {
    /// Base URL of the API server (`http://127.0.0.1:7400`).
    pub url: String,
    pub addr: SocketAddr,
    pub app: Arc<App>,
    /// Where the first admin's token was written (exists after the first start).
    pub admin_token_file: PathBuf,
    /// Set only on the start that created the admin.
    pub created_admin: bool,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stop serving and reconciling (state stays on disk).
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }

    /// Wait until the server task ends (it does not, unless it fails).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        if let Some(t) = self.tasks.pop() {
            t.await.context("the API server task failed")?;
        }
        Ok(())
    }
}

pub const ADMIN_TOKEN_FILE: &str = "admin.token";

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only when the file is created; tighten a file that was already there.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")
}

/// Create the data directory owner-only (it holds the key, the token and the state). An
/// existing directory is never re-moded (it might be shared); a loose one gets a warning.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    }
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "the data directory is readable by others; chmod 700 it");
    }
    Ok(())
}

/// The configured store: PostgreSQL when a URL is given (and this process a replica of a
/// cluster), else SQLite in the data directory.
async fn open_store(config: &Config) -> anyhow::Result<(Arc<dyn stratus_store::Datastore>, cluster::Cluster)> {
    let hub = app::hub::Hub::new(config.max_agent_sessions);
    Ok(match &config.store_url {
        Some(url) => {
            let shown = stratus_store::redact_url(url);
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                anyhow::bail!(
                    "the store URL {shown} is not a postgres:// URL (without one, the state is kept in SQLite in the data directory)"
                );
            }
            let store = stratus_store::PostgresStore::connect(url, 16)
                .await
                .with_context(|| format!("cannot open the PostgreSQL store {shown}"))?;
            let pg = store.cluster();
            info!(store = %shown, replica = pg.replica(), "state in PostgreSQL");
            (Arc::new(store), cluster::Cluster::postgres(pg, hub))
        }
        None => {
            let db = config.data_dir.join("stratus.db");
            let store = SqliteStore::open(&db)
                .await
                .with_context(|| format!("cannot open the database {}", db.display()))?;
            (Arc::new(store), cluster::Cluster::single(hub))
        }
    })
}

/// The artifact backend: an S3 bucket when configured, else the data directory.
async fn open_blobs(config: &Config) -> anyhow::Result<blobs::Blobs> {
    let Some(url) = &config.artifacts else {
        return blobs::Blobs::local(&config.data_dir.join("artifacts"), config.artifact_max)
            .context("cannot open the artifact store");
    };
    let loc = blobs::S3Location::parse(url).map_err(|e| anyhow::anyhow!("--artifacts: {e}"))?;
    let key = config
        .artifacts_key
        .as_ref()
        .map(|(id, secret)| (id.as_str(), secret.as_str()));
    let b = blobs::Blobs::s3_with(&loc, config.artifact_max, key)
        .with_context(|| format!("cannot open the artifact store {url}"))?;
    b.check()
        .await
        .with_context(|| format!("the artifact store {url} does not answer (credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the other usual AWS sources)"))?;
    info!(artifacts = %url, "artifacts in S3");
    Ok(b)
}

/// Open state, create the first admin if needed, bind, and start serving and reconciling.
pub async fn start(mut config: Config) -> anyhow::Result<Running> {
    prepare_data_dir(&config.data_dir)?;
    // One spelling of the data directory: local clouds derive their host names from it and
    // compare mount points with absolute paths.
    config.data_dir = config
        .data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", config.data_dir.display()))?;
    let keys = Arc::new(KeyRing::load_or_create(&config.data_dir.join("master.key"))?);
    let (inner, cluster) = open_store(&config).await?;
    let servers_changed = watch::ServerChanges::default();
    let (changes, _) = tokio::sync::broadcast::channel(1024);
    let store: Arc<dyn stratus_store::Datastore> =
        Arc::new(watch::Watched::new(inner, servers_changed.clone(), changes.clone()));
    let token_file = config.data_dir.join(ADMIN_TOKEN_FILE);
    let created_admin = app::users::bootstrap_admin(&*store, |token| write_private(&token_file, token))
        .await
        .with_context(|| format!("cannot create the first admin (token file {})", token_file.display()))?;
    if created_admin {
        info!(path = %token_file.display(), "first start: created user admin; its API token is in this file");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let settings = AppSettings {
        public_url: config.public_url.clone().unwrap_or_else(|| url.clone()),
        public_url_given: config.public_url.is_some(),
        simulate_agents: config.simulate_agents,
        boot_deadline: config.boot_deadline,
        decommission_timeout: config.decommission_timeout,
        reconcile_interval: config.reconcile_interval,
        agent_ca_pem: config.agent_ca_pem.clone(),
        agent_source_check: config.agent_source_check,
        identity_certificates: app::agents::parse_certificates(&config.identity_certificates)
            .map_err(anyhow::Error::msg)?,
        operation_gate: config.operation_gate.clone(),
    };
    let app = Arc::new(App {
        store,
        keys: keys.clone(),
        drivers: Drivers::new(config.instance_init.clone().map(|init| LocalBase {
            data_dir: config.data_dir.clone(),
            init,
            agent: config.instance_agent.clone(),
        }))
        // The drivers open the credentials clouds name.
        .with_keys(keys.clone())
        .with_fake_clouds(config.fake_clouds.clone())
        .with_wrap(config.wrap_driver.clone()),
        poke: tokio::sync::watch::Sender::new(0),
        tasks: Default::default(),
        inventory: reconcile::inventory::Inventories::new(config.reconcile_interval),
        run_finished: tokio::sync::watch::Sender::new(0),
        settings,
        blobs: open_blobs(&config).await?,
        servers_changed,
        changes,
        drained_at: Default::default(),
        cluster,
        rollout_drivers: Default::default(),
    });
    let mut tasks = vec![];
    let router = http::router(app.clone());
    app.drivers.serve_on_gateways(router.clone(), addr, config.limits);
    if app.cluster.pg().is_some() {
        tasks.push(tokio::spawn(cluster::listen(app.clone())));
        tasks.push(tokio::spawn(cluster::elect(app.clone(), url.clone())));
    }
    if config.reconcile {
        // The orchestrator, the load-balancer sync and the rollouts (those a previous process
        // left running go on where they stand), while this process leads.
        tasks.push(tokio::spawn(cluster::supervise(app.clone())));
    }
    let server = tokio::spawn(serve::serve(listener, router, config.limits));
    info!(%url, data_dir = %config.data_dir.display(), "control plane ready");
    tasks.push(server);
    Ok(Running {
        url,
        addr,
        app,
        admin_token_file: token_file,
        created_admin,
        tasks,
    })
}

#[cfg(test)]
mod config_tests {
    #[test]
    fn debug_never_shows_secrets() {
        let mut c = super::Config::new("/tmp/x", "127.0.0.1:0".parse().expect("addr"));
        c.store_url = Some("postgres://u:db-pass-77@db/s".into());
        c.artifacts_key = Some(("AKIA1".into(), "s3-secret-88".into()));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("db-pass-77") && !shown.contains("s3-secret-88"),
            "{shown}"
        );
        assert!(shown.contains("AKIA1"), "{shown}");
    }
}
