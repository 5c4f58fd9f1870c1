//! extmod: build kernel modules for an already-built kernel, one package at a time.

/// `println!` that ends the process conventionally on a closed pipe or a full disk.
macro_rules! outln {
    ($($t:tt)*) => { kbuild_install::cli::outln(&format!($($t)*)) };
}

mod audit;
mod build;
mod cache;
mod cli;
mod error;
mod events;
mod fresh;
mod generation;
mod guard;
mod kbuild;
mod kbuild_eval;
mod locality;
mod modinst;
mod modmap;
mod overlay;
mod package;
#[cfg(test)]
mod proptests;
mod reporter;
mod runlock;
mod symbols;
mod variant;
mod which;

use clap::{CommandFactory, Parser};
use cli::{AuditArgs, BuildArgs, Cli, Command, MapArgs, VariantArgs, WhichArgs};
use error::{Error, code};
use events::Status;
use kbuild_install::tree::SourceTree;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::KbuildInstall(args) => kbuild_install::cli::run("extmod", &args),
        Command::Build(args) => build(&args),
        Command::Which(args) => match which_cmd(&args) {
            Ok(code) => code,
            Err(e) => report_error(&e),
        },
        Command::Map(args) => match map_cmd(&args) {
            Ok(code) => code,
            Err(e) => report_error(&e),
        },
        Command::Audit(args) => match audit_cmd(&args) {
            Ok(code) => code,
            Err(e) => report_error(&e),
        },
        Command::Variant(args) => match variant_cmd(&args) {
            Ok(code) => code,
            Err(e) => report_error(&e),
        },
        Command::Completions { shell } => {
            use std::io::Write;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "extmod", &mut out);
            match std::io::stdout().write_all(&out) {
                Ok(()) => 0,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 141,
                Err(e) => {
                    eprintln!("extmod: error: cannot write the completion script: {e}");
                    kbuild_install::exit::IO
                }
            }
        }
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
    // make's jobserver, before anything opens a file that could take its descriptors' numbers;
    // checked to be pipes, so a recipe without `+` (descriptors closed) falls back to our own.
    // SAFETY: the descriptors named in MAKEFLAGS are not used by anything else in this process.
    let inherited = unsafe { jobserver::Client::from_env_ext(true) }.client.ok();
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
    let opts = build::BuildOptions {
        kbuild: args.kbuild.clone(),
        srctree: args.srctree.clone(),
        objdir: args.objdir.clone(),
        dest: args.dest.clone(),
        packages,
        jobs: args.jobs,
        keep_going: args.keep_going,
        dry_run: args.dry_run,
        allow_kernel_change: args.allow_kernel_change,
        inherited_jobserver: inherited,
        external: args.external,
        install: modinst::InstallOptions {
            strip: args
                .strip
                .clone()
                .or_else(|| std::env::var("INSTALL_MOD_STRIP").ok()),
            sign_key: args.sign_key.clone(),
            sign_cert: args.sign_cert.clone(),
            no_sign: args.no_sign,
            raw: args.raw,
        },
        install_mod_path: args.install_mod_path.clone(),
        no_wait: args.no_wait,
        cc_launcher: args
            .cc_launcher
            .clone()
            .or_else(|| std::env::var("EXTMOD_CC_LAUNCHER").ok())
            .filter(|l| !l.trim().is_empty()),
    };
    let reporter = reporter::Reporter::new(reporter::Mode::detect(args.json));
    let start = std::time::Instant::now();
    match build::run(&opts, &|e| reporter.event(e)) {
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

fn variant_cmd(args: &VariantArgs) -> Result<u8, Error> {
    kbuild_install::process::install_interrupt_handler();
    let k = kbuild::KbuildTree::open(&args.kbuild)?;
    variant::variant_manifest(&k)?;
    let sets = args
        .sets
        .iter()
        .map(|s| {
            package::KconfigReq::parse(s).map_err(|why| Error::PackageFile {
                path: "--set".into(),
                why,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let src = match &args.srctree {
        Some(s) => Some(SourceTree::open(s)?),
        None => None,
    };
    // --out is written: never inside K, S or the trees K was made from.
    kbuild_install::paths::check_path(&kbuild_install::paths::absolute(&args.out)?)?;
    let out = kbuild_install::paths::resolve(&args.out)?;
    guard::check_outside(
        &out,
        &guard::protected(&k, src.as_ref().map(|s| s.path.as_path())),
    )?;
    let cache = cache::dir("variants");
    let src_path = src.as_ref().map(|s| s.path.as_path());
    if let Some(v) = variant::cached(&k, src_path, &sets, &cache) {
        return variant_done(&v, args);
    }
    let index = src
        .as_ref()
        .map(|s| symbols::Index::cached(&s.path, &k.srcarch, &cache::dir("index")));
    let v = variant::generate(
        &variant::Inputs {
            k: &k,
            src: src_path,
            index: index.as_ref(),
            cache: &cache,
        },
        &sets,
    )?;
    variant_done(&v, args)
}

fn variant_done(v: &variant::Variant, args: &VariantArgs) -> Result<u8, Error> {
    variant::export(v, &args.out)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(v).expect("serializes"));
    } else {
        for line in variant::report_lines(v) {
            eprintln!("{line}");
        }
        eprintln!("{:>12} {}", "Wrote", args.out);
    }
    Ok(if !v.not_applied.is_empty() {
        code::NOT_APPLIED
    } else if !v.kernel_affecting().is_empty() {
        code::KERNEL_AFFECTING
    } else {
        0
    })
}

/// K, S and the (cached) symbol index for `which`, `map` and `audit`.
fn open_index(
    kbuild: &camino::Utf8Path,
    srctree: &camino::Utf8Path,
) -> Result<(kbuild::KbuildTree, SourceTree, symbols::Index), Error> {
    let k = kbuild::KbuildTree::open(kbuild)?;
    let src = SourceTree::open(srctree)?;
    let index = symbols::Index::cached(&src.path, &k.srcarch, &cache::dir("index"));
    Ok((k, src, index))
}

fn which_cmd(args: &WhichArgs) -> Result<u8, Error> {
    let (k, src, index) = open_index(&args.kbuild, &args.srctree)?;
    let ev = modmap::evaluator(&k, &src.path);
    if let Some(m) = &args.module {
        let kmap = modmap::full(&index, &ev);
        let wanted: Vec<String> = if m.ends_with(".ko") {
            vec![m.clone()]
        } else {
            let name = kbuild::module_name(m);
            let mut all = std::collections::BTreeSet::new();
            for s in kmap.syms.values() {
                for p in &s.modules {
                    if kbuild::module_name(&p.path) == name {
                        all.insert(p.path.clone());
                    }
                }
            }
            all.into_iter().collect()
        };
        if wanted.is_empty() {
            eprintln!(
                "extmod: no module named `{m}` in the kernel's Makefiles (give a name like `dummy` or a path like `drivers/net/dummy.ko`)"
            );
            return Ok(code::NO_MODULE);
        }
        let found: Vec<(String, Vec<String>)> = wanted
            .iter()
            .map(|w| {
                let syms = kmap
                    .syms
                    .iter()
                    .filter(|(_, s)| s.modules.iter().any(|x| &x.path == w))
                    .map(|(s, _)| s.clone())
                    .collect();
                (w.clone(), syms)
            })
            .collect();
        if args.json {
            let doc: Vec<_> = found
                .iter()
                .map(|(m, s)| serde_json::json!({"module": m, "symbols": s}))
                .collect();
            outln!(
                "{}",
                serde_json::to_string_pretty(&doc).expect("serializes")
            );
        } else {
            for (m, syms) in &found {
                let list: Vec<String> = syms
                    .iter()
                    .map(|s| format!("CONFIG_{s}={}", k.value(s).unwrap_or("n")))
                    .collect();
                outln!(
                    "{m}: {}",
                    if list.is_empty() {
                        "no symbol found".to_string()
                    } else {
                        list.join(" ")
                    }
                );
            }
        }
        return Ok(if found.iter().any(|(_, s)| !s.is_empty()) {
            0
        } else {
            code::NO_MODULE
        });
    }
    if args.symbols.is_empty() {
        return Err(Error::Usage(
            "name at least one CONFIG_ symbol, or a module with --module".into(),
        ));
    }
    let kmap = modmap::for_symbols(&index, &ev, &args.symbols);
    let reports: Vec<which::SymbolReport> = args
        .symbols
        .iter()
        .map(|s| which::report(&index, &kmap, &k, s))
        .collect();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&reports).expect("serializes")
        );
    } else {
        for r in &reports {
            for l in which::lines(r) {
                outln!("{l}");
            }
        }
    }
    Ok(reports
        .iter()
        .find_map(|r| {
            r.error.as_ref().map(|_| match r.ty {
                None => code::UNKNOWN_SYMBOL,
                _ => code::NO_MODULE,
            })
        })
        .unwrap_or(0))
}

fn audit_cmd(args: &AuditArgs) -> Result<u8, Error> {
    kbuild_install::process::install_interrupt_handler();
    let (k, src, index) = open_index(&args.kbuild, &args.srctree)?;
    let packages = audit::load(&args.packages)?;
    // extmod's own package files must be buildable in order (as `build` requires); OpenWrt's
    // table carries mutual DEPENDS that its build system resolves.
    let openwrt_table =
        std::fs::read(&args.packages).is_ok_and(|t| t.starts_with(b"source\tpackage\t"));
    if !openwrt_table {
        let deps = packages
            .iter()
            .map(|p| (p.name.as_str(), p.depends.as_slice()));
        guard::check_cycles(deps)?;
    }
    let modules_dir = args
        .modules
        .clone()
        .or_else(|| k.manifest.as_ref().map(|m| m.made_from.objtree.clone()))
        .or_else(|| (k.kind == kbuild::Kind::ObjTree).then(|| k.path.clone()));
    let deps = modules_dir
        .as_deref()
        .map(audit::module_deps)
        .unwrap_or_default();
    if let Some(m) = &args.modules
        && deps.is_empty()
    {
        return Err(Error::Usage(format!(
            "--modules `{m}` holds no module list (no modules.dep with `module: deps` lines, no .ko files)"
        )));
    }
    let kmap = modmap::full(&index, &modmap::evaluator(&k, &src.path));
    let findings = audit::audit(
        &audit::Inputs {
            k: &k,
            index: &index,
            kmap: &kmap,
            src: &src.path,
            deps: &deps,
        },
        &packages,
    )?;
    let errors = findings
        .iter()
        .filter(|f| f.level == audit::Level::Error)
        .count();
    let summary = audit::summary(&packages, &findings);
    if args.json {
        let doc = serde_json::json!({
            "packages": packages.len(),
            "modules_checked_for_dependencies": deps.len(),
            "errors": errors,
            "warnings": findings.len() - errors,
            "summary": summary,
            "findings": findings,
        });
        outln!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("serializes")
        );
    } else {
        for f in &findings {
            let level = if f.level == audit::Level::Error {
                "ERROR"
            } else {
                "WARNING"
            };
            match &f.package {
                Some(p) => outln!("{level}: {p}: {}", f.message),
                None => outln!("{level}: {}", f.message),
            }
        }
        eprintln!(
            "audited {} packages ({} modules with known dependencies): {} errors, {} warnings",
            packages.len(),
            deps.len(),
            errors,
            findings.len() - errors
        );
        for line in audit::summary_lines(&summary) {
            eprintln!("{line}");
        }
    }
    if let Some(name) = &args.catch_all {
        kbuild_install::cli::out(&audit::catch_all(name, &findings));
    }
    Ok(if errors > 0 { code::AUDIT_ERRORS } else { 0 })
}

fn map_cmd(args: &MapArgs) -> Result<u8, Error> {
    let (k, src, index) = open_index(&args.kbuild, &args.srctree)?;
    let kmap = modmap::full(&index, &modmap::evaluator(&k, &src.path));
    for (dir, why) in &kmap.base.errors {
        eprintln!("warning: make could not evaluate {dir}: {why}");
    }
    let table = which::map(&index, &kmap, &k);
    if args.json {
        outln!("{}", serde_json::to_string(&table).expect("serializes"));
    } else {
        for r in &table {
            let mods: Vec<&str> = r.modules.iter().map(|m| m.module.path.as_str()).collect();
            outln!(
                "{}\t{}\t{}",
                r.symbol,
                r.base.as_deref().unwrap_or("n"),
                mods.join(" ")
            );
        }
    }
    Ok(0)
}

fn write_man(dir: &camino::Utf8Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)?;
    Ok(())
}
