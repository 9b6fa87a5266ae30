//! Reading the audit log.

use stratus_api::params::AuditParams;
use stratus_store::AuditQuery;
use stratus_types::audit::AuditEntry;

use super::{Actor, App, AppError, OBSERVER};

pub async fn list(app: &App, actor: &Actor, p: &AuditParams) -> Result<Vec<AuditEntry>, AppError> {
    actor.require(OBSERVER)?;
    let q = AuditQuery {
        actor: p.actor.clone(),
        action_prefix: p.action.clone(),
        target_prefix: p.target.clone(),
        before: p.before.clone(),
        limit: super::page_limit(p.limit)?,
    };
    Ok(app.store.audit(&q).await?)
}
