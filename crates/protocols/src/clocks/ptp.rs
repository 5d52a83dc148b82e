//! PTP offset and mean path delay (IEEE 1588-2008 §11.3, the delay request-response
//! mechanism, with a two-step master).
//!
//! The master sends Sync, leaving at t1 by its clock and arriving at t2 by the slave's; in
//! a two-step master the exact t1 follows in a Follow_Up. The slave sends Delay_Req at t3
//! by its clock; the master notes its arrival, t4, and returns it in Delay_Resp. With
//! `offset = slave − master` and one-way delays `d_ms`, `d_sm`:
//!
//! ```text
//! t2 − t1 = d_ms + offset        t4 − t3 = d_sm − offset
//! ```
//!
//! Two equations, and with `d_ms = d_sm` (or a known asymmetry) two unknowns: both come out
//! of the same four timestamps, and neither is usable before all four are in.

use super::ntp::ClockOffset;
use serde::{Deserialize, Serialize};
use synod_core::Instant;

/// The four timestamps of one Sync / Delay_Req round.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct PtpTimestamps {
    /// t1: Sync left the master (master's clock; carried by Follow_Up).
    pub sync_sent: Instant,
    /// t2: Sync reached the slave (slave's clock).
    pub sync_received: Instant,
    /// t3: Delay_Req left the slave (slave's clock).
    pub delay_request_sent: Instant,
    /// t4: Delay_Req reached the master (master's clock; carried by Delay_Resp).
    pub delay_request_received: Instant,
}

/// What one round measured, in IEEE 1588's terms and signs, in nanoseconds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct PtpMeasurement {
    /// `offsetFromMaster`: the slave's clock minus the master's, ns. The slave corrects by
    /// subtracting it.
    pub offset_from_master: i128,
    /// `meanPathDelay`: the mean of the two one-way delays, ns. Negative only for
    /// inconsistent timestamps.
    pub mean_path_delay: i128,
}

impl PtpMeasurement {
    /// The same offset in [`ClockOffset`]'s convention: `master = slave + master_offset`.
    pub fn master_offset(&self) -> ClockOffset {
        ClockOffset(-self.offset_from_master)
    }
}

impl PtpTimestamps {
    /// Offset and mean path delay, assuming equal delays in the two directions:
    /// `meanPathDelay = ((t2 − t1) + (t4 − t3)) / 2` and
    /// `offsetFromMaster = ((t2 − t1) − (t4 − t3)) / 2` (§11.3.2 and §11.2).
    pub fn measure(&self) -> PtpMeasurement {
        self.measure_with_asymmetry(0)
    }

    /// As [`PtpTimestamps::measure`], correcting for a known `delay_asymmetry` in ns
    /// (§7.4.2: master-to-slave delay = mean + asymmetry, slave-to-master delay = mean −
    /// asymmetry). The mean path delay is unaffected; the offset is less the asymmetry.
    pub fn measure_with_asymmetry(&self, delay_asymmetry: i64) -> PtpMeasurement {
        let master_to_slave = nanos(self.sync_received) - nanos(self.sync_sent);
        let slave_to_master = nanos(self.delay_request_received) - nanos(self.delay_request_sent);
        PtpMeasurement {
            offset_from_master: (master_to_slave - slave_to_master).div_euclid(2)
                - i128::from(delay_asymmetry),
            mean_path_delay: (master_to_slave + slave_to_master).div_euclid(2),
        }
    }
}

fn nanos(instant: Instant) -> i128 {
    i128::from(instant.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round where the slave's clock reads `offset` ns more than the master's.
    fn round(offset: i64, master_to_slave: u64, slave_to_master: u64) -> PtpTimestamps {
        let slave = |master: u64| Instant(master.checked_add_signed(offset).expect("test range"));
        let t1 = 1_000_000_000;
        let t2_master = t1 + master_to_slave;
        let t3_master = t2_master + 5_000_000;
        PtpTimestamps {
            sync_sent: Instant(t1),
            sync_received: slave(t2_master),
            delay_request_sent: slave(t3_master),
            delay_request_received: Instant(t3_master + slave_to_master),
        }
    }

    #[test]
    fn symmetric_path_gives_exact_offset_and_delay() {
        let measured = round(-250_000, 100_000, 100_000).measure();
        assert_eq!(
            measured,
            PtpMeasurement {
                offset_from_master: -250_000,
                mean_path_delay: 100_000,
            }
        );
        assert_eq!(measured.master_offset(), ClockOffset(250_000));
    }

    #[test]
    fn known_asymmetry_is_corrected() {
        // 130 µs master→slave, 70 µs back: mean 100 µs, asymmetry +30 µs.
        let stamps = round(40_000, 130_000, 70_000);
        assert_eq!(
            stamps.measure().offset_from_master,
            70_000,
            "biased by the asymmetry"
        );
        let corrected = stamps.measure_with_asymmetry(30_000);
        assert_eq!(corrected.offset_from_master, 40_000);
        assert_eq!(corrected.mean_path_delay, 100_000);
    }

    #[test]
    fn chapter_sketch_offset_is_wrong_before_the_path_delay_is_measured() {
        // The chapter's sync_phase: master_offset = t2 − t1 − path_delay, with path_delay
        // still at its initial 0 because delay_phase has not run yet.
        let true_offset = 0;
        let one_way_delay = 100_000;
        let stamps = round(true_offset, one_way_delay, one_way_delay);
        let chapter_path_delay = 0i128;
        let chapter_offset =
            nanos(stamps.sync_received) - nanos(stamps.sync_sent) - chapter_path_delay;
        assert_eq!(chapter_offset, 100_000, "off by the whole one-way delay");
        // Computing both from one complete round has no such window.
        assert_eq!(stamps.measure().offset_from_master, i128::from(true_offset));
        // Once a delay phase has run, the chapter's formula agrees on a symmetric path.
        let measured_path_delay = stamps.measure().mean_path_delay;
        assert_eq!(
            nanos(stamps.sync_received) - nanos(stamps.sync_sent) - measured_path_delay,
            i128::from(true_offset)
        );
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let stamps = PtpTimestamps {
            sync_sent: Instant(0),
            sync_received: Instant(u64::MAX),
            delay_request_sent: Instant(0),
            delay_request_received: Instant(u64::MAX),
        };
        let measured = stamps.measure_with_asymmetry(i64::MIN);
        assert_eq!(measured.mean_path_delay, i128::from(u64::MAX));
        assert_eq!(measured.offset_from_master, -i128::from(i64::MIN));
    }
}
