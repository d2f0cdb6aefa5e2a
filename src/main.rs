use clap::Parser;

mod cli;

fn main() {
    let cli = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(cli::run(cli)) {
        eprintln!("error: {e:#}");
        let code = e
            .chain()
            .find_map(|c| c.downcast_ref::<w2s::Error>())
            .map(w2s::Error::exit_code)
            .unwrap_or(1);
        std::process::exit(code);
    }
}
