//! Tests of the MVCC state machine: unit tests of etcd's semantics, a model-based
//! property test, and Raft simulations checked for linearizability.

mod model;
mod sim;
mod unit;
