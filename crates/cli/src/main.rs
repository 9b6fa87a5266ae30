//! `stratus`: run the control plane and drive its API.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
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
