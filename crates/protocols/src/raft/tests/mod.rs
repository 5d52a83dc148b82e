//! Tests of the Raft actor: unit tests that cite Figure 2 and §5, and simulation tests.

mod figure8;
mod sim;
mod unit;
