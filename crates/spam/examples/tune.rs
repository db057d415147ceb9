//! Parameter sweep for the Bayes filter with k-fold cross-validation in
//! memory (tokenize once, classify many times). Every setting is judged on
//! all folds together, never on one split.
//!
//! cargo run --release -p palisade-spam --example tune -- LIST ROOT

use std::collections::HashSet;
use std::path::Path;

use palisade_spam::bayes::{classify, BayesParams, MemoryCounts};
use palisade_spam::eval::fold_of;
use palisade_spam::{corpus, mime, tokenize};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let samples = corpus::load_list(Path::new(&args[1]), Path::new(&args[2])).expect("corpus");
    let k = 10;
    let toks: Vec<(HashSet<String>, bool, usize)> = samples
        .iter()
        .map(|s| {
            (
                tokenize::tokens(&mime::parse(&s.bytes)),
                s.is_spam,
                fold_of(&s.name, k),
            )
        })
        .collect();
    let mut models = Vec::new();
    for fold in 0..k {
        let mut m = MemoryCounts::default();
        for (t, spam, f) in &toks {
            if *f != fold {
                m.train(t, *spam);
            }
        }
        models.push(m);
    }
    for s in [0.05, 0.1, 0.2] {
        for md in [0.42, 0.45, 0.47] {
            for maxd in [50, 150, 400] {
                let p = BayesParams {
                    unknown_strength: s,
                    unknown_prob: 0.5,
                    min_deviation: md,
                    max_discriminators: maxd,
                };
                let mut ham = Vec::new();
                let mut spam = Vec::new();
                for (t, is_spam, f) in &toks {
                    let r = classify(t, &models[*f], &p);
                    let pr = if std::env::var("MODE").as_deref() == Ok("lo") {
                        1.0 / (1.0 + (-r.mean_log_odds).exp())
                    } else if std::env::var("MODE").as_deref() == Ok("hy")
                        && (r.probability - 0.5).abs() < 0.05
                    {
                        0.5 + 0.049 * (1.0 / (1.0 + (-r.mean_log_odds).exp()) * 2.0 - 1.0)
                    } else {
                        r.probability
                    };
                    if *is_spam {
                        spam.push(pr)
                    } else {
                        ham.push(pr)
                    }
                }
                ham.sort_by(|a, b| b.total_cmp(a));
                // Threshold allowing at most 0.3% false positives.
                let allowed = ham.len() * 3 / 1000;
                let cut = ham[allowed];
                let det = spam.iter().filter(|&&x| x > cut).count() as f64 / spam.len() as f64;
                let fp_at_09 = ham.iter().filter(|&&x| x >= 0.9).count();
                let det_at_09 =
                    spam.iter().filter(|&&x| x >= 0.9).count() as f64 / spam.len() as f64;
                for th in [0.3, 0.4, 0.45, 0.5, 0.51, 0.55, 0.6, 0.7, 0.8, 0.9] {
                    let d = spam.iter().filter(|&&x| x >= th).count() as f64 / spam.len() as f64;
                    let f = ham.iter().filter(|&&x| x >= th).count();
                    print!(" [{th}: {d:.4}/{f}]");
                }
                println!();
                println!("s={s} mindev={md} maxd={maxd}: det@fp0.3%={det:.4} (cut {cut:.4}) | p>=0.9: det={det_at_09:.4} fp={fp_at_09}");
            }
        }
    }
}
