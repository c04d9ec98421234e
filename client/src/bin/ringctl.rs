//! `ringctl`, the admin CLI of a ringcache cluster. Everything lives in [`ringcache::ctl`]; this
//! only runs it on the process's own standard streams.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let code = ringcache::ctl::run_main().await;
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
