use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = wharf::cli::Cli::parse();
    match wharf::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
