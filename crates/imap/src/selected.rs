//! The selected mailbox as one session sees it: message sequence numbers, UIDs, flags and
//! \Recent, and how the view catches up with the store (RFC 3501 §5.2, §7.4.1).
//!
//! The view is a snapshot of the folder's index (no bodies). `sync` diffs it against a fresh
//! listing and reports the differences as untagged EXPUNGE (highest sequence number first, so
//! each number is still valid when the client applies it), FETCH (FLAGS) and EXISTS/RECENT.

use std::time::SystemTime;

use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use palisade_mailbox::MessageMeta;

use crate::wire;

#[derive(Debug, Clone)]
pub struct Entry {
    pub uid: u32,
    pub flags: Vec<String>,
    pub size: u64,
    pub date: SystemTime,
    pub recent: bool,
}

impl Entry {
    pub fn from_meta(m: MessageMeta, recent: bool) -> Entry {
        Entry {
            uid: m.uid,
            flags: m.flags,
            size: m.size,
            date: m.internal_date,
            recent,
        }
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }
}

pub struct Selected {
    pub folder: String,
    pub read_only: bool,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub msgs: Vec<Entry>,
}

fn resolve_value(v: &SeqOrUid, largest: u32) -> u32 {
    match v {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => largest,
    }
}

/// `(low, high)` bounds of every element of a sequence set, `*` being `largest`.
pub fn bounds(set: &SequenceSet, largest: u32) -> Vec<(u32, u32)> {
    set.0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(v) => {
                let v = resolve_value(v, largest);
                (v, v)
            }
            Sequence::Range(a, b) => {
                let (a, b) = (resolve_value(a, largest), resolve_value(b, largest));
                (a.min(b), a.max(b))
            }
        })
        .collect()
}

pub fn set_contains(bounds: &[(u32, u32)], v: u32) -> bool {
    bounds.iter().any(|&(lo, hi)| lo <= v && v <= hi)
}

impl Selected {
    pub fn largest_uid(&self) -> u32 {
        self.msgs.last().map_or(0, |m| m.uid)
    }

    /// Indices (0-based) of the messages a sequence set names, ascending and without repeats.
    /// Sequence numbers beyond the mailbox are ignored; in UID mode `n:*` always includes the
    /// highest UID (RFC 3501 §6.4.8).
    pub fn resolve(&self, set: &SequenceSet, uid_mode: bool) -> Vec<usize> {
        let mut out = Vec::new();
        if self.msgs.is_empty() {
            return out;
        }
        let largest = if uid_mode {
            self.largest_uid()
        } else {
            self.msgs.len() as u32
        };
        for (lo, hi) in bounds(set, largest) {
            if uid_mode {
                let start = self.msgs.partition_point(|m| m.uid < lo);
                let end = self.msgs.partition_point(|m| m.uid <= hi);
                out.extend(start..end);
            } else {
                let hi = hi.min(self.msgs.len() as u32);
                if lo >= 1 && lo <= hi {
                    out.extend((lo - 1) as usize..hi as usize);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn index_of_uid(&self, uid: u32) -> Option<usize> {
        self.msgs.binary_search_by_key(&uid, |m| m.uid).ok()
    }

    /// Removes the messages with these UIDs from the view, writing `* n EXPUNGE` for each,
    /// highest sequence number first.
    pub fn expunge_uids(&mut self, uids: &[u32], out: &mut Vec<u8>) {
        let mut idx: Vec<usize> = uids.iter().filter_map(|&u| self.index_of_uid(u)).collect();
        idx.sort_unstable();
        idx.dedup();
        for &i in idx.iter().rev() {
            out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
            self.msgs.remove(i);
        }
    }

    /// Catches the view up with `fresh` (the folder's current listing, UID order).
    /// `allow_expunge` is false during FETCH/STORE/SEARCH, where RFC 3501 §7.4.1 forbids
    /// EXPUNGE responses (a vanished message then stays in the view until a later command).
    /// `claim_recent(uid)` says whether a newly seen message is \Recent for this session.
    pub fn sync(
        &mut self,
        fresh: Vec<MessageMeta>,
        uidnext: u32,
        allow_expunge: bool,
        mut claim_recent: impl FnMut(u32) -> bool,
        out: &mut Vec<u8>,
    ) {
        if allow_expunge {
            let mut gone = Vec::new();
            let mut j = 0;
            for m in &self.msgs {
                while j < fresh.len() && fresh[j].uid < m.uid {
                    j += 1;
                }
                if j >= fresh.len() || fresh[j].uid != m.uid {
                    gone.push(m.uid);
                }
            }
            self.expunge_uids(&gone, out);
        }
        let last_known = self.largest_uid();
        let mut added = false;
        let mut j = 0;
        for f in fresh {
            if f.uid > last_known {
                let recent = claim_recent(f.uid);
                self.msgs.push(Entry::from_meta(f, recent));
                added = true;
                continue;
            }
            while j < self.msgs.len() && self.msgs[j].uid < f.uid {
                j += 1;
            }
            if j < self.msgs.len() && self.msgs[j].uid == f.uid && self.msgs[j].flags != f.flags {
                self.msgs[j].flags = f.flags;
                let e = &self.msgs[j];
                out.extend_from_slice(format!("* {} FETCH (FLAGS ", j + 1).as_bytes());
                wire::flag_list(out, &e.flags, e.recent);
                out.extend_from_slice(b")\r\n");
            }
        }
        if added {
            let recent = self.msgs.iter().filter(|m| m.recent).count();
            out.extend_from_slice(
                format!("* {} EXISTS\r\n* {recent} RECENT\r\n", self.msgs.len()).as_bytes(),
            );
        }
        self.uidnext = self.uidnext.max(uidnext);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn meta(uid: u32, flags: &[&str]) -> MessageMeta {
        MessageMeta {
            uid,
            size: 10,
            flags: flags.iter().map(|s| s.to_string()).collect(),
            internal_date: UNIX_EPOCH,
        }
    }

    fn view(uids: &[u32]) -> Selected {
        Selected {
            folder: "INBOX".into(),
            read_only: false,
            uidvalidity: 1,
            uidnext: 100,
            msgs: uids
                .iter()
                .map(|&u| Entry::from_meta(meta(u, &[]), false))
                .collect(),
        }
    }

    #[test]
    fn resolves_sequence_numbers_and_uids() {
        let v = view(&[3, 5, 9, 12]);
        let set: SequenceSet = "2:*".try_into().unwrap();
        assert_eq!(v.resolve(&set, false), vec![1, 2, 3]);
        let set: SequenceSet = "4:10".try_into().unwrap();
        assert_eq!(v.resolve(&set, true), vec![1, 2]);
        // n:* in UID mode always includes the highest UID, even when n is above it.
        let set: SequenceSet = "50:*".try_into().unwrap();
        assert_eq!(v.resolve(&set, true), vec![3]);
        let set: SequenceSet = "7,1,1".try_into().unwrap();
        assert_eq!(v.resolve(&set, false), vec![0]);
    }

    #[test]
    fn sync_reports_expunges_descending_then_exists() {
        let mut v = view(&[3, 5, 9, 12]);
        let mut out = Vec::new();
        v.sync(
            vec![meta(5, &["\\Seen"]), meta(12, &[]), meta(13, &[])],
            14,
            true,
            |_| true,
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "* 3 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 FETCH (FLAGS (\\Seen))\r\n* 3 EXISTS\r\n* 1 RECENT\r\n"
        );
        assert_eq!(
            v.msgs.iter().map(|m| m.uid).collect::<Vec<_>>(),
            vec![5, 12, 13]
        );
    }

    #[test]
    fn sync_without_expunge_keeps_vanished_messages() {
        let mut v = view(&[3, 5]);
        let mut out = Vec::new();
        v.sync(vec![meta(5, &[])], 6, false, |_| false, &mut out);
        assert!(out.is_empty());
        assert_eq!(v.msgs.len(), 2);
    }
}
