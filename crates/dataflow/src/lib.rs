//! Data processing on the cluster.
//!
//! - [`mapreduce`]: a MapReduce job runner after Dean & Ghemawat, "MapReduce: Simplified
//!   Data Processing on Large Clusters" (OSDI 2004).
//! - [`stream`]: a streaming dataflow with event time, windows, watermarks and exactly-once
//!   checkpoints, after Carbone et al., "Lightweight Asynchronous Snapshots for Distributed
//!   Dataflows" (2015) and Akidau et al., "The Dataflow Model" (VLDB 2015).

pub mod mapreduce;
pub mod stream;
