//! Failure detection: the φ accrual detector and RFC 6298 adaptive timeouts.
//!
//! Both are plain values that take the time or the sample as an argument, so they behave
//! the same under a test's fake clock and the proxy's real one.

mod phi;
mod rto;

pub use phi::{PhiAccrual, PhiConfig};
pub use rto::{RtoConfig, RtoEstimator};
