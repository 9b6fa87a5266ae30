//! The fake driver: a cloud that lives in memory.
//!
//! Instances are `pending` on launch and `running` at the next look (or after a configured
//! delay), get private addresses from 10.99.0.0/16, and can be told to fail, so tests can drive
//! every path of the orchestrator without a real cloud. It is also the driver behind the
//! `fake` cloud kind for trying the API.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use stratus_types::cloud::DriverKind;
use stratus_types::tag::Tag;
use stratus_types::template::FirewallRule;

use crate::{CapturedImage, CloudDriver, CloudError, Instance, InstanceState, LaunchRequest, USER_DATA_MAX};

#[derive(Debug, Default)]
struct State {
    instances: BTreeMap<String, Instance>,
    /// Launch requests as received (tests inspect user-data and firewall rules).
    requests: BTreeMap<String, LaunchRequest>,
    next: u32,
    fail_next_launch: Option<String>,
    capacity: Option<usize>,
    /// Images made by `capture_image`, by id, with the instance they came from and their name.
    captured: BTreeMap<String, (String, String)>,
    /// Images deleted by `delete_image`: they no longer exist.
    deleted: std::collections::BTreeSet<String>,
}

#[derive(Debug, Default)]
pub struct FakeCloud {
    state: Mutex<State>,
    boot_delay: Duration,
}

impl FakeCloud {
    pub fn new() -> Self {
        Self::default()
    }

    /// Instances stay `pending` this long after launch.
    pub fn with_boot_delay(delay: Duration) -> Self {
        Self {
            boot_delay: delay,
            ..Self::default()
        }
    }

    /// The next launch fails with this message.
    pub fn fail_next_launch(&self, message: &str) {
        self.lock().fail_next_launch = Some(message.to_string());
    }

    /// At most this many live instances.
    pub fn set_capacity(&self, n: usize) {
        self.lock().capacity = Some(n);
    }

    /// The request an instance was launched with.
    pub fn request(&self, instance_id: &str) -> Option<LaunchRequest> {
        self.lock().requests.get(instance_id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; keep serving it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn settle(&self, inst: &mut Instance) {
        let age = Utc::now() - inst.launched_at;
        if inst.state == InstanceState::Pending && age.to_std().unwrap_or_default() >= self.boot_delay {
            inst.state = InstanceState::Running;
        }
    }

    fn with_instance<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Instance) -> Result<T, CloudError>,
    ) -> Result<T, CloudError> {
        let mut st = self.lock();
        let inst = st
            .instances
            .get_mut(id)
            .ok_or_else(|| CloudError::NoSuchInstance(id.to_string()))?;
        self.settle(inst);
        f(inst)
    }
}

/// The fake cloud has every image but those whose id starts with `missing` and those deleted.
fn fake_image_exists(st: &State, id: &str) -> bool {
    !id.is_empty() && !id.starts_with("missing") && !st.deleted.contains(id)
}

#[async_trait]
impl CloudDriver for FakeCloud {
    fn kind(&self) -> DriverKind {
        DriverKind::Fake
    }

    async fn launch(&self, req: LaunchRequest) -> Result<Instance, CloudError> {
        if req.user_data.len() > USER_DATA_MAX {
            return Err(CloudError::UserDataTooLarge(req.user_data.len()));
        }
        let mut st = self.lock();
        if !fake_image_exists(&st, &req.native_image) {
            return Err(CloudError::NoSuchImage(req.native_image));
        }
        if let Some(msg) = st.fail_next_launch.take() {
            return Err(CloudError::Refused(msg));
        }
        if let Some(existing) = st
            .instances
            .values()
            .find(|i| i.server == req.server && i.state != InstanceState::Terminated)
        {
            return Ok(existing.clone());
        }
        let live = st
            .instances
            .values()
            .filter(|i| i.state != InstanceState::Terminated)
            .count();
        if st.capacity.is_some_and(|c| live >= c) {
            return Err(CloudError::Capacity(format!("{live} instances running")));
        }
        st.next += 1;
        let n = st.next;
        let id = format!("fake-{n:08x}");
        let ip = Ipv4Addr::new(10, 99, (n >> 8) as u8, (n & 0xff) as u8);
        let inst = Instance {
            id: id.clone(),
            server: req.server,
            state: InstanceState::Pending,
            state_reason: None,
            private_ip: Some(IpAddr::V4(ip)),
            public_ip: None,
            tags: req.tags.clone(),
            firewall: req.firewall.clone(),
            launched_at: Utc::now(),
        };
        st.instances.insert(id.clone(), inst.clone());
        st.requests.insert(id, req);
        Ok(inst)
    }

    async fn describe(&self, instance_id: &str) -> Result<Option<Instance>, CloudError> {
        match self.with_instance(instance_id, |i| Ok(i.clone())) {
            Ok(i) => Ok(Some(i)),
            Err(CloudError::NoSuchInstance(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self) -> Result<Vec<Instance>, CloudError> {
        let ids: Vec<String> = self.lock().instances.keys().cloned().collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(i) = self.describe(&id).await? {
                out.push(i);
            }
        }
        Ok(out)
    }

    async fn stop(&self, instance_id: &str) -> Result<(), CloudError> {
        self.with_instance(instance_id, |i| match i.state {
            InstanceState::Running | InstanceState::Stopped => {
                i.state = InstanceState::Stopped;
                Ok(())
            }
            s => Err(CloudError::WrongState {
                id: i.id.clone(),
                state: s,
                action: "stop",
                needs: "running",
            }),
        })
    }

    async fn start(&self, instance_id: &str) -> Result<(), CloudError> {
        self.with_instance(instance_id, |i| match i.state {
            InstanceState::Stopped | InstanceState::Running => {
                i.state = InstanceState::Running;
                Ok(())
            }
            s => Err(CloudError::WrongState {
                id: i.id.clone(),
                state: s,
                action: "start",
                needs: "stopped",
            }),
        })
    }

    async fn reboot(&self, instance_id: &str) -> Result<(), CloudError> {
        self.with_instance(instance_id, |i| match i.state {
            InstanceState::Running => Ok(()),
            s => Err(CloudError::WrongState {
                id: i.id.clone(),
                state: s,
                action: "reboot",
                needs: "running",
            }),
        })
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), CloudError> {
        let mut st = self.lock();
        if let Some(i) = st.instances.get_mut(instance_id) {
            i.state = InstanceState::Terminated;
            i.public_ip = None;
        }
        Ok(())
    }

    async fn associate_address(&self, instance_id: &str, ip: IpAddr) -> Result<(), CloudError> {
        let mut st = self.lock();
        match st.instances.get(instance_id).map(|i| i.state) {
            None => return Err(CloudError::NoSuchInstance(instance_id.to_string())),
            Some(InstanceState::Terminated) => {
                return Err(CloudError::WrongState {
                    id: instance_id.into(),
                    state: InstanceState::Terminated,
                    action: "associate an address",
                    needs: "not terminated",
                });
            }
            Some(_) => {}
        }
        for i in st.instances.values_mut() {
            if i.public_ip == Some(ip) {
                i.public_ip = None;
            }
        }
        if let Some(i) = st.instances.get_mut(instance_id) {
            i.public_ip = Some(ip);
        }
        Ok(())
    }

    async fn disassociate_address(&self, ip: IpAddr) -> Result<(), CloudError> {
        for i in self.lock().instances.values_mut() {
            if i.public_ip == Some(ip) {
                i.public_ip = None;
            }
        }
        Ok(())
    }

    async fn set_tags(&self, instance_id: &str, tags: Vec<Tag>) -> Result<(), CloudError> {
        self.with_instance(instance_id, |i| {
            i.tags = tags;
            Ok(())
        })
    }

    async fn set_firewall(&self, instance_id: &str, rules: Vec<FirewallRule>) -> Result<(), CloudError> {
        self.with_instance(instance_id, |i| {
            i.firewall = rules;
            Ok(())
        })
    }

    async fn console_output(&self, instance_id: &str, _max: usize) -> Result<String, CloudError> {
        // The fake runs nothing, so it prints nothing.
        self.with_instance(instance_id, |_| Ok(String::new()))
    }

    async fn image_exists(&self, native_id: &str) -> Result<bool, CloudError> {
        Ok(fake_image_exists(&self.lock(), native_id))
    }

    async fn capture_image(&self, instance_id: &str, name: &str) -> Result<CapturedImage, CloudError> {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(CloudError::Invalid(format!(
                "image name {:?} must be 1-128 characters without control characters",
                stratus_types::name::truncate(name)
            )));
        }
        self.with_instance(instance_id, |i| match i.state {
            InstanceState::Stopped => Ok(()),
            s => Err(CloudError::WrongState {
                id: i.id.clone(),
                state: s,
                action: "capture an image",
                needs: "stopped",
            }),
        })?;
        let mut st = self.lock();
        let again = st
            .captured
            .iter()
            .find(|(id, (inst, n))| inst == instance_id && n == name && !st.deleted.contains(*id));
        if let Some((id, _)) = again {
            return Ok(CapturedImage {
                native_id: id.clone(),
                size_bytes: None,
            });
        }
        st.next += 1;
        let native_id = format!("fake-img-{:08x}", st.next);
        st.captured
            .insert(native_id.clone(), (instance_id.to_string(), name.to_string()));
        Ok(CapturedImage {
            native_id,
            size_bytes: None,
        })
    }

    async fn delete_image(&self, native_id: &str) -> Result<(), CloudError> {
        let mut st = self.lock();
        st.captured.remove(native_id);
        st.deleted.insert(native_id.to_string());
        Ok(())
    }

    fn simulated(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
