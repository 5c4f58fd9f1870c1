//! extmod: build kernel modules for an already-built kernel, one package at a time.

mod cli;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::KbuildInstall(args) => kbuild_install::cli::run("extmod", &args),
        Command::Man { dir } => match write_man(&dir) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("extmod: error: cannot write man pages to `{dir}`: {e}");
                kbuild_install::exit::IO
            }
        },
    };
    ExitCode::from(code)
}

fn write_man(dir: &camino::Utf8Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, dir)?;
    Ok(())
}
