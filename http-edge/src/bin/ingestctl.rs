//! The operator's command-line tool: `ingestctl quarantine list|count|show|replay`, `ingestctl
//! outbox`. The work is in `http_edge::ctl`; this wires arguments and exit codes.

use http_edge::ctl::{self, Cli, EXIT_ERROR};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli: Cli = ingest_core::config::parse_or_exit();
    let mut stdout = std::io::stdout().lock();
    let code = match ctl::run(cli, &mut stdout).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ingestctl: {error}");
            EXIT_ERROR
        }
    };
    std::process::exit(code);
}
