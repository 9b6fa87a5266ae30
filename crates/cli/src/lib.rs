//! The `stratus` command. `main.rs` parses and calls [`run`]; every subcommand is a function in
//! `commands/` that talks to the control plane through [`client::Client`] (the same public
//! API any other client uses) and prints with [`output`].

/// `println!` that ends the program quietly when stdout is a closed pipe.
macro_rules! say {
    () => { $crate::output::emit_line("") };
    ($($arg:tt)*) => { $crate::output::emit_line(&format!($($arg)*)) };
}

pub mod args;
pub mod client;
pub mod commands;
pub mod config;
pub mod output;

use args::{Cli, Command};

pub fn init_logging(cli: &Cli) {
    let default = match (&cli.command, cli.verbose) {
        (_, v) if v >= 2 => "debug",
        (_, 1) => "info",
        (Command::Serve(_), _) => "info,tower_http=warn,sqlx=warn",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    commands::dispatch(cli).await
}

/// The hidden subcommand that runs the local cloud's instance init.
pub const INSTANCE_INIT: &str = "instance-init";
/// The subcommand that runs the instance agent (`stratus agent --help`-less: see
/// `stratus_agent::main`).
pub const AGENT: &str = "agent";

/// Exit codes: 1 general, 2 usage/invalid input, 3 not found, 4 conflict, 5 auth.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<client::ApiFailure>() {
        Some(f) => match f.code.as_str() {
            "invalid_input" | "payload_too_large" => 2,
            "not_found" => 3,
            "conflict" | "stale" | "bad_state" => 4,
            "unauthenticated" | "forbidden" => 5,
            _ => 1,
        },
        None => 1,
    }
}
