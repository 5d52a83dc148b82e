//! `synod`: run, test, compare and benchmark distributed algorithms.
//!
//! One verb per thing a user does. Everything under `synod sim` runs in the deterministic
//! simulator: the same `--seed` replays the same run exactly.
// The CLI is a driver: it may read the wall clock (benchmarks, progress).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod admin_http;
mod agent;
mod ap;
mod args;
mod bench;
mod bench_ap;
mod bench_etcd;
mod bench_net;
mod check;
mod cluster;
mod compare;
mod job;
mod job_cluster;
mod kv;
mod members;
mod mesh;
mod registry;
mod run;
mod sim;
mod sim_bank;
mod sim_chord;
mod sim_clock_sync;
mod sim_dynamo;
mod sim_mapreduce;
mod sim_mvcc;
mod sim_paxos;
mod sim_raft;
mod sim_swim;
mod sim_twopc;
mod stream;
mod stream_cluster;
mod svc;
mod txn;

use clap::{Parser, Subcommand};

/// A distributed-systems workbench: every classic algorithm as a deterministic state
/// machine, run under a seeded fault-injecting simulator with checkers.
#[derive(Debug, Parser)]
#[command(name = "synod", version, about, long_about = None)]
struct Cli {
    /// Log filter for tracing output on stderr, e.g. `info` or `synod_sim=debug`.
    #[arg(long, global = true, default_value = "warn", env = "SYNOD_LOG")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local cluster of separate node processes under ./.synod/ and return.
    Up(cluster::UpCommand),
    /// Stop the local cluster (SIGTERM, then SIGKILL after 10 s).
    Down(cluster::DirFlag),
    /// Show each node of the local cluster: state, incarnation, peers, clock offset.
    Status(cluster::DirFlag),
    /// Run one node in the foreground (what `synod up` starts, once per node).
    Node(cluster::NodeCommand),
    /// Create the cluster CA and node certificates for mutual TLS.
    Certs(cluster::CertsCommand),
    /// Show each node's SWIM membership view: every member's status and incarnation.
    Members(members::MembersCommand),
    /// Run a protocol in the deterministic simulator.
    Sim(sim::SimCommand),
    /// Measure performance (results belong in BENCHMARKS.md).
    Bench(bench::BenchCommand),
    /// Check a recorded history (JSONL) for linearizability.
    Check(check::CheckCommand),
    /// Read, write and delete in the Dynamo-style AP store (`synod up --ap`).
    Ap(ap::ApCommand),
    /// Read and write the cluster's replicated (Raft) KV store.
    Kv(kv::KvCommand),
    /// Put and get keys on the Chord ring the cluster's nodes form.
    Dht(kv::DhtCommand),
    /// Compare algorithms of one family: measured costs beside the textbook figures.
    Compare(compare::CompareCommand),
    /// Run mutual exclusion or an election on the running cluster (`synod up`) and check it.
    Run(run::RunCommand),
    /// Service mesh: the sidecar proxy, a test backend, and the load-balancing demo.
    Mesh(mesh::MeshCommand),
    /// Service registry: register, deregister and list instances in the cluster.
    Svc(svc::SvcCommand),
    /// Stream processing: run the built-in jobs with exactly-once checkpoints.
    Stream(stream::StreamCommand),
    /// MapReduce jobs: run one, run a worker, generate input, run a reference.
    Job(job::JobCommand),
    /// Transactions across the multi-Raft ranges of the running cluster (synod up --ranges).
    Txn(txn::TxnCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Up(cmd) => cluster::up(cmd),
        Command::Down(cmd) => cluster::down(cmd),
        Command::Status(cmd) => cluster::status(cmd),
        Command::Node(cmd) => cluster::node(cmd),
        Command::Certs(cmd) => cluster::certs(cmd),
        Command::Members(cmd) => members::run(cmd),
        Command::Sim(cmd) => sim::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Check(cmd) => check::run(cmd),
        Command::Compare(cmd) => compare::run(cmd),
        Command::Ap(cmd) => ap::run(cmd),
        Command::Kv(cmd) => kv::run(cmd),
        Command::Dht(cmd) => kv::dht(cmd),
        Command::Mesh(cmd) => mesh::run(cmd),
        Command::Svc(cmd) => svc::run(cmd),
        Command::Stream(cmd) => stream::run(cmd),
        Command::Run(cmd) => run::run(cmd),
        Command::Job(cmd) => job::run(cmd),
        Command::Txn(cmd) => txn::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// The error and its causes, `: `-separated, leaving out a cause whose text the message
/// already holds (many error types print their source in their own message too).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        // An error that prints its source and also reports it as its source.
        #[derive(Debug)]
        struct Bind(std::io::Error);
        impl std::fmt::Display for Bind {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "admin endpoint: {}", self.0)
            }
        }
        impl std::error::Error for Bind {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = anyhow::Error::new(Bind(io)).context("starting n1");
        assert_eq!(
            error_chain(&e),
            "starting n1: admin endpoint: Address already in use"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&plain), "outer: inner");
    }
}
