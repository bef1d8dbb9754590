use clap::Parser;

fn main() {
    let cli = oasis_appliance::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("OASIS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {}", oasis_proto::error_chain(&e));
            std::process::exit(1);
        }
    };
    if let Err(err) = runtime.block_on(oasis_appliance::run(cli)) {
        eprintln!("error: {}", oasis_proto::error_chain(err.as_ref()));
        std::process::exit(oasis_appliance::exit_code(&err));
    }
}
