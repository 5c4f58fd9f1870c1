//! Rendering engine events: progress bars on a terminal, plain lines elsewhere (or in CI), and a
//! JSON document with `--json`.

use crate::events::{Event, PackageResult, Status};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Plain,
    Json,
}

impl Mode {
    /// Bars on a terminal outside CI, plain lines otherwise; JSON when asked.
    pub fn detect(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
            Mode::Bars
        } else {
            Mode::Plain
        }
    }
}

pub struct Reporter {
    mode: Mode,
    multi: MultiProgress,
    overall: Mutex<Option<ProgressBar>>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// Planning: its bar (terminal), or when a plain line last told how far it is.
    planning: Mutex<(Option<ProgressBar>, Option<std::time::Instant>)>,
}

fn verb(status: Status) -> &'static str {
    match status {
        Status::Built => "Built",
        Status::Fresh => "Fresh",
        Status::Failed => "Failed",
        Status::Refused => "Refused",
        Status::Skipped => "Skipped",
        Status::Planned => "Would run",
    }
}

/// The lines describing one finished package.
pub fn finished_lines(r: &PackageResult) -> Vec<String> {
    let mut out = Vec::new();
    let mods = r.modules.join(" ");
    match r.status {
        Status::Built => out.push(format!(
            "{:>12} {} in {:.1}s: {mods}",
            verb(r.status),
            r.name,
            r.seconds
        )),
        Status::Fresh => out.push(format!("{:>12} {}: {mods}", verb(r.status), r.name)),
        Status::Planned => {
            for c in &r.commands {
                out.push(format!("{:>12} {}: {c}", verb(r.status), r.name));
            }
        }
        Status::Refused => {
            if let Some(f) = &r.refusal {
                out.push(format!("{:>12} {}: {}", verb(r.status), r.name, f.cause));
                out.push(format!("  hint: {}", f.hint));
            }
        }
        Status::Failed | Status::Skipped => {
            out.push(format!(
                "{:>12} {}: {}",
                verb(r.status),
                r.name,
                r.error.as_deref().unwrap_or("")
            ));
            if r.status == Status::Failed
                && let Some(l) = &r.log
            {
                out.push(format!("  log: {l}"));
            }
        }
    }
    for n in &r.notes {
        out.push(format!("  note: {n}"));
    }
    out
}

impl Reporter {
    pub fn new(mode: Mode) -> Self {
        let multi = MultiProgress::new();
        if mode != Mode::Bars {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        Reporter {
            mode,
            multi,
            overall: Mutex::new(None),
            bars: Mutex::new(HashMap::new()),
            planning: Mutex::new((None, None)),
        }
    }

    fn line(&self, s: &str) {
        match self.mode {
            Mode::Bars => {
                let _ = self.multi.println(s);
            }
            Mode::Plain => {
                let _ = std::io::stderr().write_all(format!("{s}\n").as_bytes());
            }
            Mode::Json => {}
        }
    }

    pub fn event(&self, e: Event) {
        match e {
            Event::Planning { done, total } => {
                let mut p = self.planning.lock().unwrap();
                if self.mode == Mode::Bars {
                    let bar = p.0.get_or_insert_with(|| {
                        let b = self.multi.add(ProgressBar::new(total as u64));
                        b.set_style(
                            ProgressStyle::with_template(
                                "{prefix:>12.cyan.bold} [{bar:30}] {pos}/{len} packages, {elapsed}",
                            )
                            .unwrap()
                            .progress_chars("=> "),
                        );
                        b.set_prefix("Planning");
                        b
                    });
                    bar.set_position(done as u64);
                } else {
                    // A line every 10 s of a long planning (variants for hundreds of packages).
                    let now = std::time::Instant::now();
                    let last = *p.1.get_or_insert(now);
                    if now.duration_since(last) >= Duration::from_secs(10) {
                        p.1 = Some(now);
                        self.line(&format!("{:>12} {done}/{total} packages", "Planning"));
                    }
                }
            }
            Event::Planned { packages, to_build } => {
                if let Some(b) = self.planning.lock().unwrap().0.take() {
                    b.finish_and_clear();
                    self.multi.remove(&b);
                }
                if self.mode == Mode::Bars {
                    let bar = self.multi.add(ProgressBar::new(packages as u64));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>12.cyan.bold} [{bar:30}] {pos}/{len} packages, {elapsed}",
                        )
                        .unwrap()
                        .progress_chars("=> "),
                    );
                    bar.set_prefix("Building");
                    *self.overall.lock().unwrap() = Some(bar);
                } else {
                    self.line(&format!(
                        "{:>12} {packages} packages, {to_build} to build",
                        "Planned"
                    ));
                }
            }
            Event::Jobs { what } => self.line(&format!("{:>12} make jobs share {what}", "Jobs")),
            // On stderr in every mode: stdout may be the JSON document.
            Event::Warning(w) => match self.mode {
                Mode::Bars => {
                    let _ = self.multi.println(format!("warning: {w}"));
                }
                _ => {
                    let _ = std::io::stderr().write_all(format!("warning: {w}\n").as_bytes());
                }
            },
            Event::Started { package, command } => {
                if self.mode == Mode::Bars {
                    let mut bars = self.bars.lock().unwrap();
                    bars.entry(package).or_insert_with_key(|package| {
                        let b = self.multi.insert_from_back(1, ProgressBar::new_spinner());
                        b.set_style(
                            ProgressStyle::with_template("{prefix:>12.green} {spinner} {wide_msg}")
                                .unwrap(),
                        );
                        b.set_prefix(package.clone());
                        b.enable_steady_tick(Duration::from_millis(120));
                        b
                    });
                } else {
                    self.line(&format!("{:>12} {package}: {command}", "Running"));
                }
            }
            Event::Output { package, line } => {
                if let Some(b) = self.bars.lock().unwrap().get(&package) {
                    b.set_message(line);
                }
            }
            Event::Finished(r) => {
                if let Some(b) = self.bars.lock().unwrap().remove(&r.name) {
                    b.finish_and_clear();
                    self.multi.remove(&b);
                }
                if let Some(o) = self.overall.lock().unwrap().as_ref() {
                    o.inc(1);
                }
                for l in finished_lines(&r) {
                    self.line(&l);
                }
            }
        }
    }

    /// The summary table (or the JSON document) once everything settled.
    pub fn finish(&self, results: &[PackageResult], seconds: f64) {
        if let Some(o) = self.overall.lock().unwrap().take() {
            o.finish_and_clear();
        }
        let count = |s: Status| results.iter().filter(|r| r.status == s).count();
        if self.mode == Mode::Json {
            let doc = serde_json::json!({
                "packages": results,
                "summary": {
                    "built": count(Status::Built),
                    "fresh": count(Status::Fresh),
                    "failed": count(Status::Failed),
                    "refused": count(Status::Refused),
                    "skipped": count(Status::Skipped),
                    "planned": count(Status::Planned),
                    "seconds": seconds,
                }
            });
            outln!(
                "{}",
                serde_json::to_string_pretty(&doc).expect("serializes")
            );
            return;
        }
        let width = results
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(7)
            .max(7);
        // One write for the whole table.
        let mut table = format!(
            "\n{:<width$}  {:<8}  {:>7}  modules\n",
            "package", "status", "time"
        );
        for r in results {
            let t = if r.seconds > 0.0 {
                format!("{:.1}s", r.seconds)
            } else {
                "-".into()
            };
            table.push_str(&format!(
                "{:<width$}  {:<8}  {:>7}  {}\n",
                r.name,
                format!("{:?}", r.status).to_lowercase(),
                t,
                r.modules.len()
            ));
        }
        table.push_str(&format!(
            "built {}, fresh {}, failed {}, refused {}, skipped {} in {:.1}s\n",
            count(Status::Built),
            count(Status::Fresh),
            count(Status::Failed),
            count(Status::Refused),
            count(Status::Skipped),
            seconds
        ));
        let _ = std::io::stderr().write_all(table.as_bytes());
    }
}
