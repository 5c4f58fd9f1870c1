//! extmod: build kernel modules for an already-built kernel, one package at a time.

mod cli;
mod engine;
mod error;
mod events;
mod kbuild;
mod overlay;
mod package;
mod reporter;
mod symbols;

use clap::{CommandFactory, Parser};
use cli::{BuildArgs, Cli, Command};
use error::{Error, code};
use events::Status;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::KbuildInstall(args) => kbuild_install::cli::run("extmod", &args),
        Command::Build(args) => build(&args),
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

fn report_error(e: &Error) -> u8 {
    eprintln!("extmod: error: {e}");
    if let Some(h) = e.hint() {
        eprintln!("  hint: {h}");
    }
    e.exit_code()
}

fn build(args: &BuildArgs) -> u8 {
    kbuild_install::process::install_interrupt_handler();
    let mut packages = Vec::new();
    if let Some(f) = &args.packages {
        match package::load(f) {
            Ok(p) => packages.extend(p),
            Err(e) => return report_error(&e),
        }
    }
    for s in &args.symbols {
        match package::from_symbol(s) {
            Ok(p) => packages.push(p),
            Err(e) => return report_error(&e),
        }
    }
    let opts = engine::BuildOptions {
        kbuild: args.kbuild.clone(),
        srctree: args.srctree.clone(),
        objdir: args.objdir.clone(),
        dest: args.dest.clone(),
        packages,
        jobs: args.jobs,
        keep_going: args.keep_going,
        dry_run: args.dry_run,
    };
    let reporter = reporter::Reporter::new(reporter::Mode::detect(args.json));
    let start = std::time::Instant::now();
    match engine::run(&opts, &|e| reporter.event(e)) {
        Ok(results) => {
            reporter.finish(&results, start.elapsed().as_secs_f64());
            if results
                .iter()
                .any(|r| matches!(r.status, Status::Failed | Status::Skipped))
            {
                code::PACKAGE_FAILED
            } else if let Some(r) = results.iter().find_map(|r| r.refusal.as_ref()) {
                r.code
            } else {
                0
            }
        }
        Err(e) => report_error(&e),
    }
}

fn write_man(dir: &camino::Utf8Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)?;
    Ok(())
}
