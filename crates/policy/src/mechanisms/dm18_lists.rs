//! DM18 local blacklists and whitelists: client networks (CIDR) and sender
//! domains or addresses, from the config and from files an admin edits.
//! A file is re-read when its modification time changes (checked at most
//! once a second), so lists change without a restart. A broken line is
//! logged and skipped; a missing file is an empty list.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use palisade_config::Dm18Lists;
use tracing::warn;

use crate::net::Network;

/// What DM18 says about a client or sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    Black,
    White,
    No,
}

struct ListFile {
    path: PathBuf,
    checked: Option<Instant>,
    mtime: Option<SystemTime>,
    entries: Vec<String>,
}

impl ListFile {
    fn new(path: PathBuf) -> Self {
        ListFile {
            path,
            checked: None,
            mtime: None,
            entries: Vec::new(),
        }
    }

    fn current(&mut self) -> &[String] {
        let now = Instant::now();
        if self
            .checked
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return &self.entries;
        }
        self.checked = Some(now);
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime != self.mtime {
            self.mtime = mtime;
            self.entries = std::fs::read_to_string(&self.path)
                .map(|t| {
                    t.lines()
                        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect()
                })
                .unwrap_or_default();
        }
        &self.entries
    }
}

struct Source {
    inline: Vec<String>,
    file: Option<Mutex<ListFile>>,
}

impl Source {
    fn new(inline: &[String], file: &Option<PathBuf>) -> Self {
        Source {
            inline: inline.to_vec(),
            file: file.clone().map(|p| Mutex::new(ListFile::new(p))),
        }
    }

    fn any(&self, mut f: impl FnMut(&str) -> bool) -> bool {
        if self.inline.iter().any(|e| f(e)) {
            return true;
        }
        match &self.file {
            Some(file) => file.lock().unwrap().current().iter().any(|e| f(e)),
            None => false,
        }
    }
}

pub struct Lists {
    client_black: Source,
    client_white: Source,
    sender_black: Source,
    sender_white: Source,
}

fn ip_matches(entry: &str, ip: IpAddr) -> bool {
    match Network::parse(entry) {
        Ok(n) => n.contains(ip),
        Err(e) => {
            warn!("DM18: ignoring list entry: {e}");
            false
        }
    }
}

/// `user@domain` matches itself; `domain` matches the domain and its
/// subdomains; `@domain` only the domain.
fn sender_matches(entry: &str, sender: &str) -> bool {
    let entry = entry.to_ascii_lowercase();
    let sender = sender.to_ascii_lowercase();
    let domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    if let Some(d) = entry.strip_prefix('@') {
        return domain == d;
    }
    if entry.contains('@') {
        return entry == sender;
    }
    domain == entry || domain.ends_with(&format!(".{entry}"))
}

impl Lists {
    pub fn new(c: &Dm18Lists) -> Self {
        Lists {
            client_black: Source::new(&c.client_blacklist, &c.client_blacklist_file),
            client_white: Source::new(&c.client_whitelist, &c.client_whitelist_file),
            sender_black: Source::new(&c.sender_blacklist, &c.sender_blacklist_file),
            sender_white: Source::new(&c.sender_whitelist, &c.sender_whitelist_file),
        }
    }

    /// Whitelists win: an admin whitelists to override a broad blacklist.
    pub fn client(&self, ip: IpAddr) -> Listed {
        if self.client_white.any(|e| ip_matches(e, ip)) {
            Listed::White
        } else if self.client_black.any(|e| ip_matches(e, ip)) {
            Listed::Black
        } else {
            Listed::No
        }
    }

    pub fn sender(&self, sender: &str) -> Listed {
        if sender.is_empty() {
            return Listed::No;
        }
        if self.sender_white.any(|e| sender_matches(e, sender)) {
            Listed::White
        } else if self.sender_black.any(|e| sender_matches(e, sender)) {
            Listed::Black
        } else {
            Listed::No
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_file_lists_with_reload() {
        let dir = std::env::temp_dir().join(format!("dm18-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("black.txt");
        std::fs::write(&file, "# bad hosts\n198.51.100.0/24\n").unwrap();
        let lists = Lists::new(&Dm18Lists {
            client_blacklist_file: Some(file.clone()),
            client_whitelist: vec!["198.51.100.7".into()],
            sender_blacklist: vec!["spam.test".into(), "bad@ok.test".into()],
            ..Dm18Lists::default()
        });
        assert_eq!(lists.client("198.51.100.1".parse().unwrap()), Listed::Black);
        assert_eq!(lists.client("198.51.100.7".parse().unwrap()), Listed::White);
        assert_eq!(lists.client("203.0.113.1".parse().unwrap()), Listed::No);
        assert_eq!(lists.sender("x@mail.spam.test"), Listed::Black);
        assert_eq!(lists.sender("BAD@ok.test"), Listed::Black);
        assert_eq!(lists.sender("good@ok.test"), Listed::No);
        // The admin edits the file: the new list applies without restart.
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(&file, "203.0.113.0/24\n").unwrap();
        let t = std::time::SystemTime::now() + Duration::from_secs(2);
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(t).unwrap();
        assert_eq!(lists.client("203.0.113.1".parse().unwrap()), Listed::Black);
        assert_eq!(lists.client("198.51.100.1".parse().unwrap()), Listed::No);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
