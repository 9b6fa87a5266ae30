//! Arrays: keep each array at its desired size (launching `<array>-<n>` from the array's
//! next-launch image when set, decommissioning the extras in the array's scale-in order), and
//! move the desired size by the members' votes when the array autoscales.

use chrono::Utc;
use stratus_store::{Change, Query, StoreError, TypedStore};
use stratus_types::deployment::Deployment;
use stratus_types::server::{Autoscale, Server, ServerArray, ServerState, VOTE_PREDICATE};
use tracing::{info, warn};

use crate::app::catalog::{Catalog, build_server};
use crate::app::{Actor, App, AppError, arrays, audit};

/// Launch missing members and decommission the oldest extra ones.
/// Autoscaling by voting tags (see `Autoscale`): count the operational members' votes and move
/// the desired count when they reach the threshold and the calm time has passed.
async fn vote(
    app: &App,
    a: &mut ServerArray,
    auto: Autoscale,
    members: &[Server],
    now: chrono::DateTime<Utc>,
) -> Result<(), AppError> {
    if a.last_scaled_at
        .is_some_and(|t| (now - t).num_seconds() < i64::from(auto.calm_secs))
    {
        return Ok(());
    }
    // Not while the last change is still under way (members booting or missing): the votes of
    // an array that has not settled would move it again before the new members could vote.
    if members.len() != a.spec.desired as usize || members.iter().any(|m| m.state != ServerState::Operational) {
        return Ok(());
    }
    let operational: Vec<&Server> = members.iter().filter(|m| m.state == ServerState::Operational).collect();
    let votes = |v: &str| {
        operational
            .iter()
            .filter(|m| {
                m.tags
                    .iter()
                    .any(|t| t.namespace() == VOTE_PREDICATE.0 && t.predicate() == VOTE_PREDICATE.1 && t.value() == v)
            })
            .count()
    };
    let (grow, shrink) = (votes("grow"), votes("shrink"));
    let Some(next) = auto.decide(a.spec.desired, a.spec.min, a.spec.max, operational.len(), grow, shrink) else {
        return Ok(());
    };
    let from = a.spec.desired;
    a.spec.desired = next;
    a.last_scaled_at = Some(now);
    let detail = serde_json::json!({
        "from": from, "to": next, "members": operational.len(), "grow": grow, "shrink": shrink,
        "threshold_percent": auto.threshold_percent,
    });
    let entry = audit(
        &Actor::system(),
        "array.autoscale",
        format!("array/{}/{}", a.spec.deployment, a.spec.name),
        detail,
    );
    app.store.commit(vec![Change::update(a, now), entry]).await?;
    info!(array = %a.spec.name, from, to = next, grow, shrink, "autoscaled by votes");
    Ok(())
}

pub async fn scale_arrays(app: &App) -> Result<(), AppError> {
    let arrays_all = app.store.list_all::<ServerArray>(&Query::default()).await?;
    if arrays_all.is_empty() {
        return Ok(());
    }
    let system = Actor::system();
    for a in arrays_all {
        let q = Query {
            scope: Some(a.spec.deployment.to_string()),
            live_only: true,
            ..Default::default()
        };
        let mut members: Vec<Server> = app
            .store
            .list_all::<Server>(&q)
            .await?
            .into_iter()
            .filter(|s| s.array.as_ref() == Some(&a.spec.name) && s.state != ServerState::Decommissioning)
            .collect();
        let now = Utc::now();
        let mut a = a;
        if let Some(auto) = a.spec.autoscale {
            vote(app, &mut a, auto, &members, now).await?;
        }
        let want = a.spec.desired as usize;
        let result = if members.len() < want {
            let Some(dep) = app.store.find_as::<Deployment>("", a.spec.deployment.as_str()).await? else {
                continue;
            };
            let cat = Catalog::load(&*app.store).await?;
            let mut changes = vec![];
            let mut n = 1;
            while members.len() < want {
                let spec = arrays::member_spec(&a.spec, n);
                n += 1;
                if members.iter().any(|m| m.name == spec.name)
                    || app
                        .store
                        .find_as::<Server>(a.spec.deployment.as_str(), spec.name.as_str())
                        .await?
                        .is_some()
                {
                    continue;
                }
                match build_server(&spec, &dep, &cat, a.next_launch_image.as_ref(), now) {
                    Ok(mut s) => {
                        s.array = Some(a.spec.name.clone());
                        changes.push(Change::insert(&s));
                        changes.push(audit(
                            &system,
                            "array.launch",
                            format!("server/{}/{}", s.deployment, s.name),
                            serde_json::json!({"array": a.spec.name}),
                        ));
                        members.push(s);
                    }
                    Err(e) => {
                        warn!(array = %a.spec.name, error = %e, "cannot launch array member");
                        break;
                    }
                }
            }
            app.store.commit(changes).await
        } else if members.len() > want {
            a.spec.scale_in.order(&mut members);
            let extra = members.len() - want;
            let mut changes = vec![];
            for mut m in members.into_iter().take(extra) {
                let to = ServerState::Decommissioning;
                if m.move_to(to, now).is_ok() {
                    changes.push(audit(
                        &system,
                        "array.shrink",
                        format!("server/{}/{}", m.deployment, m.name),
                        serde_json::json!({"array": a.spec.name}),
                    ));
                    changes.push(Change::update(&mut m, now));
                }
            }
            app.store.commit(changes).await
        } else {
            Ok(())
        };
        match result {
            Ok(()) | Err(StoreError::Stale { .. } | StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
