//! One function per subcommand.

mod admin;
mod apply;
mod artifacts;
mod quickstart;
mod resources;
mod runs;
mod serve;
mod servers;

use std::path::PathBuf;

use anyhow::Context;

use crate::args::{Cli, Command};
use crate::client::Client;
use crate::config;

/// What every API command needs.
#[derive(Debug)]
pub struct Ctx {
    pub client: Client,
    pub json: bool,
}

fn data_dir(cli: &Cli) -> PathBuf {
    cli.data_dir.clone().unwrap_or_else(config::default_data_dir)
}

/// URL and token by the documented order (see `config`).
fn connect(cli: &Cli) -> anyhow::Result<Ctx> {
    let saved = config::load()?;
    let url = cli
        .url
        .clone()
        .or(saved.url)
        .unwrap_or_else(|| config::DEFAULT_URL.to_string());
    let token = match cli.token.clone().or(saved.token) {
        Some(t) => Some(t),
        None => std::fs::read_to_string(data_dir(cli).join(stratus_server::ADMIN_TOKEN_FILE))
            .ok()
            .map(|t| t.trim().to_string()),
    };
    Ok(Ctx {
        client: Client::new(&url, token),
        json: cli.json,
    })
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve(a) => serve::serve(data_dir(&cli), a).await,
        Command::Admin(crate::args::AdminCmd::MigrateStore { to }) => {
            serve::migrate_store(data_dir(&cli), to, cli.json).await
        }
        Command::Admin(crate::args::AdminCmd::Tasks) => admin::tasks(&connect(&cli)?).await,
        Command::Quickstart(a) => serve::quickstart(data_dir(&cli), a, cli.json).await,
        Command::Login(a) => login(&cli, a).await,
        Command::Apply(a) => apply::apply(&connect(&cli)?, a).await,
        Command::Whoami => {
            let ctx = connect(&cli)?;
            let v = ctx.client.get("/whoami", &[]).await?;
            crate::output::show(ctx.json, &v["user"]);
            Ok(())
        }
        Command::Cloud(c) => resources::catalog(&connect(&cli)?, &resources::CLOUD, c).await,
        Command::Image(c) => resources::image(&connect(&cli)?, c).await,
        Command::Script(c) => resources::catalog(&connect(&cli)?, &resources::SCRIPT, c).await,
        Command::Deployment(c) => resources::catalog(&connect(&cli)?, &resources::DEPLOYMENT, c).await,
        Command::Template(c) => resources::template(&connect(&cli)?, c).await,
        Command::Server(c) => servers::server(&connect(&cli)?, c).await,
        Command::Array(c) => servers::array(&connect(&cli)?, c).await,
        Command::Runs(c) => runs::runs(&connect(&cli)?, c).await,
        Command::Rollouts(c) => runs::rollouts(&connect(&cli)?, c).await,
        Command::Operation(c) => runs::operations(&connect(&cli)?, c).await,
        Command::Run(a) => runs::start(&connect(&cli)?, a).await,
        Command::Deploy(a) => artifacts::deploy(&connect(&cli)?, a).await,
        Command::Ssh(a) => servers::ssh(&connect(&cli)?, a).await,
        Command::Credential(c) => resources::credential(&connect(&cli)?, c).await,
        Command::User(c) => resources::user(&connect(&cli)?, c).await,
        Command::Token(c) => resources::token(&connect(&cli)?, c).await,
        Command::Address(c) => resources::address(&connect(&cli)?, c).await,
        Command::Artifact(c) => artifacts::artifact(&connect(&cli)?, c).await,
        Command::Audit(a) => resources::audit(&connect(&cli)?, a).await,
    }
}

async fn login(cli: &Cli, a: &crate::args::LoginArgs) -> anyhow::Result<()> {
    let token = match (&a.token_file, &cli.token) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read {}", f.display()))?
            .trim()
            .to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => {
            let f = data_dir(cli).join(stratus_server::ADMIN_TOKEN_FILE);
            std::fs::read_to_string(&f)
                .with_context(|| format!("no token given and {} cannot be read; pass --token-file", f.display()))?
                .trim()
                .to_string()
        }
    };
    let url = cli.url.clone().unwrap_or_else(|| config::DEFAULT_URL.to_string());
    let client = Client::new(&url, Some(token.clone()));
    let me = client
        .get("/whoami", &[])
        .await
        .context("the control plane refused the token")?;
    let path = config::save(&config::Saved {
        url: Some(url.clone()),
        token: Some(token),
    })?;
    say!(
        "logged in to {url} as {} (saved in {})",
        me["user"]["name"].as_str().unwrap_or("?"),
        path.display()
    );
    Ok(())
}
