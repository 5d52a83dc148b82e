//! Automatic compaction of MVCC history: etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention`, for the single MVCC group and for the ranges.
//!
//! Semantics follow etcd v3.4 (op-guide "Maintenance — History compaction" and the
//! v3.3.3 changelog entry "Adjust periodic compaction retention window"):
//!
//! - `revision` mode, retention *N*: every 5 minutes, compact at "latest revision − N"
//!   (latest 30000, retention 1000: compact at 29000).
//! - `periodic` mode, retention *D* (a duration such as `72h` or `30m`; a bare number is
//!   hours): the compactor runs every *D* when *D* is under an hour, else every hour,
//!   and each run compacts at the last revision it *recorded* at least *D* ago, so the
//!   retention window is *D* whatever the period. Revisions are recorded every tenth of
//!   the period.
//!
//! Only the leader compacts (etcd pauses its compactor on followers); a node that
//! loses leadership forgets its records, as etcd's `Pause`/`Resume` restart the window.
//! A compaction that finds the revision already compacted counts as done.
//!
//! [`Compactor`] is the policy alone, driven by [`Compactor::tick`] with the time and
//! the current revision, so it is tested without a cluster.

use std::collections::VecDeque;
use std::time::Duration;

/// etcd's interval between revision-mode compactions.
pub const REVISION_CHECK: Duration = Duration::from_secs(300);
/// The longest period between periodic compactions.
const HOUR: Duration = Duration::from_secs(3600);

/// What `--auto-compaction-mode`/`--auto-compaction-retention` ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revision(u64),
}

impl AutoCompaction {
    /// Parse etcd's flag pair. `None` when compaction is off (retention 0 or empty, as in
    /// etcd). The mode defaults to `periodic`, as etcd's does.
    pub fn parse(mode: Option<&str>, retention: &str) -> Result<Option<Self>, String> {
        let retention = retention.trim();
        let mode = mode.map(str::trim).unwrap_or("periodic");
        match mode {
            "periodic" => {
                let d = parse_retention_duration(retention)?;
                Ok((!d.is_zero()).then_some(AutoCompaction::Periodic(d)))
            }
            "revision" => {
                let n: u64 = retention.parse().map_err(|_| {
                    format!(
                        "auto-compaction-retention `{retention}` must be a number of revisions \
                         in revision mode"
                    )
                })?;
                Ok((n > 0).then_some(AutoCompaction::Revision(n)))
            }
            other => Err(format!(
                "auto-compaction-mode `{other}` must be `periodic` or `revision`"
            )),
        }
    }
}

/// A periodic retention: a bare number is hours (etcd), else a number with a unit
/// (`ms`, `s`, `m`, `h`), possibly several (`1h30m`).
fn parse_retention_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "auto-compaction-retention `{s}` must be hours (a number) or a duration such as \
             72h, 30m, 10s"
        )
    };
    if s.is_empty() {
        return Ok(Duration::ZERO);
    }
    if let Ok(hours) = s.parse::<u64>() {
        return hours
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(bad);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// The compaction policy of one node while it leads.
#[derive(Debug, Clone)]
pub struct Compactor {
    policy: AutoCompaction,
    revision_check: Duration,
    /// `(when, revision)` recorded every tenth of the period, oldest first.
    records: VecDeque<(Duration, i64)>,
    /// When the current leadership began (the first tick), and the last run.
    started: Option<Duration>,
    last_run: Option<Duration>,
    /// The highest revision this compactor asked for.
    compacted: i64,
}

impl Compactor {
    /// A compactor for `policy`; revision mode runs every `revision_check` (etcd: 5 min).
    pub fn new(policy: AutoCompaction, revision_check: Duration) -> Self {
        Compactor {
            policy,
            revision_check,
            records: VecDeque::new(),
            started: None,
            last_run: None,
            compacted: 0,
        }
    }

    /// How often a periodic compactor runs: the retention, at most an hour.
    fn period(&self) -> Duration {
        match self.policy {
            AutoCompaction::Periodic(d) => d.min(HOUR),
            AutoCompaction::Revision(_) => self.revision_check,
        }
    }

    /// This node stopped leading: forget the window (etcd's `Pause`).
    pub fn pause(&mut self) {
        self.records.clear();
        self.started = None;
        self.last_run = None;
    }

    /// Called often (every few ms to a second) on the leader, with a monotonic `now` and
    /// the current revision: the revision to compact at, if a run is due.
    pub fn tick(&mut self, now: Duration, revision: i64) -> Option<i64> {
        let started = *self.started.get_or_insert(now);
        let period = self.period();
        let due = now.saturating_sub(self.last_run.unwrap_or(started)) >= period;
        let target = match self.policy {
            AutoCompaction::Revision(keep) => {
                if !due {
                    return None;
                }
                self.last_run = Some(now);
                revision.saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX))
            }
            AutoCompaction::Periodic(retention) => {
                let sample_every = (period / 10).max(Duration::from_millis(1));
                if self
                    .records
                    .back()
                    .is_none_or(|(t, _)| now.saturating_sub(*t) >= sample_every)
                {
                    self.records.push_back((now, revision));
                }
                if !due {
                    return None;
                }
                self.last_run = Some(now);
                // The newest revision recorded at least `retention` ago; the records
                // older than it are no longer needed.
                let cutoff = now.checked_sub(retention)?;
                let mut found = None;
                while let Some((t, r)) = self.records.front().copied() {
                    if t > cutoff {
                        break;
                    }
                    found = Some(r);
                    self.records.pop_front();
                }
                if let Some(r) = found {
                    // Keep it as the floor of the next window.
                    self.records.push_front((cutoff, r));
                }
                found?
            }
        };
        (target > self.compacted && target > 0).then(|| {
            self.compacted = target;
            target
        })
    }

    /// The cluster was already compacted at or past `revision` (by a client or an
    /// earlier leader): do not ask for anything below it again.
    pub fn compacted_at(&mut self, revision: i64) {
        self.compacted = self.compacted.max(revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn flags_parse_as_etcd_reads_them() {
        let p = |m: Option<&str>, r: &str| AutoCompaction::parse(m, r);
        assert_eq!(p(None, "1"), Ok(Some(AutoCompaction::Periodic(secs(3600)))));
        assert_eq!(
            p(Some("periodic"), "72h"),
            Ok(Some(AutoCompaction::Periodic(secs(72 * 3600))))
        );
        assert_eq!(
            p(Some("periodic"), "1h30m"),
            Ok(Some(AutoCompaction::Periodic(secs(5400))))
        );
        assert_eq!(
            p(Some("periodic"), "500ms"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_millis(500))))
        );
        assert_eq!(
            p(Some("revision"), "1000"),
            Ok(Some(AutoCompaction::Revision(1000)))
        );
        assert_eq!(p(None, "0"), Ok(None));
        assert_eq!(p(Some("revision"), "0"), Ok(None));
        assert!(p(Some("revision"), "10m").is_err());
        assert!(p(Some("periodic"), "10x").is_err());
        assert!(p(Some("periodic"), "h").is_err());
        assert!(p(Some("hourly"), "1").is_err());
        assert!(p(None, "99999999999999999999h").is_err());
    }

    #[test]
    fn revision_mode_compacts_latest_minus_retention_every_check() {
        // etcd's example: latest 30000, retention 1000 -> compact at 29000.
        let mut c = Compactor::new(AutoCompaction::Revision(1000), secs(300));
        assert_eq!(c.tick(secs(0), 30_000), None);
        assert_eq!(c.tick(secs(299), 30_500), None);
        assert_eq!(c.tick(secs(300), 30_000), Some(29_000));
        // Nothing new: no second compaction at the same revision.
        assert_eq!(c.tick(secs(600), 30_000), None);
        assert_eq!(c.tick(secs(900), 31_500), Some(30_500));
        // Below the retention, nothing.
        let mut young = Compactor::new(AutoCompaction::Revision(1000), secs(300));
        young.tick(secs(0), 10);
        assert_eq!(young.tick(secs(300), 900), None);
    }

    #[test]
    fn periodic_mode_keeps_the_retention_window_and_runs_every_period() {
        // Retention 10 s (under an hour): runs every 10 s, records every second, and
        // compacts at the revision recorded 10 s before the run.
        let mut c = Compactor::new(AutoCompaction::Periodic(secs(10)), REVISION_CHECK);
        let mut compactions = Vec::new();
        for t in 0..=35 {
            // One revision per second.
            if let Some(r) = c.tick(secs(t), 100 + t as i64) {
                compactions.push((t, r));
            }
        }
        assert_eq!(compactions, vec![(10, 100), (20, 110), (30, 120)]);
        // A retention over an hour runs hourly and still keeps the whole window.
        let mut c = Compactor::new(AutoCompaction::Periodic(secs(3 * 3600)), REVISION_CHECK);
        let mut compactions = Vec::new();
        for minute in 0..=(5 * 60) {
            let t = secs(minute * 60);
            if let Some(r) = c.tick(t, minute as i64 + 1) {
                compactions.push((minute, r));
            }
        }
        // Hourly, each at the revision recorded three hours (180 minutes) before.
        assert_eq!(compactions, vec![(180, 1), (240, 61), (300, 121)]);
    }

    #[test]
    fn a_new_leader_starts_a_new_window_and_never_goes_below_a_known_compaction() {
        let mut c = Compactor::new(AutoCompaction::Periodic(secs(10)), REVISION_CHECK);
        for t in 0..15 {
            c.tick(secs(t), t as i64 + 1);
        }
        c.pause();
        // After the pause nothing is compacted until a whole window was recorded again.
        let mut first = None;
        for t in 15..30 {
            if let Some(r) = c.tick(secs(t), t as i64 + 1) {
                first = first.or(Some((t, r)));
            }
        }
        assert_eq!(first, Some((25, 16)));
        // A compaction done elsewhere (a client's, an earlier leader's) is a floor.
        c.compacted_at(1_000);
        for t in 30..60 {
            assert_eq!(c.tick(secs(t), t as i64 + 1), None, "at {t}");
        }
    }
}
