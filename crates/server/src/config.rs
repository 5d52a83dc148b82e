//! The cluster file: one TOML document that describes every node of a cluster.
//!
//! ```toml
//! cluster_id = "local"
//! insecure = false          # plaintext; allowed only when every address is loopback
//! certs_dir = "certs"       # from `synod certs init`; relative to this file
//!
//! [tuning]
//! max_batch = 1024          # inputs per group-commit batch
//! inbox_capacity = 8192     # per actor; senders wait when full
//! heartbeat_ms = 500        # beacon interval
//! clock_poll_ms = 1000      # clock-sync poll interval
//!
//! [[nodes]]
//! id = 1
//! peer_addr = "127.0.0.1:7001"
//! client_addr = "127.0.0.1:2379"
//! admin_addr = "127.0.0.1:9001"
//! data_dir = "n1"           # relative to this file
//! ```

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use synod_core::NodeId;
use thiserror::Error;

/// A problem with the cluster file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read cluster file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a cluster.
    #[error("cluster file {path} is malformed: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parses but describes an impossible cluster.
    #[error("cluster file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A node id on the command line is not `n<number>` or a number.
    #[error("`{0}` is not a node id: use n1, n2, ... or 1, 2, ...")]
    BadNodeId(String),
    /// The requested node is not in the file.
    #[error("node {node} is not in cluster file {path}")]
    UnknownNode {
        /// The node asked for.
        node: NodeId,
        /// The file.
        path: PathBuf,
    },
}

/// Tuning knobs; every one has a default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    /// Inputs per group-commit batch.
    pub max_batch: usize,
    /// Capacity of each actor's inbox.
    pub inbox_capacity: usize,
    /// Beacon heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// Clock-sync poll interval, in milliseconds.
    pub clock_poll_ms: u64,
    /// Raft's least election timeout, in milliseconds; each timeout is drawn from
    /// `[t, 2t)`.
    pub election_ms: u64,
    /// Raft leader heartbeat interval, in milliseconds.
    pub raft_heartbeat_ms: u64,
    /// How long a client request may take before it fails with "request timed out".
    pub request_timeout_ms: u64,
    /// How often watchers created with progress_notify hear the current revision when
    /// nothing else happens (etcd's default is 10 minutes).
    pub watch_progress_notify_ms: u64,
    /// Applied entries between Raft snapshots, after which the log before them is
    /// discarded (etcd's `--snapshot-count`).
    pub snapshot_entries: u64,
    /// How often `auto_compaction_mode = "revision"` compacts (etcd: fixed 5 minutes).
    pub auto_compaction_revision_check_ms: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_batch: 1024,
            inbox_capacity: 8192,
            heartbeat_ms: 500,
            clock_poll_ms: 1000,
            // etcd's defaults are 1000 ms and 100 ms; with fsync on a shared disk in
            // the path of every heartbeat answer, 300 ms keeps failover short without
            // spurious elections.
            election_ms: 300,
            raft_heartbeat_ms: 50,
            request_timeout_ms: 7000,
            watch_progress_notify_ms: 600_000,
            snapshot_entries: 100_000,
            auto_compaction_revision_check_ms: 300_000,
        }
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's id, a positive number.
    pub id: u32,
    /// Where peers reach it.
    pub peer_addr: SocketAddr,
    /// Where clients reach it (the etcd-compatible API).
    pub client_addr: SocketAddr,
    /// Admin HTTP: `/status` and `/metrics`.
    pub admin_addr: SocketAddr,
    /// Its data directory, relative to the cluster file.
    pub data_dir: PathBuf,
}

/// A whole cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's id: a DNS label; nodes of different clusters refuse each other.
    pub cluster_id: String,
    /// Plaintext between nodes. Refused unless every address is loopback.
    #[serde(default)]
    pub insecure: bool,
    /// Run the Dynamo-style AP store on every node (`synod up --ap`).
    #[serde(default)]
    pub ap: bool,
    /// Run the multi-Raft ranges and cross-range transactions (`synod up --ranges`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<crate::txn::RangesConfig>,
    /// etcd's `--auto-compaction-mode`: `periodic` (the default) or `revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction_mode: Option<String>,
    /// etcd's `--auto-compaction-retention`: in periodic mode a duration (`72h`, `30m`;
    /// a bare number is hours), in revision mode a number of revisions; `0` or absent:
    /// no automatic compaction. See `synod_server::etcd::compactor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction_retention: Option<String>,
    /// Directory of `ca.pem` and `n<id>.pem`/`n<id>.key`, relative to the cluster file.
    #[serde(default = "default_certs_dir")]
    pub certs_dir: PathBuf,
    /// Tuning.
    #[serde(default)]
    pub tuning: Tuning,
    /// The nodes.
    pub nodes: Vec<NodeConfig>,
    /// The directory the file was read from; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_certs_dir() -> PathBuf {
    PathBuf::from("certs")
}

/// Parse `n3` or `3` as a node id.
pub fn parse_node_id(s: &str) -> Result<NodeId, ConfigError> {
    let digits = s.trim().strip_prefix('n').unwrap_or(s.trim());
    digits
        .parse::<u32>()
        .ok()
        .filter(|&n| n > 0)
        .map(NodeId)
        .ok_or_else(|| ConfigError::BadNodeId(s.to_string()))
}

impl ClusterConfig {
    /// Read and validate a cluster file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        config.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(config)
    }

    /// Parse and validate cluster TOML; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Render as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if self.nodes.is_empty() {
            return Err(invalid("no [[nodes]]".into()));
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeMap::new();
        for n in &self.nodes {
            if n.id == 0 {
                return Err(invalid("node ids start at 1".into()));
            }
            if !ids.insert(n.id) {
                return Err(invalid(format!("node id {} appears twice", n.id)));
            }
            for (what, addr) in [
                ("peer_addr", n.peer_addr),
                ("client_addr", n.client_addr),
                ("admin_addr", n.admin_addr),
            ] {
                if let Some(other) = addrs.insert(addr, (n.id, what)) {
                    return Err(invalid(format!(
                        "address {addr} is used twice: n{} {} and n{} {what}",
                        other.0, other.1, n.id
                    )));
                }
                if self.insecure && !addr.ip().is_loopback() {
                    return Err(invalid(format!(
                        "insecure = true is allowed only on loopback, but n{} {what} is {addr}",
                        n.id
                    )));
                }
            }
        }
        let t = &self.tuning;
        if t.max_batch == 0 || t.inbox_capacity == 0 || t.heartbeat_ms == 0 || t.clock_poll_ms == 0
        {
            return Err(invalid("tuning values must be positive".into()));
        }
        self.auto_compaction().map_err(invalid)?;
        Ok(())
    }

    /// The automatic compaction the file asks for (`None`: off).
    pub fn auto_compaction(&self) -> Result<Option<crate::etcd::AutoCompaction>, String> {
        match (&self.auto_compaction_mode, &self.auto_compaction_retention) {
            (_, None) => Ok(None),
            (mode, Some(retention)) => {
                crate::etcd::AutoCompaction::parse(mode.as_deref(), retention)
            }
        }
    }

    /// The entry for `node`.
    pub fn node(&self, node: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == node.0)
    }

    /// Every node id, ascending.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.nodes.iter().map(|n| NodeId(n.id)).collect();
        ids.sort();
        ids
    }

    /// Resolve a path from the file against the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster_id = "local"
insecure = true
[[nodes]]
id = 1
peer_addr = "127.0.0.1:7001"
client_addr = "127.0.0.1:2379"
admin_addr = "127.0.0.1:9001"
data_dir = "n1"
[[nodes]]
id = 2
peer_addr = "127.0.0.1:7002"
client_addr = "127.0.0.1:2380"
admin_addr = "127.0.0.1:9002"
data_dir = "n2"
"#;

    #[test]
    fn a_good_file_parses_with_defaults() {
        let c = ClusterConfig::parse(GOOD, Path::new("c.toml")).unwrap();
        assert_eq!(c.node_ids(), vec![NodeId(1), NodeId(2)]);
        assert_eq!(c.tuning, Tuning::default());
        let again = ClusterConfig::parse(&c.to_toml(), Path::new("c.toml")).unwrap();
        assert_eq!(again.nodes, c.nodes);
        assert_eq!(c.auto_compaction(), Ok(None));
    }

    #[test]
    fn auto_compaction_reads_etcds_two_settings() {
        let text = format!(
            "auto_compaction_mode = \"revision\"\nauto_compaction_retention = \"1000\"\n{GOOD}"
        );
        let c = ClusterConfig::parse(&text, Path::new("c.toml")).unwrap();
        assert_eq!(
            c.auto_compaction(),
            Ok(Some(crate::etcd::AutoCompaction::Revision(1000)))
        );
        let again = ClusterConfig::parse(&c.to_toml(), Path::new("c.toml")).unwrap();
        assert_eq!(again.auto_compaction(), c.auto_compaction());
        let text = format!("auto_compaction_retention = \"72h\"\n{GOOD}");
        let c = ClusterConfig::parse(&text, Path::new("c.toml")).unwrap();
        assert_eq!(
            c.auto_compaction(),
            Ok(Some(crate::etcd::AutoCompaction::Periodic(
                std::time::Duration::from_secs(72 * 3600)
            )))
        );
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let e = ClusterConfig::parse("cluster_id = ", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
        let dup = GOOD.replace("id = 2", "id = 1");
        let e = ClusterConfig::parse(&dup, Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
        let public = GOOD.replace("127.0.0.1:7002", "10.1.2.3:7002");
        let e = ClusterConfig::parse(&public, Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("only on loopback"), "{e}");
        let same = GOOD.replace("127.0.0.1:9002", "127.0.0.1:9001");
        let e = ClusterConfig::parse(&same, Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
        let bad_mode =
            format!("auto_compaction_mode = \"hourly\"\nauto_compaction_retention = \"1\"\n{GOOD}");
        let e = ClusterConfig::parse(&bad_mode, Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("periodic` or `revision"), "{e}");
        let typo = GOOD.replace("insecure", "insecur");
        assert!(ClusterConfig::parse(&typo, Path::new("c.toml")).is_err());
    }

    #[test]
    fn node_ids_parse_with_or_without_the_n() {
        assert_eq!(parse_node_id("n3").unwrap(), NodeId(3));
        assert_eq!(parse_node_id("3").unwrap(), NodeId(3));
        assert!(parse_node_id("n0").is_err());
        assert!(parse_node_id("x").is_err());
    }
}
