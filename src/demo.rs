//! The demo (placeholder while it is written).
use std::process::ExitCode;
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}
pub fn run(_args: &DemoArgs) -> ExitCode {
    ExitCode::SUCCESS
}
