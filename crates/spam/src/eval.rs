//! Measuring the filter: k-fold cross-validation on labelled mail, with
//! detection rate, false-positive rate and CPU time per message.
//!
//! Each fold is trained into its own temporary LMDB database and scored
//! through it, so the throughput measured is the production path (parse,
//! tokenize, LMDB lookups, rules), not an in-memory shortcut.

use std::path::Path;
use std::time::Duration;

use crate::bayes_db::BayesDb;
use crate::corpus::Sample;
use crate::{mime, tokenize, Scorer, ScorerSettings, SpamError};

/// The fold a message belongs to, from its file name only (FNV-1a), so
/// any tool given the same names builds the same folds.
pub fn fold_of(name: &str, k: usize) -> usize {
    let base = name.rsplit('/').next().unwrap_or(name);
    let mut h: u64 = 0xcbf29ce484222325;
    for b in base.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % k as u64) as usize
}

/// Counts of one evaluation.
#[derive(Clone, Debug, Default)]
pub struct Confusion {
    pub true_spam: usize,
    pub missed_spam: usize,
    pub false_positive: usize,
    pub true_ham: usize,
    /// CPU time spent scoring (this thread), for msg/s per core.
    pub cpu: Duration,
}

impl Confusion {
    pub fn add(&mut self, o: &Confusion) {
        self.true_spam += o.true_spam;
        self.missed_spam += o.missed_spam;
        self.false_positive += o.false_positive;
        self.true_ham += o.true_ham;
        self.cpu += o.cpu;
    }
    pub fn messages(&self) -> usize {
        self.true_spam + self.missed_spam + self.false_positive + self.true_ham
    }
    pub fn detection_rate(&self) -> f64 {
        self.true_spam as f64 / (self.true_spam + self.missed_spam).max(1) as f64
    }
    pub fn false_positive_rate(&self) -> f64 {
        self.false_positive as f64 / (self.false_positive + self.true_ham).max(1) as f64
    }
    pub fn per_core_rate(&self) -> f64 {
        self.messages() as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

/// One scored message (for per-message result files).
pub struct Scored {
    pub name: String,
    pub is_spam: bool,
    pub score: f64,
    /// `NAME=points` of every hit, for reading why.
    pub hits: String,
}

/// Trains `db` on `samples` in batches; `progress(done)` after each batch.
pub fn train(
    db: &BayesDb,
    samples: &[Sample],
    mut progress: impl FnMut(usize),
) -> Result<(), SpamError> {
    for (i, chunk) in samples.chunks(200).enumerate() {
        let batch: Vec<_> = chunk
            .iter()
            .map(|s| (tokenize::tokens(&mime::parse(&s.bytes)), s.is_spam))
            .collect();
        db.train(&batch)?;
        progress((i * 200 + chunk.len()).min(samples.len()));
    }
    Ok(())
}

/// Scores `samples` with the trained `db`; spam when score >= `threshold`.
pub fn score_all(
    db: &BayesDb,
    scorer: &Scorer,
    samples: &[Sample],
    threshold: f64,
    scored: &mut Vec<Scored>,
) -> Result<Confusion, SpamError> {
    let mut c = Confusion::default();
    let start = thread_cpu();
    for s in samples {
        let reader = db.reader()?;
        let analysis = scorer.analyze(&s.bytes, &reader);
        let score = analysis.score;
        let said_spam = score >= threshold;
        match (s.is_spam, said_spam) {
            (true, true) => c.true_spam += 1,
            (true, false) => c.missed_spam += 1,
            (false, true) => c.false_positive += 1,
            (false, false) => c.true_ham += 1,
        }
        scored.push(Scored {
            name: s.name.clone(),
            is_spam: s.is_spam,
            score,
            hits: analysis
                .hits
                .iter()
                .map(|h| format!("{}={:.2}", h.name, h.points))
                .collect::<Vec<_>>()
                .join(","),
        });
    }
    c.cpu = thread_cpu().saturating_sub(start);
    Ok(c)
}

/// k-fold cross-validation: for each fold, train on the others (in a
/// fresh database under `work`) and score it.
pub fn cross_validate(
    samples: &[Sample],
    k: usize,
    settings: &ScorerSettings,
    threshold: f64,
    work: &Path,
    mut on_fold: impl FnMut(usize, &Confusion),
) -> Result<(Confusion, Vec<Scored>), SpamError> {
    let scorer = Scorer::new(settings.clone())?;
    let mut total = Confusion::default();
    let mut scored = Vec::new();
    for fold in 0..k {
        let (test, train_set): (Vec<Sample>, Vec<Sample>) = samples
            .iter()
            .cloned()
            .partition(|s| fold_of(&s.name, k) == fold);
        let dir = work.join(format!("fold{fold}"));
        let _ = std::fs::remove_dir_all(&dir);
        let db = BayesDb::open(&dir)?;
        train(&db, &train_set, |_| {})?;
        let c = score_all(&db, &scorer, &test, threshold, &mut scored)?;
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
        on_fold(fold, &c);
        total.add(&c);
    }
    Ok((total, scored))
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_depend_on_the_file_name_only() {
        assert_eq!(fold_of("a/b/00001.abc", 10), fold_of("00001.abc", 10));
        let spread: std::collections::HashSet<usize> = (0..100)
            .map(|i| fold_of(&format!("{i:05}.x"), 10))
            .collect();
        assert_eq!(spread.len(), 10);
    }
}
