//! Resilience: circuit breaking, outlier ejection, retries with backoff and a budget,
//! deadlines, and hedging. Each piece is a plain value driven by the caller's clock.

mod breaker;
mod deadline;
mod hedge;
mod outlier;
mod retry;
mod window;

pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker, Permit};
pub use deadline::{
    format_grpc_timeout, parse_grpc_timeout, parse_timeout_millis, Deadline, DeadlineError,
    GRPC_TIMEOUT_HEADER, TIMEOUT_HEADER,
};
pub use hedge::{HedgeDelay, HedgePolicy};
pub use outlier::{OutlierConfig, OutlierDetector, OutlierEvent};
pub use retry::{Backoff, BudgetConfig, RetryBudget};
