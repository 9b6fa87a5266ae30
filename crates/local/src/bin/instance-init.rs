//! The local cloud's instance init (see `stratus_local::init`); `stratus instance-init` is the
//! same program inside the `stratus` binary.

fn main() -> std::process::ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    stratus_local::init::main(&args)
}
