//! `synod ap get|put|del`: the Dynamo-style AP store of a cluster started with
//! `synod up --ap`, over each node's HTTP API (`/kv/{bucket}/{key}`).

use crate::admin_http::encode;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use synod_server::config::ClusterConfig;

#[derive(Debug, Args)]
pub(crate) struct ApCommand {
    /// The cluster's directory.
    #[arg(long, default_value = ".synod", global = true)]
    dir: PathBuf,
    /// The node that coordinates the request (any node can; default n1).
    #[arg(long, global = true)]
    node: Option<u32>,
    /// Replicas to involve (at most the bucket's N).
    #[arg(long, global = true, value_parser = clap::value_parser!(u8).range(1..))]
    n: Option<u8>,
    /// Replies a read waits for.
    #[arg(long, global = true, value_parser = clap::value_parser!(u8).range(1..))]
    r: Option<u8>,
    /// Acknowledgements a write waits for.
    #[arg(long, global = true, value_parser = clap::value_parser!(u8).range(1..))]
    w: Option<u8>,
    #[command(subcommand)]
    op: ApOp,
}

#[derive(Debug, Subcommand)]
enum ApOp {
    /// Read BUCKET/KEY: prints every sibling on its own line, then the context.
    Get {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// Write VALUE to BUCKET/KEY. With --context it supersedes what that read saw;
    /// without, it is a blind write that may create a sibling.
    Put {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The value (text).
        value: String,
        /// The context a `synod ap get` printed.
        #[arg(long, default_value = "")]
        context: String,
    },
    /// Delete BUCKET/KEY (a tombstone that supersedes what --context saw).
    Del {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The context a `synod ap get` printed.
        #[arg(long, default_value = "")]
        context: String,
    },
}

fn admin_addr(dir: &Path, node: Option<u32>) -> Result<SocketAddr> {
    let config = ClusterConfig::load(&dir.join("cluster.toml")).with_context(|| {
        format!(
            "no cluster in {} (start one with synod up --ap)",
            dir.display()
        )
    })?;
    crate::admin_http::admin_addr(&config, node)
}

pub(crate) fn run(cmd: ApCommand) -> Result<ExitCode> {
    let context = match &cmd.op {
        ApOp::Put { context, .. } | ApOp::Del { context, .. } => {
            synod_server::ap::parse_context(context).map_err(|e| anyhow!("--context: {e}"))?;
            context.clone()
        }
        ApOp::Get { .. } => String::new(),
    };
    let addr = admin_addr(&cmd.dir, cmd.node)?;
    let mut query = Vec::new();
    for (name, v) in [("n", cmd.n), ("r", cmd.r), ("w", cmd.w)] {
        if let Some(v) = v {
            query.push(format!("{name}={v}"));
        }
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .context("building the HTTP client")?;
        let url = |bucket: &str, key: &str| {
            format!("http://{addr}/kv/{}/{}{query}", encode(bucket), encode(key))
        };
        let request = match &cmd.op {
            ApOp::Get { bucket, key } => http.get(url(bucket, key)),
            ApOp::Put {
                bucket, key, value, ..
            } => http.put(url(bucket, key)).body(value.clone()),
            ApOp::Del { bucket, key, .. } => http.delete(url(bucket, key)),
        };
        let request = if context.is_empty() {
            request
        } else {
            request.header(synod_server::ap::CONTEXT_HEADER, context)
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("node at {addr} did not answer"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match &cmd.op {
            ApOp::Get { bucket, key }
                if status.is_success() || status == reqwest::StatusCode::NOT_FOUND =>
            {
                let siblings = body["siblings"].as_array().cloned().unwrap_or_default();
                for s in &siblings {
                    match s.as_str() {
                        Some(v) => println!("{v}"),
                        None => println!("<deleted>"),
                    }
                }
                println!("context: {}", body["context"].as_str().unwrap_or(""));
                if !status.is_success() {
                    eprintln!("{bucket}/{key}: not found");
                    return Ok(ExitCode::from(1));
                }
            }
            _ if status.is_success() => println!(
                "OK dot {} context: {}",
                body["dot"].as_str().unwrap_or("?"),
                body["context"].as_str().unwrap_or("")
            ),
            _ => bail!(
                "{}",
                body["error"]
                    .as_str()
                    .unwrap_or(status.canonical_reason().unwrap_or("error"))
            ),
        }
        Ok(ExitCode::SUCCESS)
    })
}
