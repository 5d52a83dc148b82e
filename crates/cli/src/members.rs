//! `synod members`: every node's SWIM view of the local cluster, from its admin endpoint.

use crate::cluster::http_get;
use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use std::path::PathBuf;
use std::process::ExitCode;
use synod_protocols::swim::MemberInfo;
use synod_server::config::ClusterConfig;

#[derive(Debug, Args)]
pub(crate) struct MembersCommand {
    /// The cluster's directory (cluster.toml, certs, data, logs, pids).
    #[arg(long, default_value = ".synod")]
    dir: PathBuf,
}

#[derive(Deserialize)]
struct View {
    members: Vec<MemberInfo>,
}

/// One row per node that answers: how it sees every member, as `status/incarnation`.
pub(crate) fn run(cmd: MembersCommand) -> Result<ExitCode> {
    let file = cmd.dir.join("cluster.toml");
    let config = ClusterConfig::load(&file)
        .with_context(|| format!("no cluster in {} (run synod up)", cmd.dir.display()))?;
    let ids: Vec<u32> = config.nodes.iter().map(|n| n.id).collect();
    let mut header = format!("{:<8}", "view of");
    for id in &ids {
        header.push_str(&format!(" {:>12}", format!("n{id}")));
    }
    println!("{header}");
    let mut all_answered = true;
    for n in &config.nodes {
        let view = http_get(n.admin_addr, "/v1/members").and_then(|body| {
            serde_json::from_str::<View>(&body)
                .with_context(|| format!("n{} sent a membership view that does not parse", n.id))
        });
        let mut line = format!("{:<8}", format!("n{}", n.id));
        match view {
            Ok(view) => {
                for id in &ids {
                    let cell = view
                        .members
                        .iter()
                        .find(|m| m.node.0 == *id)
                        .map_or("-".to_string(), |m| {
                            format!("{:?}/{}", m.status, m.incarnation).to_lowercase()
                        });
                    line.push_str(&format!(" {cell:>12}"));
                }
            }
            Err(e) => {
                all_answered = false;
                line.push_str(&format!(" down ({e:#})"));
            }
        }
        println!("{line}");
    }
    Ok(if all_answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
