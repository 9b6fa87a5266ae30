//! `stratus apply -f FILE [--dry-run]`.

use anyhow::Context;
use stratus_api::file::{Format, parse};
use stratus_api::views::{Plan, PlanAction};

use super::Ctx;
use crate::args::ApplyArgs;

/// Read and parse a deployment file (body_file paths are relative to it).
pub fn read_file(path: &std::path::Path) -> anyhow::Result<stratus_api::file::DeploymentFile> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > stratus_api::file::FILE_MAX as u64 {
        anyhow::bail!(
            "{}: the file is {} bytes; the limit is {}",
            path.display(),
            meta.len(),
            stratus_api::file::FILE_MAX
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let base = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            p
        }
    });
    Ok(parse(&text, Format::of(path), &path.display().to_string(), base)?)
}

pub fn print_plan(plan: &Plan) {
    for c in &plan.changes {
        let mark = match c.action {
            PlanAction::Create => "+ create",
            PlanAction::Update => "~ update",
            PlanAction::Unchanged => "  unchanged",
        };
        let notes = if c.notes.is_empty() {
            String::new()
        } else {
            format!("  ({})", c.notes.join("; "))
        };
        say!("{mark:<12} {} {}{notes}", c.kind, c.name);
    }
    let (cr, up, un) = (
        plan.count(PlanAction::Create),
        plan.count(PlanAction::Update),
        plan.count(PlanAction::Unchanged),
    );
    let verb = if plan.applied {
        "applied"
    } else {
        "plan (dry run, nothing changed)"
    };
    say!("{verb}: {cr} to create, {up} to update, {un} unchanged");
}

pub async fn apply(ctx: &Ctx, a: &ApplyArgs) -> anyhow::Result<()> {
    let doc = read_file(&a.file)?;
    let v = ctx
        .client
        .post("/apply", &serde_json::json!({ "document": doc, "dry_run": a.dry_run }))
        .await?;
    if ctx.json {
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print_plan(&serde_json::from_value(v)?);
    Ok(())
}
