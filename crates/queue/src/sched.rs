//! In-memory scheduler: which messages are due, which are waiting for their
//! next attempt (timer heap), which are active (handed out) or held.
//!
//! The writer thread updates it after each commit, so it never runs ahead of
//! what is durable.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use crate::QueueId;

#[derive(Debug)]
struct Entry {
    /// Handed out by `next_due`, not yet recorded/released.
    active: bool,
    held: bool,
    /// `None`: due now. `Some(t)`: waiting in the timer heap until `t`.
    at: Option<Instant>,
}

#[derive(Default)]
struct State {
    entries: HashMap<QueueId, Entry>,
    /// Candidates that are due now; validated against `entries` when popped.
    due: VecDeque<QueueId>,
    /// (time, id); entries whose `at` no longer matches are stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, QueueId)>>,
}

pub(crate) struct Sched {
    state: Mutex<State>,
    pub(crate) notify: Notify,
}

/// What a committed write does to the schedule.
#[derive(Debug)]
pub(crate) enum Effect {
    None,
    /// New message (or released from hold): due now.
    Due(QueueId),
    Remove(QueueId),
    /// Attempt recorded, message kept: waiting until the given time.
    Reschedule(QueueId, SystemTime),
    Hold(QueueId),
}

pub(crate) fn instant_for(t: SystemTime) -> Instant {
    let now = Instant::now();
    match t.duration_since(SystemTime::now()) {
        Ok(d) => now
            .checked_add(d)
            .unwrap_or(now + Duration::from_secs(86400 * 365)),
        Err(_) => now,
    }
}

impl Sched {
    pub(crate) fn new() -> Sched {
        Sched {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads a message at open time.
    pub(crate) fn load(&self, id: QueueId, held: bool) {
        let mut st = self.lock();
        st.entries.insert(
            id,
            Entry {
                active: false,
                held,
                at: None,
            },
        );
        if !held {
            st.due.push_back(id);
        }
    }

    pub(crate) fn apply(&self, effects: impl IntoIterator<Item = Effect>) {
        let mut st = self.lock();
        let mut wake = 0usize;
        for effect in effects {
            match effect {
                Effect::None => {}
                Effect::Due(id) => {
                    let e = st.entries.entry(id).or_insert(Entry {
                        active: false,
                        held: false,
                        at: None,
                    });
                    e.held = false;
                    e.at = None;
                    if !e.active {
                        st.due.push_back(id);
                        wake += 1;
                    }
                }
                Effect::Remove(id) => {
                    st.entries.remove(&id);
                }
                Effect::Reschedule(id, t) => {
                    if let Some(e) = st.entries.get_mut(&id) {
                        e.active = false;
                        let at = instant_for(t);
                        e.at = Some(at);
                        if push_timer(&mut st, at, id) {
                            wake += 1;
                        }
                    }
                }
                Effect::Hold(id) => {
                    if let Some(e) = st.entries.get_mut(&id) {
                        e.held = true;
                    }
                }
            }
        }
        drop(st);
        for _ in 0..wake.min(64) {
            self.notify.notify_one();
        }
    }

    /// Takes one due message, or returns the next timer deadline (if any).
    pub(crate) fn take_due(&self) -> Result<QueueId, Option<Instant>> {
        let now = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        while let Some(&Reverse((at, id))) = st.timers.peek() {
            if at > now {
                break;
            }
            st.timers.pop();
            if let Some(e) = st.entries.get_mut(&id) {
                if e.at == Some(at) {
                    e.at = None;
                    if !e.active && !e.held {
                        st.due.push_back(id);
                    }
                }
            }
        }
        while let Some(id) = st.due.pop_front() {
            if let Some(e) = st.entries.get_mut(&id) {
                if !e.active && !e.held && e.at.is_none() {
                    e.active = true;
                    if !st.due.is_empty() {
                        // Pass the baton to another waiting worker.
                        self.notify.notify_one();
                    }
                    return Ok(id);
                }
            }
        }
        // Drop stale timers at the top so waiters don't wake for nothing.
        while let Some(&Reverse((at, id))) = st.timers.peek() {
            match st.entries.get(&id) {
                Some(e) if e.at == Some(at) && !e.held => return Err(Some(at)),
                _ => {
                    st.timers.pop();
                }
            }
        }
        Err(None)
    }

    /// Attempt abandoned: due again after `delay`.
    pub(crate) fn release_active(&self, id: QueueId, delay: Duration) {
        let mut st = self.lock();
        let at = Instant::now() + delay;
        let wake = match st.entries.get_mut(&id) {
            Some(e) if e.active => {
                e.active = false;
                e.at = Some(at);
                true
            }
            _ => false,
        };
        if wake && push_timer(&mut st, at, id) {
            drop(st);
            self.notify.notify_one();
        }
    }

    /// Every waiting message due now.
    pub(crate) fn flush(&self) {
        let mut st = self.lock();
        let st = &mut *st;
        for (id, e) in st.entries.iter_mut() {
            if e.at.is_some() {
                e.at = None;
                if !e.active && !e.held {
                    st.due.push_back(*id);
                }
            }
        }
        st.timers.clear();
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    #[cfg(test)]
    pub(crate) fn is_active(&self, id: QueueId) -> bool {
        self.lock().entries.get(&id).is_some_and(|e| e.active)
    }
}

/// Pushes a timer; true if it became the earliest (waiters must re-arm).
fn push_timer(st: &mut State, at: Instant, id: QueueId) -> bool {
    let earliest = st.timers.peek().is_none_or(|Reverse((t, _))| at < *t);
    st.timers.push(Reverse((at, id)));
    earliest
}
