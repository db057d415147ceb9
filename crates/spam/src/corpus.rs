//! Reading training and evaluation mail: a directory of messages (one per
//! file, `.eml` or not; a maildir's `cur/` and `new/` are walked too), an
//! mbox file, or a list file of `ham|spam relative/path` lines (the format
//! of shared/corpus/all.txt).

use std::io;
use std::path::{Path, PathBuf};

/// One message with its true label.
#[derive(Clone)]
pub struct Sample {
    /// Where it came from (path, or `mbox-file#n`).
    pub name: String,
    pub is_spam: bool,
    pub bytes: Vec<u8>,
}

/// Every message under `path`: recursively for a directory (hidden files
/// and maildir `tmp/` skipped), split on `From ` lines for an mbox file, or
/// the file itself.
pub fn load(path: &Path, is_spam: bool) -> io::Result<Vec<Sample>> {
    let mut files = Vec::new();
    collect_files(path, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f)?;
        let name = f.display().to_string();
        if is_mbox(&bytes) {
            for (i, m) in split_mbox(&bytes).into_iter().enumerate() {
                out.push(Sample {
                    name: format!("{name}#{i}"),
                    is_spam,
                    bytes: m,
                });
            }
        } else {
            out.push(Sample {
                name,
                is_spam,
                bytes,
            });
        }
    }
    Ok(out)
}

/// The messages named by a list file (`ham PATH` / `spam PATH` per line,
/// paths relative to `root`).
pub fn load_list(list: &Path, root: &Path) -> io::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(list)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut parts = line.split_whitespace();
        let (Some(label), Some(rel)) = (parts.next(), parts.next()) else {
            continue;
        };
        let is_spam = match label {
            "spam" => true,
            "ham" => false,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}:{}: label `{other}` is not ham or spam",
                        list.display(),
                        n + 1
                    ),
                ))
            }
        };
        out.push(Sample {
            name: rel.to_string(),
            is_spam,
            bytes: std::fs::read(root.join(rel))?,
        });
    }
    Ok(out)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "tmp" || name == "cmds" {
            continue;
        }
        collect_files(&entry.path(), out)?;
    }
    Ok(())
}

fn is_mbox(bytes: &[u8]) -> bool {
    // A single message saved with its envelope line is not an mbox: an
    // mbox has a second `From ` line at the start of a line.
    bytes.starts_with(b"From ") && bytes.windows(6).skip(1).any(|w| w == b"\nFrom ")
}

/// Splits an mbox (mboxrd: `>From ` unquoted) into messages.
pub fn split_mbox(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some(m) = current.take() {
                out.push(m);
            }
            current = Some(Vec::new());
            continue;
        }
        let Some(m) = current.as_mut() else { continue };
        let unquoted = line.iter().position(|&b| b != b'>').map_or(line, |i| {
            if i > 0 && line[i..].starts_with(b"From ") {
                &line[1..]
            } else {
                line
            }
        });
        m.extend_from_slice(unquoted);
    }
    if let Some(m) = current {
        out.push(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_splits_and_unquotes() {
        let mbox = b"From a@b Mon Jan 1 00:00:00 2024\nSubject: one\n\n>From here\n\nFrom c@d Mon Jan 1 00:00:00 2024\nSubject: two\n\nbody\n";
        let m = split_mbox(mbox);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], b"Subject: one\n\nFrom here\n\n".to_vec());
        assert!(is_mbox(mbox));
        assert!(!is_mbox(b"From a@b x\nSubject: one\n\nbody\n"));
    }
}
