//! `stratus`: run the control plane and drive its API.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The local cloud's instance init runs as `stratus instance-init ...` (see stratus_local::init):
    // dispatched before anything else starts, so PID 1 of an instance carries no runtime.
    let args: Vec<_> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == stratus_cli::INSTANCE_INIT) {
        return stratus_local::init::main(&args[2..]);
    }
    // The instance agent, installed into local instances as this very binary: `stratus agent
    // ...`, or called by the name it is installed under (`stratus-agent tag add ...` from a
    // script).
    if args.get(1).is_some_and(|a| a == stratus_cli::AGENT) {
        return stratus_agent::main(&args[2..]);
    }
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "stratus-agent");
    if called {
        return stratus_agent::main(&args[1..]);
    }
    let cli = stratus_cli::args::Cli::parse();
    stratus_cli::init_logging(&cli);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(stratus_cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(stratus_cli::exit_code(&e))
        }
    }
}
