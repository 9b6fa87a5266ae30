//! Announcing that what a server should hold changed (its tags, files, logins, pool): a new
//! generation of its desired state, sent to its agent wherever it is connected (or given at its
//! next hello). The modules that change those things call [`desired_changed`]; it calls only
//! [`super::desired`] to build the state, never back into them.

use chrono::Utc;
use stratus_agent_proto::ControlMessage;
use stratus_store::{Change, TypedStore};
use stratus_types::ServerId;

use super::agents::AgentRecord;
use super::{App, AppError};

/// What the server should hold changed (its tags): issue a new generation and send it to the
/// agent if it is connected (otherwise it gets it at its next hello). Best effort: a failure
/// is logged, the change that caused it stands.
pub async fn desired_changed(app: &App, server: ServerId) {
    let pushed = async {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let Some(mut rec) = app.store.get_as::<AgentRecord>(&server.to_string()).await? else {
                return Ok::<_, AppError>(());
            };
            rec.generation += 1;
            match app.store.commit(vec![Change::update(&mut rec, Utc::now())]).await {
                Err(stratus_store::StoreError::Stale { .. }) if attempts < 5 => continue,
                other => other?,
            }
            break;
        }
        if app.agent_connected(server).await {
            let desired = super::desired::desired_state(app, server).await?;
            app.push_agent(server, ControlMessage::DesiredState(desired)).await;
        }
        Ok(())
    };
    if let Err(e) = pushed.await {
        tracing::warn!(%server, error = %e, "cannot send the new desired state");
    }
}
