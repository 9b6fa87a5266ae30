//! The driver factory: one [`CloudDriver`] per configured cloud, made on first use.
//!
//! A `local` cloud's host-side names (bridge `st-NET`, nftables table `stratus-NET`, cgroups,
//! namespaces) carry a tag derived from the data directory and the cloud's name, so a
//! restarted control plane finds its instances again and two data directories on one machine
//! never collide.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use stratus_cloud::CloudDriver;
use stratus_cloud::fake::FakeCloud;
use stratus_local::{LocalCloud, LocalConfig};
use stratus_store::Datastore;
use stratus_types::Name;
use stratus_types::cloud::{Cloud, DriverKind};
use stratus_types::template::MetadataTokens;
use tokio::sync::Mutex;

use crate::app::AppError;

/// The drivers this build can make; clouds using others are refused when they are declared.
#[cfg(not(feature = "ec2"))]
pub const AVAILABLE: &[DriverKind] = &[DriverKind::Fake, DriverKind::Local];
/// The drivers this build can make; clouds using others are refused when they are declared.
#[cfg(feature = "ec2")]
pub const AVAILABLE: &[DriverKind] = &[DriverKind::Fake, DriverKind::Local, DriverKind::Ec2];

/// A cloud's driver, made once on first use.
type DriverCell = tokio::sync::OnceCell<Arc<dyn CloudDriver>>;

/// The `fake` driver's clouds, by name: shared by the control planes given the same map.
pub type FakeClouds = Arc<std::sync::Mutex<HashMap<Name, Arc<FakeCloud>>>>;

/// Wraps each driver when it is made (tests and benchmarks: counting calls, a throttled cloud).
pub type WrapDriver = Arc<dyn Fn(&Name, Arc<dyn CloudDriver>) -> Arc<dyn CloudDriver> + Send + Sync>;

/// What the local driver needs from the control plane's configuration.
#[derive(Debug, Clone)]
pub struct LocalBase {
    pub data_dir: PathBuf,
    /// The instance init: program and leading arguments (`stratus instance-init`).
    pub init: Vec<OsString>,
    /// The agent installed into every instance (`stratus` with argument `agent`).
    pub agent: Option<stratus_local::init::AgentSpec>,
}

pub struct Drivers {
    /// One cell per cloud: the global map is locked only to find the cell, so opening one
    /// cloud (a local cloud sets up its network) never holds up the others.
    made: Mutex<HashMap<Name, Arc<DriverCell>>>,
    /// The subnets of the local clouds opened so far (two may not overlap on one host).
    subnets: std::sync::Mutex<HashMap<Name, ipnet::Ipv4Net>>,
    local: Option<LocalBase>,
    /// The API, served again on each local cloud's gateway address so its instances reach
    /// the control plane (set once the router exists), and the port to prefer.
    gateway_api: std::sync::OnceLock<(axum::Router, u16, bool, crate::serve::Limits)>,
    /// Per local cloud: the control plane's URL as its instances reach it, and the listener
    /// serving it (none when the main listener's wildcard address already covers the gateway).
    gateways: std::sync::Mutex<HashMap<Name, Gateway>>,
    /// Opens the credentials clouds name (an EC2 cloud's access key).
    keys: Option<Arc<crate::crypto::KeyRing>>,
    /// The fake clouds made or shared so far.
    fakes: FakeClouds,
    wrap: Option<WrapDriver>,
}

/// A local cloud's way to the control plane: the URL its instances use, and the listener
/// serving it (none when the main listener's wildcard address already covers the gateway).
type Gateway = (String, Option<tokio::task::JoinHandle<()>>);

impl std::fmt::Debug for Drivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drivers")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Drivers {
    /// `local: None` builds no local clouds (tests and benchmarks that use the fake only).
    pub fn new(local: Option<LocalBase>) -> Self {
        Self {
            made: Mutex::default(),
            subnets: std::sync::Mutex::default(),
            local,
            gateway_api: std::sync::OnceLock::new(),
            gateways: std::sync::Mutex::default(),
            keys: None,
            fakes: FakeClouds::default(),
            wrap: None,
        }
    }

    /// With every driver wrapped by `wrap` when it is made.
    pub fn with_wrap(mut self, wrap: Option<WrapDriver>) -> Self {
        self.wrap = wrap;
        self
    }

    /// With fake clouds shared with other control planes in this process.
    pub fn with_fake_clouds(mut self, fakes: FakeClouds) -> Self {
        self.fakes = fakes;
        self
    }

    /// With the key ring that opens credentials clouds name.
    pub fn with_keys(mut self, keys: Arc<crate::crypto::KeyRing>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Make the API reachable from every local cloud's instances, from now on: `listen` is
    /// the main listener. On a wildcard address it already covers each gateway (same port);
    /// otherwise `router` is served again on each gateway, on the same port when free.
    /// The gateway listeners keep the same connection `limits` as the main one.
    pub fn serve_on_gateways(&self, router: axum::Router, listen: std::net::SocketAddr, limits: crate::serve::Limits) {
        let _ = self
            .gateway_api
            .set((router, listen.port(), listen.ip().is_unspecified(), limits));
    }

    /// The control plane's URL as the instances of `cloud` reach it, when that differs from
    /// the public one (a local cloud's gateway address).
    pub fn instance_url(&self, cloud: &Name) -> Option<String> {
        let g = self.gateways.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.get(cloud).map(|(url, _)| url.clone())
    }

    async fn listen_on_gateway(&self, cloud: &Name, gateway: std::net::Ipv4Addr) -> Result<(), AppError> {
        let Some((router, port, wildcard, limits)) = self.gateway_api.get() else {
            return Ok(());
        };
        if *wildcard {
            self.gateways
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(cloud.clone(), (format!("http://{gateway}:{port}"), None));
            return Ok(());
        }
        let listener = match tokio::net::TcpListener::bind((gateway, *port)).await {
            Ok(l) => l,
            // The port is taken on that address (another control plane): any port will do,
            // the URL goes into each instance's user-data.
            Err(_) => tokio::net::TcpListener::bind((gateway, 0)).await.map_err(|e| {
                AppError::BadState(format!("cloud {cloud}: cannot listen on the gateway {gateway}: {e}"))
            })?,
        };
        let addr = listener.local_addr().map_err(|e| AppError::BadState(e.to_string()))?;
        let router = router.clone();
        let task = tokio::spawn(crate::serve::serve(listener, router, *limits));
        tracing::info!(%cloud, %addr, "control plane reachable from the cloud's instances");
        let old = self
            .gateways
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(cloud.clone(), (format!("http://{addr}"), Some(task)));
        if let Some((_, Some(t))) = old {
            t.abort();
        }
        Ok(())
    }

    /// The driver for a cloud, by the cloud's name.
    pub async fn for_cloud(&self, store: &dyn Datastore, cloud: &Name) -> Result<Arc<dyn CloudDriver>, AppError> {
        let cell = self.made.lock().await.entry(cloud.clone()).or_default().clone();
        // Two callers never open one cloud twice; a failed open is retried by the next caller.
        cell.get_or_try_init(|| async {
            let driver = self.make(store, cloud).await?;
            Ok(match &self.wrap {
                Some(wrap) => wrap(cloud, driver),
                None => driver,
            })
        })
        .await
        .cloned()
    }

    async fn make(&self, store: &dyn Datastore, cloud: &Name) -> Result<Arc<dyn CloudDriver>, AppError> {
        let c = crate::app::resolve::named::<Cloud>(store, cloud.as_str()).await?;
        match c.spec.driver {
            DriverKind::Fake => {
                let mut fakes = self.fakes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let fake = fakes.entry(cloud.clone()).or_insert_with(|| Arc::new(FakeCloud::new()));
                Ok(fake.clone())
            }
            DriverKind::Local => {
                let local = self.open_local(&c).await?;
                self.listen_on_gateway(cloud, local.network().gateway()).await?;
                Ok(Arc::new(local))
            }
            #[cfg(feature = "ec2")]
            DriverKind::Ec2 => self.open_ec2(store, &c).await,
            #[allow(unreachable_patterns)]
            other => Err(AppError::BadState(format!(
                "cloud {cloud} uses the {other:?} driver, which this build of Stratus does not include (build it with `--features ec2`)"
            ))),
        }
    }

    /// An EC2 cloud: its one region, its endpoint, and its access key (a Stratus credential
    /// `ID:SECRET`, or the environment's AWS sources).
    #[cfg(feature = "ec2")]
    async fn open_ec2(&self, store: &dyn Datastore, c: &Cloud) -> Result<Arc<dyn CloudDriver>, AppError> {
        let region = c
            .spec
            .regions
            .first()
            .map(|r| r.name.clone())
            .ok_or_else(|| AppError::BadState(format!("cloud {} has no region", c.spec.name)))?;
        let key = match c.spec.ec2.as_ref().and_then(|e| e.credential.as_ref()) {
            None => None,
            Some(cred) => {
                let keys = self
                    .keys
                    .as_ref()
                    .ok_or_else(|| AppError::BadState("no key ring to open credentials with".into()))?;
                let record =
                    crate::app::resolve::named::<stratus_types::credential::Credential>(store, cred.as_str()).await?;
                let sealed = store
                    .sealed(&record.id.to_string())
                    .await?
                    .ok_or_else(|| AppError::not_found("credential value", cred.as_str()))?;
                let secret = keys.open(&record.id.to_string(), &sealed)?;
                let (id, secret) = secret.expose().trim().split_once(':').ok_or_else(|| {
                    AppError::BadState(format!(
                        "credential {cred} of cloud {} is not ACCESS_KEY_ID:SECRET_ACCESS_KEY",
                        c.spec.name
                    ))
                })?;
                Some((id.to_string(), secret.to_string()))
            }
        };
        let cloud = stratus_ec2::Ec2Cloud::new(stratus_ec2::Ec2Config {
            endpoint: c.spec.endpoint.clone(),
            region,
            key,
        })
        .await;
        Ok(Arc::new(cloud))
    }

    async fn open_local(&self, c: &Cloud) -> Result<LocalCloud, AppError> {
        let base = self.local.as_ref().ok_or_else(|| {
            AppError::BadState(format!(
                "cloud {}: this control plane runs without local clouds",
                c.spec.name
            ))
        })?;
        let config = local_config(base, c);
        {
            let mut subnets = self.subnets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let clash = subnets.iter().find(|(name, net)| {
                **name != c.spec.name
                    && (net.contains(&config.subnet.network()) || config.subnet.contains(&net.network()))
            });
            if let Some((other, net)) = clash {
                return Err(AppError::BadState(format!(
                    "cloud {}: its subnet {} overlaps cloud {other}'s {net}; give one of them another [cloud.local] subnet",
                    c.spec.name, config.subnet
                )));
            }
            subnets.insert(c.spec.name.clone(), config.subnet);
        }
        LocalCloud::open(config)
            .await
            .map_err(|e| AppError::BadState(format!("cloud {}: {}", c.spec.name, crate::app::error_chain(&e))))
    }

    /// A cloud is being deleted (its record is the caller's to delete, once this succeeded):
    /// the driver removes what it made for it ([`CloudDriver::tear_down`]), and the factory
    /// forgets it (the cached driver, a fake cloud's instances, a local cloud's subnet claim
    /// and gateway listener). A cloud that cannot even be opened (a local cloud whose host
    /// lost root, broken settings) is purged by its names.
    pub async fn remove(&self, store: &dyn Datastore, cloud: &Name) -> Result<(), AppError> {
        match self.for_cloud(store, cloud).await {
            Ok(driver) => driver.tear_down().await.map_err(|source| AppError::Cloud {
                context: format!("removing cloud {cloud}"),
                source,
            })?,
            Err(e) => {
                tracing::warn!(%cloud, error = %e, "removing a cloud that cannot be opened");
                self.purge_unopened(store, cloud).await;
            }
        }
        self.forget(cloud).await;
        Ok(())
    }

    /// What a local cloud that cannot be opened left on the host, by its tag and state
    /// directory.
    async fn purge_unopened(&self, store: &dyn Datastore, cloud: &Name) {
        let Ok(c) = crate::app::resolve::named::<Cloud>(store, cloud.as_str()).await else {
            return;
        };
        if let (DriverKind::Local, Some(base)) = (c.spec.driver, &self.local) {
            let config = local_config(base, &c);
            stratus_local::purge::purge(&config.network, Some(&config.state_dir));
        }
    }

    async fn forget(&self, cloud: &Name) {
        self.made.lock().await.remove(cloud);
        self.fakes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(cloud);
        self.subnets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(cloud);
        let gone = self
            .gateways
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(cloud);
        if let Some((_, Some(task))) = gone {
            task.abort();
        }
    }
}

/// The tag in a local cloud's host-side names: stable for a data directory and cloud name.
pub fn network_tag(data_dir: &std::path::Path, cloud: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(data_dir.to_string_lossy().as_bytes());
    h.update([0]);
    h.update(cloud.as_bytes());
    format!("s{}", &hex::encode(h.finalize())[..7])
}

/// The local driver's settings for a declared cloud.
pub fn local_config(base: &LocalBase, c: &Cloud) -> LocalConfig {
    let settings = c.spec.local.clone().unwrap_or_default();
    let tag = network_tag(&base.data_dir, c.spec.name.as_str());
    let local = base.data_dir.join("local");
    LocalConfig {
        state_dir: local.join("clouds").join(c.spec.name.as_str()),
        images_dir: local.join("images"),
        network: tag,
        subnet: settings
            .subnet
            .unwrap_or_else(|| stratus_local::config::DEFAULT_SUBNET.parse().expect("default subnet")),
        address_pools: c
            .spec
            .address_pools
            .iter()
            .filter_map(|p| match p.cidr {
                ipnet::IpNet::V4(v4) => Some(v4),
                ipnet::IpNet::V6(_) => None,
            })
            .collect(),
        outbound_nat: settings.outbound_nat,
        // No setting recorded: a cloud from before it existed, which answered IMDSv1.
        metadata_tokens_required: settings.metadata_tokens == Some(MetadataTokens::Required),
        metadata_hop_limit: settings.metadata_hop_limit,
        init: base.init.clone(),
        stop_grace: Duration::from_secs(10),
        metadata: true,
        agent: base.agent.clone(),
    }
}
