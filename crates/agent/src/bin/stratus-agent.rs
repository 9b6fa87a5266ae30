//! `stratus-agent`: the instance agent (see the crate docs). Run it on an instance of a cloud
//! with a metadata service, or on any Linux host with `--user-data FILE`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    stratus_agent::main(&args)
}
