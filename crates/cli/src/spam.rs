//! `palisade spam train|eval`: the antispam stage's Bayes database (DM24).
//!
//! `train` adds ham and spam (directories of messages, maildirs or mbox
//! files) to the token database every antispam node reads. `eval` measures
//! the filter: with `--folds K`, K-fold cross-validation on the given mail
//! (each fold trained from scratch, the deployed database untouched);
//! without, the deployed database scores the given mail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use palisade_spam::corpus::{self, Sample};
use palisade_spam::eval::{self, Confusion, Scored};
use palisade_spam::{BayesDb, Scorer, ScorerSettings};

use crate::ConfigArg;

#[derive(Subcommand)]
pub enum SpamCommand {
    /// Train the Bayes database on ham and spam.
    Train(TrainArgs),
    /// Detection rate, false-positive rate and messages per second.
    Eval(EvalArgs),
}

#[derive(Args)]
pub struct MailSources {
    /// Ham: a directory of messages (one per file), a maildir or an mbox.
    /// Repeatable.
    #[arg(long)]
    pub ham: Vec<PathBuf>,
    /// Spam, same forms as --ham. Repeatable.
    #[arg(long)]
    pub spam: Vec<PathBuf>,
    /// Instead of --ham/--spam: a list file of `ham|spam PATH` lines
    /// (shared/corpus/all.txt), paths relative to --root.
    #[arg(long, requires = "root")]
    pub list: Option<PathBuf>,
    #[arg(long)]
    pub root: Option<PathBuf>,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub sources: MailSources,
    /// Forget what the database learnt before.
    #[arg(long)]
    pub reset: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub sources: MailSources,
    /// K-fold cross-validation on the given mail (K >= 2).
    #[arg(long)]
    pub folds: Option<usize>,
    /// Spam at or above this score (default: the config's tag_threshold).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Write one line per message: `label verdict score name` (the format
    /// of shared/corpus/eval_results.py).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Write the folds as `trainN.txt`/`testN.txt` list files, for running
    /// other filters (baselines.sh) on exactly the same folds.
    #[arg(long, requires = "folds")]
    pub write_folds: Option<PathBuf>,
}

pub fn run(cmd: SpamCommand) -> Result<ExitCode> {
    match cmd {
        SpamCommand::Train(a) => train(a),
        SpamCommand::Eval(a) => evaluate(a),
    }
}

fn load_sources(s: &MailSources) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    if let (Some(list), Some(root)) = (&s.list, &s.root) {
        out.extend(
            corpus::load_list(list, root).with_context(|| format!("reading {}", list.display()))?,
        );
    }
    for (paths, is_spam) in [(&s.ham, false), (&s.spam, true)] {
        for p in paths {
            out.extend(
                corpus::load(p, is_spam).with_context(|| format!("reading {}", p.display()))?,
            );
        }
    }
    let spam = out.iter().filter(|s| s.is_spam).count();
    if spam == 0 || spam == out.len() {
        bail!(
            "need both ham and spam (got {} ham, {spam} spam)",
            out.len() - spam
        );
    }
    Ok(out)
}

fn train(a: TrainArgs) -> Result<ExitCode> {
    let config = crate::load_config(&a.config.config)?;
    let samples = load_sources(&a.sources)?;
    let dir = config.bayes_db_dir();
    let db = BayesDb::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    if a.reset {
        db.clear()?;
    }
    let total = samples.len();
    let started = std::time::Instant::now();
    eval::train(&db, &samples, |done| progress("training", done, total))?;
    eprintln!();
    let spam = samples.iter().filter(|s| s.is_spam).count();
    println!(
        "trained {} ham and {spam} spam in {:.1} s into {} ({} tokens)",
        total - spam,
        started.elapsed().as_secs_f64(),
        dir.display(),
        db.token_count()?
    );
    Ok(ExitCode::SUCCESS)
}

/// A one-line progress bar on stderr.
fn progress(what: &str, done: usize, total: usize) {
    const WIDTH: usize = 40;
    let filled = WIDTH * done / total.max(1);
    eprint!(
        "\r{what} [{}{}] {done}/{total}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    );
    let _ = std::io::stderr().flush();
}

fn evaluate(a: EvalArgs) -> Result<ExitCode> {
    let config = crate::load_config(&a.config.config)?;
    let settings = ScorerSettings::from_config(&config);
    let threshold = a.threshold.unwrap_or(config.spam().tag_threshold);
    let samples = load_sources(&a.sources)?;
    let (total, scored) = match a.folds {
        Some(k) => {
            if k < 2 {
                bail!("--folds must be at least 2");
            }
            if let Some(dir) = &a.write_folds {
                write_folds(&samples, k, dir)?;
            }
            let work =
                std::env::temp_dir().join(format!("palisade-spam-eval-{}", std::process::id()));
            let result =
                eval::cross_validate(&samples, k, &settings, threshold, &work, |fold, c| {
                    println!("fold {fold}: {}", summary(c));
                });
            let _ = std::fs::remove_dir_all(&work);
            let r = result?;
            println!("{k}-fold cross-validation, threshold {threshold}:");
            r
        }
        None => {
            let dir = config.bayes_db_dir();
            let db = BayesDb::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
            let scorer = Scorer::new(settings)?;
            let mut scored = Vec::new();
            let c = eval::score_all(&db, &scorer, &samples, threshold, &mut scored)?;
            println!("database {}, threshold {threshold}:", dir.display());
            (c, scored)
        }
    };
    println!("{}", summary(&total));
    if let Some(path) = &a.results {
        write_results(path, &scored, threshold)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(c: &Confusion) -> String {
    format!(
        "n={} detection rate {:.2}% ({}/{}), false positives {:.2}% ({}/{}), {:.0} msg/s per core",
        c.messages(),
        100.0 * c.detection_rate(),
        c.true_spam,
        c.true_spam + c.missed_spam,
        100.0 * c.false_positive_rate(),
        c.false_positive,
        c.false_positive + c.true_ham,
        c.per_core_rate()
    )
}

fn write_results(path: &Path, scored: &[Scored], threshold: f64) -> Result<()> {
    let mut out = String::new();
    for s in scored {
        out.push_str(&format!(
            "{} {} {:.3} {} {}\n",
            if s.is_spam { "spam" } else { "ham" },
            if s.score >= threshold { "spam" } else { "ham" },
            s.score,
            s.name,
            s.hits
        ));
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn write_folds(samples: &[Sample], k: usize, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for fold in 0..k {
        let (mut train, mut test) = (String::new(), String::new());
        for s in samples {
            let line = format!("{} {}\n", if s.is_spam { "spam" } else { "ham" }, s.name);
            if eval::fold_of(&s.name, k) == fold {
                test.push_str(&line);
            } else {
                train.push_str(&line);
            }
        }
        std::fs::write(dir.join(format!("train{}.txt", fold + 1)), train)?;
        std::fs::write(dir.join(format!("test{}.txt", fold + 1)), test)?;
    }
    Ok(())
}
