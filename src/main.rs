use clap::Parser;

fn main() {
    w2s::alloc::keep_freed_memory();
    w2s::alloc::join_thread_pool();
    let cli = w2s::cli::Cli::parse();
    w2s::models::engine::set_default(cli.engine);
    w2s::simd::set_tier(cli.simd);
    w2s::models::cuda_kernels::set_enabled(cli.cuda_kernels);
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
    if let Err(e) = runtime.block_on(w2s::cli::run(cli)) {
        // The error chain, leaving out causes a message already quotes (`path: io error`).
        let mut msg = String::new();
        for cause in e.chain() {
            let text = cause.to_string();
            if !msg.contains(&text) {
                if !msg.is_empty() {
                    msg.push_str(": ");
                }
                msg.push_str(&text);
            }
        }
        eprintln!("error: {msg}");
        let code = e
            .chain()
            .find_map(|c| c.downcast_ref::<w2s::Error>())
            .map(w2s::Error::exit_code)
            .unwrap_or(1);
        std::process::exit(code);
    }
}
