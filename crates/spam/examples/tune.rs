//! Parameter sweep for the Bayes filter, judged by 10-fold
//! cross-validation over the whole list (tokenize once, train each fold
//! in memory, classify many times). Every setting is scored on all folds
//! together, never on one split: that is how the defaults in
//! `BayesParams` were chosen (docs/antispam.md).
//!
//! cargo run --release -p palisade-spam --example tune -- shared/corpus/all.txt shared/corpus/spamassassin

use std::collections::HashSet;
use std::path::Path;

use palisade_spam::bayes::{classify, BayesParams, MemoryCounts};
use palisade_spam::eval::fold_of;
use palisade_spam::{corpus, mime, tokenize};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: tune LIST ROOT");
        std::process::exit(2);
    }
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
    let models: Vec<MemoryCounts> = (0..k)
        .map(|fold| {
            let mut m = MemoryCounts::default();
            for (t, spam, f) in &toks {
                if *f != fold {
                    m.train(t, *spam);
                }
            }
            m
        })
        .collect();
    for s in [0.05, 0.1, 0.2, 0.45] {
        for md in [0.1, 0.3, 0.4, 0.42, 0.45, 0.47] {
            for maxd in [50, 150, 400] {
                let p = BayesParams {
                    unknown_strength: s,
                    unknown_prob: 0.5,
                    min_deviation: md,
                    max_discriminators: maxd,
                };
                let (mut ham, mut spam) = (Vec::new(), Vec::new());
                for (t, is_spam, f) in &toks {
                    let pr = classify(t, &models[*f], &p).probability;
                    if *is_spam {
                        spam.push(pr)
                    } else {
                        ham.push(pr)
                    }
                }
                print!("s={s} min_dev={md} max_tokens={maxd}:");
                for th in [0.4, 0.5, 0.6, 0.7, 0.9] {
                    let d = spam.iter().filter(|&&x| x >= th).count() as f64 / spam.len() as f64;
                    let f = ham.iter().filter(|&&x| x >= th).count();
                    print!(" p>={th}: {:.2}%/{f}fp", 100.0 * d);
                }
                println!();
            }
        }
    }
}
