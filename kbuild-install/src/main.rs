use clap::Parser;
use kbuild_install::cli::{ABOUT, AFTER_HELP, InstallArgs, LONG_ABOUT};

#[derive(Parser)]
#[command(name = "kbuild-install", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    args: InstallArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    std::process::ExitCode::from(kbuild_install::cli::run("kbuild-install", &cli.args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
