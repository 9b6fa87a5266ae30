//! The driver factory: one [`CloudDriver`] per configured cloud, made on first use.

use std::collections::HashMap;
use std::sync::Arc;

use stratus_cloud::CloudDriver;
use stratus_cloud::fake::FakeCloud;
use stratus_store::Datastore;
use stratus_types::Name;
use stratus_types::cloud::{Cloud, DriverKind};
use tokio::sync::{Mutex, MutexGuard};

use crate::app::AppError;

/// The drivers this build can make; clouds using others are refused when they are declared.
pub const AVAILABLE: &[DriverKind] = &[DriverKind::Fake];

#[derive(Debug, Default)]
pub struct Drivers {
    made: Mutex<HashMap<Name, Arc<dyn CloudDriver>>>,
    addresses: Mutex<()>,
}

impl Drivers {
    /// The driver for a cloud, by the cloud's name.
    pub async fn for_cloud(&self, store: &dyn Datastore, cloud: &Name) -> Result<Arc<dyn CloudDriver>, AppError> {
        if let Some(d) = self.made.lock().await.get(cloud) {
            return Ok(d.clone());
        }
        let c = crate::app::resolve::named::<Cloud>(store, cloud.as_str()).await?;
        let driver: Arc<dyn CloudDriver> = match c.spec.driver {
            DriverKind::Fake => Arc::new(FakeCloud::new()),
            other => {
                return Err(AppError::BadState(format!(
                    "cloud {cloud} uses the {other:?} driver, which this build of Stratus does not include yet"
                )));
            }
        };
        Ok(self.made.lock().await.entry(cloud.clone()).or_insert(driver).clone())
    }

    /// Held while allocating an elastic IP.
    pub async fn address_lock(&self) -> MutexGuard<'_, ()> {
        self.addresses.lock().await
    }
}
