//! A driver wrapper that counts the calls made to the driver it wraps, by method: how tests
//! and benchmarks see how many cloud API calls the orchestrator makes (a real cloud bills and
//! throttles per call). The counts are shared ([`Counts`] is a handle), so a test keeps one
//! while the control plane owns the driver.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use stratus_types::cloud::DriverKind;
use stratus_types::tag::Tag;
use stratus_types::template::FirewallRule;

use crate::{CapturedImage, CloudDriver, CloudError, Instance, LaunchRequest};

/// Calls by method name (`launch`, `list`, `describe`, ...), shared between clones.
#[derive(Debug, Clone, Default)]
pub struct Counts(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl Counts {
    fn add(&self, method: &'static str) {
        *self.lock().entry(method).or_default() += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, u64>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Calls of one method so far.
    pub fn get(&self, method: &str) -> u64 {
        self.lock().get(method).copied().unwrap_or(0)
    }

    /// Calls of every method so far.
    pub fn total(&self) -> u64 {
        self.lock().values().sum()
    }

    /// Every method called so far, with its count.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.lock().clone()
    }

    /// Start counting from zero again.
    pub fn reset(&self) {
        self.lock().clear();
    }
}

/// Counts every call, then passes it on to the wrapped driver.
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn CloudDriver>,
    counts: Counts,
}

impl Counting {
    pub fn new(inner: Arc<dyn CloudDriver>, counts: Counts) -> Self {
        Self { inner, counts }
    }
}

#[async_trait]
impl CloudDriver for Counting {
    fn kind(&self) -> DriverKind {
        self.inner.kind()
    }
    async fn launch(&self, req: LaunchRequest) -> Result<Instance, CloudError> {
        self.counts.add("launch");
        self.inner.launch(req).await
    }
    async fn describe(&self, id: &str) -> Result<Option<Instance>, CloudError> {
        self.counts.add("describe");
        self.inner.describe(id).await
    }
    async fn list(&self) -> Result<Vec<Instance>, CloudError> {
        self.counts.add("list");
        self.inner.list().await
    }
    async fn stop(&self, id: &str) -> Result<(), CloudError> {
        self.counts.add("stop");
        self.inner.stop(id).await
    }
    async fn start(&self, id: &str) -> Result<(), CloudError> {
        self.counts.add("start");
        self.inner.start(id).await
    }
    async fn reboot(&self, id: &str) -> Result<(), CloudError> {
        self.counts.add("reboot");
        self.inner.reboot(id).await
    }
    async fn terminate(&self, id: &str) -> Result<(), CloudError> {
        self.counts.add("terminate");
        self.inner.terminate(id).await
    }
    async fn associate_address(&self, id: &str, ip: IpAddr) -> Result<(), CloudError> {
        self.counts.add("associate_address");
        self.inner.associate_address(id, ip).await
    }
    async fn disassociate_address(&self, ip: IpAddr) -> Result<(), CloudError> {
        self.counts.add("disassociate_address");
        self.inner.disassociate_address(ip).await
    }
    async fn set_tags(&self, id: &str, tags: Vec<Tag>) -> Result<(), CloudError> {
        self.counts.add("set_tags");
        self.inner.set_tags(id, tags).await
    }
    async fn set_firewall(&self, id: &str, rules: Vec<FirewallRule>) -> Result<(), CloudError> {
        self.counts.add("set_firewall");
        self.inner.set_firewall(id, rules).await
    }
    async fn console_output(&self, id: &str, max: usize) -> Result<String, CloudError> {
        self.counts.add("console_output");
        self.inner.console_output(id, max).await
    }
    async fn allocate_address(&self) -> Result<Option<IpAddr>, CloudError> {
        self.counts.add("allocate_address");
        self.inner.allocate_address().await
    }
    async fn release_address(&self, ip: IpAddr) -> Result<(), CloudError> {
        self.counts.add("release_address");
        self.inner.release_address(ip).await
    }
    async fn image_exists(&self, native_id: &str) -> Result<bool, CloudError> {
        self.counts.add("image_exists");
        self.inner.image_exists(native_id).await
    }
    async fn capture_image(&self, id: &str, name: &str) -> Result<CapturedImage, CloudError> {
        self.counts.add("capture_image");
        self.inner.capture_image(id, name).await
    }
    async fn delete_image(&self, native_id: &str) -> Result<(), CloudError> {
        self.counts.add("delete_image");
        self.inner.delete_image(native_id).await
    }
    /// The wrapped driver's, so driver-specific operations still find it.
    // Capabilities: passed through as they are (not cloud calls the wrapper counts or throttles).
    fn owns_all_images(&self) -> bool {
        self.inner.owns_all_images()
    }
    async fn build_image(
        &self,
        name: &str,
        recipe: &crate::ImageRecipe,
        progress: &(dyn for<'l> Fn(&'l str) + Send + Sync),
    ) -> Result<crate::MadeImage, CloudError> {
        self.inner.build_image(name, recipe, progress).await
    }
    async fn import_image(&self, name: &str, tarball: &std::path::Path) -> Result<crate::MadeImage, CloudError> {
        self.inner.import_image(name, tarball).await
    }
    fn identity_verifier(&self) -> Option<&dyn crate::VerifyIdentity> {
        self.inner.identity_verifier()
    }
    fn simulated(&self) -> bool {
        self.inner.simulated()
    }
    async fn tear_down(&self) -> Result<(), CloudError> {
        self.inner.tear_down().await
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self.inner.as_any()
    }
}
