//! A driver wrapper that behaves like a throttled cloud: a share of the calls is answered
//! with [`CloudError::Throttled`] instead of reaching the wrapped driver, and (optionally) a
//! share of launches and terminations take effect but lose their answer (the caller sees
//! `Throttled`, as when a real cloud's response is a 503 after the work was done), which is
//! what makes retries create duplicates unless launches are idempotent.
//!
//! Which calls are refused is a deterministic function of the call's sequence number (a
//! SplitMix64 hash), so a failing test fails the same way again.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use stratus_types::cloud::DriverKind;
use stratus_types::tag::Tag;
use stratus_types::template::FirewallRule;

use crate::{CapturedImage, CloudDriver, CloudError, Instance, LaunchRequest};

#[derive(Debug)]
pub struct Throttling {
    inner: Arc<dyn CloudDriver>,
    /// Share of calls refused, in percent.
    percent: AtomicU64,
    /// Refused launches and terminations are done first (the answer is lost).
    lose_answers: bool,
    seq: AtomicU64,
    refused: AtomicU64,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Throttling {
    /// Refuse `percent` % of the calls.
    pub fn new(inner: Arc<dyn CloudDriver>, percent: u8) -> Self {
        Self {
            inner,
            percent: AtomicU64::new(u64::from(percent.min(100))),
            lose_answers: false,
            seq: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Refused launches and terminations take effect first; only their answer is lost.
    pub fn losing_answers(mut self) -> Self {
        self.lose_answers = true;
        self
    }

    /// Refuse `percent` % of the calls from now on.
    pub fn set_percent(&self, percent: u8) {
        self.percent.store(u64::from(percent.min(100)), Ordering::Relaxed);
    }

    /// Calls refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Whether this call is refused.
    fn refuse(&self) -> bool {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let no = splitmix(n) % 100 < self.percent.load(Ordering::Relaxed);
        if no {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        no
    }

    fn throttled<T>() -> Result<T, CloudError> {
        Err(CloudError::Throttled(
            "RequestLimitExceeded: Request limit exceeded (test)".into(),
        ))
    }

    /// A call that may be refused before it reaches the cloud.
    async fn gate<T>(&self, call: impl Future<Output = Result<T, CloudError>>) -> Result<T, CloudError> {
        if self.refuse() {
            return Self::throttled();
        }
        call.await
    }

    /// A call that, when refused, may still take effect.
    async fn lossy<T>(&self, call: impl Future<Output = Result<T, CloudError>>) -> Result<T, CloudError> {
        if !self.refuse() {
            return call.await;
        }
        if self.lose_answers {
            let _ = call.await;
        }
        Self::throttled()
    }
}

#[async_trait]
impl CloudDriver for Throttling {
    fn kind(&self) -> DriverKind {
        self.inner.kind()
    }
    async fn launch(&self, req: LaunchRequest) -> Result<Instance, CloudError> {
        self.lossy(self.inner.launch(req)).await
    }
    async fn describe(&self, id: &str) -> Result<Option<Instance>, CloudError> {
        self.gate(self.inner.describe(id)).await
    }
    async fn list(&self) -> Result<Vec<Instance>, CloudError> {
        self.gate(self.inner.list()).await
    }
    async fn stop(&self, id: &str) -> Result<(), CloudError> {
        self.gate(self.inner.stop(id)).await
    }
    async fn start(&self, id: &str) -> Result<(), CloudError> {
        self.gate(self.inner.start(id)).await
    }
    async fn reboot(&self, id: &str) -> Result<(), CloudError> {
        self.gate(self.inner.reboot(id)).await
    }
    async fn terminate(&self, id: &str) -> Result<(), CloudError> {
        self.lossy(self.inner.terminate(id)).await
    }
    async fn associate_address(&self, id: &str, ip: IpAddr) -> Result<(), CloudError> {
        self.gate(self.inner.associate_address(id, ip)).await
    }
    async fn disassociate_address(&self, ip: IpAddr) -> Result<(), CloudError> {
        self.gate(self.inner.disassociate_address(ip)).await
    }
    async fn set_tags(&self, id: &str, tags: Vec<Tag>) -> Result<(), CloudError> {
        self.gate(self.inner.set_tags(id, tags)).await
    }
    async fn set_firewall(&self, id: &str, rules: Vec<FirewallRule>) -> Result<(), CloudError> {
        self.gate(self.inner.set_firewall(id, rules)).await
    }
    async fn console_output(&self, id: &str, max: usize) -> Result<String, CloudError> {
        self.gate(self.inner.console_output(id, max)).await
    }
    async fn allocate_address(&self) -> Result<Option<IpAddr>, CloudError> {
        self.gate(self.inner.allocate_address()).await
    }
    async fn release_address(&self, ip: IpAddr) -> Result<(), CloudError> {
        self.gate(self.inner.release_address(ip)).await
    }
    async fn image_exists(&self, native_id: &str) -> Result<bool, CloudError> {
        self.gate(self.inner.image_exists(native_id)).await
    }
    async fn capture_image(&self, id: &str, name: &str) -> Result<CapturedImage, CloudError> {
        self.gate(self.inner.capture_image(id, name)).await
    }
    async fn delete_image(&self, native_id: &str) -> Result<(), CloudError> {
        self.gate(self.inner.delete_image(native_id)).await
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_about_the_share_asked() {
        let t = Throttling::new(Arc::new(crate::fake::FakeCloud::new()), 30);
        let mut refused = 0;
        for _ in 0..1000 {
            if matches!(t.list().await, Err(CloudError::Throttled(_))) {
                refused += 1;
            }
        }
        assert_eq!(refused, t.refused());
        assert!((200..400).contains(&refused), "{refused} of 1000 refused at 30 %");
    }
}
