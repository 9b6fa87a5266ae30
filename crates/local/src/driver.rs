//! [`LocalCloud`]: the `CloudDriver` for instances on this machine.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use chrono::Utc;
use stratus_cloud::{CapturedImage, CloudDriver, CloudError, Instance, InstanceState, LaunchRequest, USER_DATA_MAX};
use stratus_types::cloud::DriverKind;
use stratus_types::tag::Tag;
use stratus_types::template::FirewallRule;
use tokio::sync::Mutex;

use crate::cgroup::{self, Group};
use crate::image::ImageStore;
use crate::instance::{self as inst, Paths};
use crate::net::{Link, Network, mac_for};
use crate::record::{self, Desired, Record};
use crate::{LocalConfig, LocalError};

pub(crate) struct Shared {
    pub config: LocalConfig,
    pub net: Network,
    pub images: Arc<ImageStore>,
    pub layout: cgroup::Layout,
    pub records: RwLock<BTreeMap<String, Record>>,
    /// Held while choosing an instance id and address (the lease must be unique).
    alloc: Mutex<()>,
    /// Held while rewriting the NAT and anti-spoofing tables, and while pinning or unpinning a
    /// port ([`Shared::pin`]): a rewrite is built from a snapshot of the records and replaces
    /// the whole bridge table, so a pin must fall entirely before it (the record is then in the
    /// snapshot) or after it, never in between (the rewrite would drop the new port's elements
    /// and `iifname != @ports accept` would let everything from it through).
    nat: Mutex<()>,
    /// One lock per instance: lifecycle calls on one instance run one at a time.
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    metadata_addr: std::sync::OnceLock<SocketAddrV4>,
    /// Instances whose init is being started right now (reported `pending`).
    booting: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The local cloud driver. Dropping it stops its metadata service; instances keep running.
pub struct LocalCloud {
    shared: Arc<Shared>,
    imds: Option<tokio::task::JoinHandle<()>>,
    verifier: Option<crate::capability::Verifier>,
}

impl std::fmt::Debug for LocalCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCloud")
            .field("network", &self.shared.config.network)
            .field("subnet", &self.shared.config.subnet)
            .finish_non_exhaustive()
    }
}

impl Drop for LocalCloud {
    fn drop(&mut self) {
        if let Some(h) = self.imds.take() {
            h.abort();
        }
    }
}

impl LocalCloud {
    /// Set the cloud up on this host (bridge, NAT table, metadata service) and pick up the
    /// instances a previous run left.
    pub async fn open(config: LocalConfig) -> Result<Self, LocalError> {
        config.validate().map_err(LocalError::Config)?;
        if !rustix::process::geteuid().is_root() {
            return Err(LocalError::NotRoot);
        }
        let layout = cgroup::detect().map_err(|e| LocalError::setup("cgroups", e))?;
        inst::make_dir(&config.state_dir.join("instances")).map_err(|e| LocalError::setup("state directory", e))?;
        let images = ImageStore::shared(&config.images_dir).map_err(|e| LocalError::setup("image store", e))?;
        let net = Network {
            name: config.network.clone(),
            subnet: config.subnet,
            pools: config.address_pools.clone(),
            outbound_nat: config.outbound_nat,
        };
        net.ensure_bridge().await.map_err(|e| LocalError::setup("bridge", e))?;
        let records = record::load_all(&config.state_dir.join("instances"))
            .into_iter()
            .map(|(_, r)| (r.id.clone(), r))
            .collect();
        let shared = Arc::new(Shared {
            config,
            net,
            images,
            layout,
            records: RwLock::new(records),
            alloc: Mutex::new(()),
            nat: Mutex::new(()),
            locks: std::sync::Mutex::new(HashMap::new()),
            metadata_addr: std::sync::OnceLock::new(),
            booting: std::sync::Mutex::new(std::collections::HashSet::new()),
        });
        let (imds, verifier) = if shared.config.metadata {
            let (h, v) = start_metadata(&shared).await?;
            (Some(h), Some(v))
        } else {
            (None, None)
        };
        if let Err(e) = shared.apply_nat().await {
            if let Some(h) = &imds {
                h.abort();
            }
            return Err(LocalError::setup("nftables", e));
        }
        let n = shared.read().len();
        tracing::info!(network = %shared.config.network, instances = n, "local cloud ready");
        let verifier = verifier.map(crate::capability::Verifier);
        Ok(Self { shared, imds, verifier })
    }

    pub fn images(&self) -> &ImageStore {
        &self.shared.images
    }

    pub fn network(&self) -> &Network {
        &self.shared.net
    }

    /// The instance's network namespace name (for `ip netns exec`, as tests and tools do).
    pub fn netns(&self, id: &str) -> Option<String> {
        self.shared.read().get(id).map(|r| r.link.netns.clone())
    }

    /// The instance's directory (console log, upper layer).
    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.shared.dir(id)
    }

    /// Memory the instance's processes use now, in bytes (the cgroup's own count).
    pub fn memory_usage(&self, id: &str) -> Option<u64> {
        self.shared.group(id).memory_bytes()
    }

    /// Terminate every instance and remove the cloud's network (for `quickstart --down` and tests).
    pub async fn destroy_everything(&self) -> Result<(), CloudError> {
        let ids: Vec<String> = self.shared.read().keys().cloned().collect();
        for id in ids {
            self.terminate(&id).await?;
        }
        self.shared.net.remove().await.map_err(api)?;
        crate::purge::remove_cgroup_parents(&self.shared.config.network);
        Ok(())
    }

    /// [`LocalCloud::destroy_everything`], then the metadata service and the state directory
    /// (instance records, the identity key): nothing of the cloud is left on the host but the
    /// shared image store, whose images go with the image records that name them.
    async fn tear_down_all(&self) -> Result<(), CloudError> {
        self.destroy_everything().await?;
        if let Some(h) = &self.imds {
            h.abort();
        }
        let dir = &self.shared.config.state_dir;
        crate::purge::unmount_under(dir);
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(api(e)),
            _ => Ok(()),
        }
    }
}

impl LocalCloud {
    /// A retried launch: the instance exists. If it should run but its init is not up (the
    /// control plane died mid-launch), finish starting it.
    async fn resume(&self, rec: Record) -> Result<Instance, CloudError> {
        let s = &self.shared;
        let lock = s.lock_for(&rec.id);
        let _g = lock.lock().await;
        let rec = s.record(&rec.id)?;
        if rec.desired == Desired::Running && inst::init_pid(&s.group(&rec.id)).is_none() {
            s.boot(&rec).await.map_err(CloudError::StartFailed)?;
        }
        Ok(s.observe(&rec))
    }
}

fn api(e: impl std::error::Error + Send + Sync + 'static) -> CloudError {
    CloudError::Api(Box::new(e))
}

async fn start_metadata(
    shared: &Arc<Shared>,
) -> Result<(tokio::task::JoinHandle<()>, stratus_imds::IdentityVerifier), LocalError> {
    let key = stratus_imds::IdentityKey::load_or_create(&shared.config.state_dir.join("identity.key"))
        .map_err(|e| LocalError::setup("identity key", e))?;
    let verifier = key.verifier();
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((shared.net.gateway(), 0)))
        .await
        .map_err(|e| LocalError::setup("metadata service listener", e))?;
    let addr = match listener.local_addr() {
        Ok(SocketAddr::V4(a)) => a,
        other => {
            return Err(LocalError::setup(
                "metadata service listener",
                format!("unexpected address {other:?}"),
            ));
        }
    };
    let _ = shared.metadata_addr.set(addr);
    let source: Arc<dyn stratus_imds::MetadataSource> = shared.clone();
    let imds =
        Arc::new(stratus_imds::Imds::new(source, key).with_put_response_hop_limit(shared.config.metadata_hop_limit));
    let handle = tokio::spawn(async move {
        if let Err(e) = stratus_imds::serve(listener, imds, std::future::pending()).await {
            tracing::error!(error = %e, "metadata service stopped");
        }
    });
    Ok((handle, verifier))
}

impl Shared {
    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Record>> {
        self.records.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Record>> {
        self.records.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("instances").join(id)
    }

    fn paths(&self, id: &str) -> Paths {
        Paths { dir: self.dir(id) }
    }

    fn group(&self, id: &str) -> Group {
        Group::new(&self.layout, &self.config.network, id)
    }

    fn lock_for(&self, id: &str) -> Arc<Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry(id.to_string()).or_default().clone()
    }

    fn record(&self, id: &str) -> Result<Record, CloudError> {
        self.read()
            .get(id)
            .cloned()
            .ok_or_else(|| CloudError::NoSuchInstance(id.to_string()))
    }

    /// Change a record in memory and on disk.
    fn update(&self, id: &str, f: impl FnOnce(&mut Record)) -> Result<Record, CloudError> {
        let mut all = self.write();
        let rec = all
            .get_mut(id)
            .ok_or_else(|| CloudError::NoSuchInstance(id.to_string()))?;
        f(rec);
        rec.save(&self.dir(id)).map_err(api)?;
        Ok(rec.clone())
    }

    async fn apply_nat(&self) -> Result<(), crate::cmd::CommandError> {
        let _g = self.nat.lock().await;
        self.apply_nat_locked().await
    }

    /// Pin (`on`) or unpin the instance's port in the anti-spoofing table, serialised with the
    /// table rewrites by the `nat` lock (see its docs). Pin after the record is in `records`,
    /// unpin after it is gone: then any rewrite, before or after, agrees with the pin.
    async fn pin(&self, link: &Link, on: bool) -> Result<(), crate::cmd::CommandError> {
        let _g = self.nat.lock().await;
        self.net.pin(link, on).await
    }

    /// With `nat` held. One entry per public address even if records disagree (nft refuses a
    /// map with a key twice, which would lock the cloud out of its own NAT table).
    async fn apply_nat_locked(&self) -> Result<(), crate::cmd::CommandError> {
        let eips: BTreeMap<Ipv4Addr, Ipv4Addr> = self
            .read()
            .values()
            .filter_map(|r| r.public_ip.map(|p| (p, r.link.ip)))
            .collect();
        let eips: Vec<(Ipv4Addr, Ipv4Addr)> = eips.into_iter().collect();
        let links: Vec<Link> = self.read().values().map(|r| r.link.clone()).collect();
        self.net
            .apply_nat(self.metadata_addr.get().copied(), &eips, &links)
            .await
    }

    /// Point `ip` at `to` (or nowhere), taking it from whoever holds it, as one step: the
    /// records and the NAT table change under the NAT lock, so concurrent moves serialise.
    async fn move_address(&self, ip: Ipv4Addr, to: Option<&str>) -> Result<(), CloudError> {
        let _g = self.nat.lock().await;
        if let Some(id) = to {
            self.record(id)?;
        }
        let holders: Vec<String> = self
            .read()
            .values()
            .filter(|r| r.public_ip == Some(ip) && Some(r.id.as_str()) != to)
            .map(|r| r.id.clone())
            .collect();
        for h in &holders {
            self.update(h, |r| r.public_ip = None)?;
        }
        if let Some(id) = to {
            self.update(id, |r| r.public_ip = Some(ip))?;
        } else if holders.is_empty() {
            return Ok(());
        }
        self.apply_nat_locked().await.map_err(api)
    }

    /// The instance as the cloud reports it: desired state checked against its processes.
    fn observe(&self, rec: &Record) -> Instance {
        let group = self.group(&rec.id);
        let running = inst::init_pid(&group).is_some();
        let any = running || !group.pids().is_empty();
        let booting = self
            .booting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&rec.id);
        let (state, reason) = match (rec.desired, running, any) {
            (Desired::Running, true, _) => (InstanceState::Running, None),
            (Desired::Running, false, _) if booting => (InstanceState::Pending, None),
            (Desired::Running, false, _) => (
                InstanceState::Stopped,
                Some(
                    "the instance's processes are gone (init exited, was killed, or the host restarted); its console output tells more"
                        .to_string(),
                ),
            ),
            (Desired::Stopped, _, true) => (InstanceState::Stopping, None),
            (Desired::Stopped, _, false) => (InstanceState::Stopped, None),
        };
        Instance {
            id: rec.id.clone(),
            server: rec.server,
            state,
            state_reason: reason,
            private_ip: Some(IpAddr::V4(rec.link.ip)),
            public_ip: rec.public_ip.map(IpAddr::V4),
            tags: rec.tags.clone(),
            firewall: rec.firewall.clone(),
            launched_at: rec.launched_at,
        }
    }

    /// Bring every piece of the instance up (idempotent) and run its init.
    async fn boot(&self, rec: &Record) -> Result<(), String> {
        // `pending` from the first step: until init runs, a missing init is expected.
        let _booting = BootingGuard::new(self, &rec.id);
        let p = self.paths(&rec.id);
        let lower = self.images.rootfs(&rec.image).map_err(|e| e.to_string())?;
        inst::mount_root(&p, &lower).map_err(|e| e.to_string())?;
        // Before the veth can exist, on every way up (launch, start, a resumed launch): the
        // port is never up unpinned, even if an earlier pin was lost. `add element` is
        // idempotent.
        self.pin(&rec.link, true)
            .await
            .map_err(|e| format!("cannot pin the instance's addresses: {e}"))?;
        inst::prepare_network(&self.net, rec).await?;
        let group = self.group(&rec.id);
        group
            .create(inst::limits(rec))
            .map_err(|e| format!("cannot create the instance's cgroups: {e}"))?;
        if inst::init_pid(&group).is_some() {
            return Ok(());
        }
        let dirs = cgroup_dirs(&group);
        inst::spawn_init(&p, rec, &group, dirs, &self.config).await
    }

    fn set_booting(&self, id: &str, on: bool) {
        let mut b = self.booting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if on {
            b.insert(id.to_string());
        } else {
            b.remove(id);
        }
    }

    /// Remove every trace of the instance: processes, cgroups, mount, namespace, veth, files.
    async fn destroy(&self, rec: &Record) -> Result<(), CloudError> {
        let p = self.paths(&rec.id);
        inst::stop_processes(&self.group(&rec.id), std::time::Duration::ZERO).await;
        self.group(&rec.id).destroy().await.map_err(api)?;
        inst::unmount_root(&p).map_err(api)?;
        Network::detach(&rec.link).await.map_err(api)?;
        match std::fs::remove_dir_all(&p.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(api(e)),
        }
        Ok(())
    }
}

/// Marks an instance `pending` while it is being brought up, whatever way the start ends.
struct BootingGuard<'a> {
    shared: &'a Shared,
    id: String,
}

impl<'a> BootingGuard<'a> {
    fn new(shared: &'a Shared, id: &str) -> Self {
        shared.set_booting(id, true);
        Self {
            shared,
            id: id.to_string(),
        }
    }
}

impl Drop for BootingGuard<'_> {
    fn drop(&mut self) {
        self.shared.set_booting(&self.id, false);
    }
}

fn cgroup_dirs(group: &Group) -> Vec<PathBuf> {
    group.dirs().to_vec()
}

fn validate(req: &LaunchRequest) -> Result<(), CloudError> {
    if req.user_data.len() > USER_DATA_MAX {
        return Err(CloudError::UserDataTooLarge(req.user_data.len()));
    }
    let h = &req.hostname;
    let label_ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if !label_ok {
        return Err(CloudError::Invalid(format!(
            "hostname {:?} is not a DNS label (1-63 of a-z, 0-9 and '-', not starting or ending with '-')",
            stratus_types::name::truncate(h)
        )));
    }
    if req.size.cpus == 0 || req.size.memory.mib() < 16 {
        return Err(CloudError::Invalid(format!(
            "size {} needs at least 1 cpu and 16 MiB of memory",
            req.size.name
        )));
    }
    Ok(())
}

fn new_instance_id() -> String {
    let mut b = [0u8; 9];
    getrandom::fill(&mut b).expect("the OS random number generator works");
    let h = hex::encode(b);
    format!("i-{}", &h[..17])
}

#[async_trait]
impl CloudDriver for LocalCloud {
    fn kind(&self) -> DriverKind {
        DriverKind::Local
    }

    async fn launch(&self, req: LaunchRequest) -> Result<Instance, CloudError> {
        validate(&req)?;
        let s = &self.shared;
        if s.images.get(&req.native_image).is_none() {
            return Err(CloudError::NoSuchImage(req.native_image));
        }
        let rec = {
            let _g = s.alloc.lock().await;
            let existing = s.read().values().find(|r| r.server == req.server).cloned();
            if let Some(r) = existing {
                drop(_g);
                return self.resume(r).await;
            }
            let taken: std::collections::HashSet<Ipv4Addr> = s.read().values().map(|r| r.link.ip).collect();
            let ip = s
                .net
                .instance_addresses()
                .find(|a| !taken.contains(a))
                .ok_or_else(|| CloudError::Capacity(format!("subnet {} has no free address", s.config.subnet)))?;
            let id = new_instance_id();
            let zone = format!("{}-a", req.region);
            let rec = Record {
                link: Link {
                    netns: format!("stratus-{}-{id}", s.config.network),
                    veth: format!("sv{}", &id[2..15]),
                    mac: mac_for(&id),
                    ip,
                },
                id,
                server: req.server,
                hostname: req.hostname.to_ascii_lowercase(),
                region: req.region.clone(),
                zone,
                size: req.size.clone(),
                image: req.native_image.clone(),
                tags: req.tags.clone(),
                firewall: req.firewall.clone(),
                ssh_keys: req.ssh_keys.clone(),
                public_ip: None,
                desired: Desired::Running,
                metadata_tokens_required: req.metadata_tokens_required,
                launched_at: Utc::now(),
                user_data: req.user_data.clone(),
            };
            let dir = s.dir(&rec.id);
            let saved = inst::make_dir(&dir)
                .and_then(|()| inst::write_user_data(&dir, &req.user_data))
                .and_then(|()| rec.save(&dir));
            if let Err(e) = saved {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(api(e));
            }
            s.write().insert(rec.id.clone(), rec.clone());
            rec
        };
        let lock = s.lock_for(&rec.id);
        let _g = lock.lock().await;
        if let Err(message) = s.boot(&rec).await {
            // Nothing half-made stays behind: the launch either fully happened or not at all.
            if let Err(e) = s.destroy(&rec).await {
                // Something could not be removed: keep the record (and so the address lease)
                // as a stopped instance, so nothing is handed out twice; terminate retries.
                let _ = s.update(&rec.id, |r| r.desired = Desired::Stopped);
                return Err(CloudError::StartFailed(format!(
                    "{message}; cleaning up also failed ({e}); terminate instance {} to retry",
                    rec.id
                )));
            }
            s.write().remove(&rec.id);
            s.locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&rec.id);
            // Its veth went with the namespace; take its name out of the allow-list too.
            let _ = s.pin(&rec.link, false).await;
            return Err(CloudError::StartFailed(message));
        }
        tracing::info!(instance = %rec.id, ip = %rec.link.ip, hostname = %rec.hostname, "instance started");
        Ok(s.observe(&rec))
    }

    async fn describe(&self, instance_id: &str) -> Result<Option<Instance>, CloudError> {
        let rec = self.shared.read().get(instance_id).cloned();
        Ok(rec.map(|r| self.shared.observe(&r)))
    }

    async fn list(&self) -> Result<Vec<Instance>, CloudError> {
        let recs: Vec<Record> = self.shared.read().values().cloned().collect();
        Ok(recs.iter().map(|r| self.shared.observe(r)).collect())
    }

    async fn stop(&self, instance_id: &str) -> Result<(), CloudError> {
        let s = &self.shared;
        let lock = s.lock_for(instance_id);
        let _g = lock.lock().await;
        let rec = s.update(instance_id, |r| r.desired = Desired::Stopped)?;
        inst::stop_processes(&s.group(&rec.id), s.config.stop_grace).await;
        inst::unmount_root(&s.paths(&rec.id)).map_err(api)?;
        Ok(())
    }

    async fn start(&self, instance_id: &str) -> Result<(), CloudError> {
        let s = &self.shared;
        let lock = s.lock_for(instance_id);
        let _g = lock.lock().await;
        // Pending (not "stopped, processes gone") from the moment it is meant to run.
        let _booting = BootingGuard::new(s, instance_id);
        let rec = s.update(instance_id, |r| r.desired = Desired::Running)?;
        s.boot(&rec).await.map_err(CloudError::StartFailed)
    }

    async fn reboot(&self, instance_id: &str) -> Result<(), CloudError> {
        let state = self.shared.observe(&self.shared.record(instance_id)?).state;
        if state != InstanceState::Running {
            return Err(CloudError::WrongState {
                id: instance_id.into(),
                state,
                action: "reboot",
                needs: "running",
            });
        }
        self.stop(instance_id).await?;
        self.start(instance_id).await
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), CloudError> {
        let s = &self.shared;
        let lock = s.lock_for(instance_id);
        let _g = lock.lock().await;
        let Ok(rec) = s.record(instance_id) else {
            return Ok(()); // already gone
        };
        inst::stop_processes(&s.group(&rec.id), s.config.stop_grace).await;
        s.destroy(&rec).await?;
        s.write().remove(instance_id);
        s.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(instance_id);
        if rec.public_ip.is_some() {
            s.apply_nat().await.map_err(api)?;
        } else {
            // Gone already if a rewrite raced us; nothing else to undo.
            let _ = s.pin(&rec.link, false).await;
        }
        tracing::info!(instance = %instance_id, "instance terminated");
        Ok(())
    }

    async fn associate_address(&self, instance_id: &str, ip: IpAddr) -> Result<(), CloudError> {
        let s = &self.shared;
        let v4 = crate::net::is_v4(ip)
            .filter(|v| s.net.in_pool(*v))
            .ok_or_else(|| CloudError::Invalid(format!("{ip} is not in one of this cloud's address pools")))?;
        s.move_address(v4, Some(instance_id)).await
    }

    async fn disassociate_address(&self, ip: IpAddr) -> Result<(), CloudError> {
        match crate::net::is_v4(ip) {
            Some(v4) => self.shared.move_address(v4, None).await,
            None => Ok(()),
        }
    }

    async fn set_tags(&self, instance_id: &str, tags: Vec<Tag>) -> Result<(), CloudError> {
        self.shared.update(instance_id, |r| r.tags = tags).map(drop)
    }

    async fn set_firewall(&self, instance_id: &str, rules: Vec<FirewallRule>) -> Result<(), CloudError> {
        let s = &self.shared;
        let lock = s.lock_for(instance_id);
        let _g = lock.lock().await;
        let rec = s.record(instance_id)?;
        crate::net::apply_firewall(&rec.link.netns, &rules).await.map_err(api)?;
        s.update(instance_id, |r| r.firewall = rules).map(drop)
    }

    async fn console_output(&self, instance_id: &str, max: usize) -> Result<String, CloudError> {
        self.shared.record(instance_id)?;
        Ok(inst::console_tail(&self.shared.paths(instance_id), max))
    }

    async fn image_exists(&self, native_id: &str) -> Result<bool, CloudError> {
        Ok(self.shared.images.get(native_id).is_some())
    }

    async fn capture_image(&self, instance_id: &str, name: &str) -> Result<CapturedImage, CloudError> {
        let s = &self.shared;
        let lock = s.lock_for(instance_id);
        let _g = lock.lock().await;
        let rec = s.record(instance_id)?;
        let state = s.observe(&rec).state;
        if state != InstanceState::Stopped {
            return Err(CloudError::WrongState {
                id: instance_id.into(),
                state,
                action: "capture an image",
                needs: "stopped",
            });
        }
        let p = s.paths(instance_id);
        // `stop` unmounted it; a host reboot in between leaves it unmounted too.
        inst::unmount_root(&p).map_err(api)?;
        let image = s
            .images
            .capture(name, &rec.image, instance_id, &p.upper())
            .await
            .map_err(|e| match e {
                crate::image::ImageError::InvalidSpec { problem, .. } => CloudError::Invalid(problem),
                e => api(e),
            })?;
        Ok(CapturedImage {
            native_id: image.id,
            size_bytes: Some(image.size_bytes),
        })
    }

    async fn delete_image(&self, native_id: &str) -> Result<(), CloudError> {
        let s = &self.shared;
        if s.images.get(native_id).is_none() {
            return Ok(());
        }
        if let Some(user) = s.read().values().find(|r| r.image == native_id) {
            return Err(CloudError::Invalid(format!(
                "image {native_id} is the root file system of instance {}; terminate it first",
                user.id
            )));
        }
        s.images.remove(native_id).map_err(api)
    }

    /// Its image store is Stratus's own directory: every image in it was built, imported or
    /// captured by Stratus.
    fn owns_all_images(&self) -> bool {
        true
    }

    async fn build_image(
        &self,
        name: &str,
        recipe: &stratus_cloud::ImageRecipe,
        progress: &(dyn for<'l> Fn(&'l str) + Send + Sync),
    ) -> Result<stratus_cloud::MadeImage, CloudError> {
        crate::capability::build(&self.shared.images, name, recipe, progress).await
    }

    async fn import_image(
        &self,
        name: &str,
        tarball: &std::path::Path,
    ) -> Result<stratus_cloud::MadeImage, CloudError> {
        crate::capability::import(&self.shared.images, name, tarball).await
    }

    fn identity_verifier(&self) -> Option<&dyn stratus_cloud::VerifyIdentity> {
        self.verifier.as_ref().map(|v| v as &dyn stratus_cloud::VerifyIdentity)
    }

    async fn tear_down(&self) -> Result<(), CloudError> {
        self.tear_down_all().await
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
