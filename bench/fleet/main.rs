//! The fleet simulation (bench/fleet.sh drives it; docs/performance.md shows its results).
//!
//! `fleet serve`: a Secrets Manager double that enforces per-API token-bucket quotas, as AWS
//! does per account and region, answering `ThrottlingException` (HTTP 400) beyond them, and an
//! IMDSv2 double that gives every session its own access key id, so that the double can count
//! requests per node. Neither checks signatures (moto does that in the other benchmarks).
//!
//! `fleet nodes`: simulated nodes, each a task running the real path of a boot: a manifest is
//! parsed and validated into a plan and `bootsecrets::runner::run` runs it (startup jitter,
//! IMDSv2 credentials, GetSecretValue with the retry loop, the atomic write to its own tmpfs
//! directory, the status file). `--mode batch` models the BatchGetSecretValue lever instead: the
//! same identity, the same retry loop and deadline, 20 secrets per call, values not written.

use bootsecrets::identity::aws_imds::{ImdsSettings, InstanceIdentity};
use bootsecrets::retry::{Deadline, retry};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The Secrets Manager and IMDSv2 doubles. Prints `ready SM_PORT,... IMDS_PORT`, serves until
    /// stdin closes, then prints its counters as JSON.
    Serve {
        /// Listening ports for Secrets Manager (nodes spread over them: more source ports).
        #[arg(long, default_value_t = 8)]
        ports: usize,
        /// GetSecretValue quota: tokens per second and bucket size.
        #[arg(long)]
        get_rate: f64,
        #[arg(long)]
        get_burst: f64,
        /// BatchGetSecretValue quota: tokens per second and bucket size.
        #[arg(long)]
        batch_rate: f64,
        #[arg(long)]
        batch_burst: f64,
        /// Width of the timeline's buckets.
        #[arg(long, default_value_t = 100)]
        bucket_ms: u64,
    },
    /// Boots `count` nodes; prints one JSON record per node.
    Nodes {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        secrets: usize,
        /// Comma-separated Secrets Manager ports.
        #[arg(long)]
        sm_ports: String,
        #[arg(long)]
        imds_port: u16,
        /// Nodes boot at instants spread uniformly over this many milliseconds (0: all at once).
        #[arg(long, default_value_t = 0)]
        boot_spread_ms: u64,
        /// The instant (Unix ms) the fleet boots at (so that several processes share it).
        #[arg(long)]
        epoch_ms: u64,
        /// Lines added to each manifest's [settings] table.
        #[arg(long, default_value = "")]
        settings: String,
        /// `get` (the product: GetSecretValue per secret) or `batch` (BatchGetSecretValue).
        #[arg(long, default_value = "get")]
        mode: String,
        /// Where the nodes' output roots go.
        #[arg(long)]
        dir: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match cli.command {
        Command::Serve {
            ports,
            get_rate,
            get_burst,
            batch_rate,
            batch_burst,
            bucket_ms,
        } => rt.block_on(serve(
            ports,
            Bucket::new(get_rate, get_burst),
            Bucket::new(batch_rate, batch_burst),
            bucket_ms,
        )),
        Command::Nodes {
            first,
            count,
            secrets,
            sm_ports,
            imds_port,
            boot_spread_ms,
            epoch_ms,
            settings,
            mode,
            dir,
            seed,
        } => {
            let ports: Vec<u16> = sm_ports.split(',').map(|p| p.parse().unwrap()).collect();
            let cfg = Arc::new(NodeConfig {
                secrets,
                ports,
                imds_port,
                settings: settings.replace("\\n", "\n"),
                batch: mode == "batch",
                dir,
            });
            rt.block_on(nodes(first, count, boot_spread_ms, epoch_ms, seed, cfg));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The doubles

struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            self.tokens =
                (self.tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Default, Serialize)]
struct Counters {
    get_ok: u64,
    get_throttled: u64,
    batch_ok: u64,
    batch_throttled: u64,
    batch_secrets: u64,
    imds: u64,
    other: u64,
}

struct State {
    get: Bucket,
    batch: Bucket,
    counters: Counters,
    /// Per access key id (one per node): [requests, throttled].
    per_key: HashMap<String, [u32; 2]>,
    /// Per bucket of the timeline: [get ok, get throttled, batch ok, batch throttled].
    timeline: Vec<[u32; 4]>,
    start: Option<(Instant, f64)>,
    bucket: Duration,
    sessions: u64,
    tokens: HashMap<String, u64>,
}

#[derive(Serialize)]
struct ServerReport<'a> {
    counters: &'a Counters,
    /// Requests and throttled requests per node (per access key id), in no order.
    per_node: Vec<[u32; 2]>,
    timeline_start_unix_ms: f64,
    bucket_ms: u64,
    timeline: &'a [[u32; 4]],
}

async fn serve(ports: usize, get: Bucket, batch: Bucket, bucket_ms: u64) {
    let state = Arc::new(Mutex::new(State {
        get,
        batch,
        counters: Counters::default(),
        per_key: HashMap::new(),
        timeline: Vec::new(),
        start: None,
        bucket: Duration::from_millis(bucket_ms),
        sessions: 0,
        tokens: HashMap::new(),
    }));
    let mut sm_ports = Vec::new();
    for _ in 0..ports {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        sm_ports.push(l.local_addr().unwrap().port());
        tokio::spawn(accept(l, state.clone(), false));
    }
    let imds = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let imds_port = imds.local_addr().unwrap().port();
    tokio::spawn(accept(imds, state.clone(), true));
    println!(
        "ready {} {imds_port}",
        sm_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    // Until stdin closes.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await.map(|n| n > 0).unwrap_or(false) {}
    let s = state.lock().unwrap();
    let report = ServerReport {
        counters: &s.counters,
        per_node: s.per_key.values().copied().collect(),
        timeline_start_unix_ms: s.start.map(|(_, u)| u).unwrap_or(0.0),
        bucket_ms,
        timeline: &s.timeline,
    };
    println!("{}", serde_json::to_string(&report).unwrap());
}

async fn accept(l: TcpListener, state: Arc<Mutex<State>>, imds: bool) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(connection(s, state.clone(), imds));
    }
}

/// One keep-alive HTTP/1.1 connection: requests read with httparse, answered in order.
async fn connection(mut s: TcpStream, state: Arc<Mutex<State>>, imds: bool) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Headers.
        let (head_len, method, path, target, auth, token, content_length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let h = |name: &str| {
                        req.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).into_owned())
                    };
                    let cl = h("content-length")
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    break (
                        n,
                        req.method.unwrap_or("").to_string(),
                        req.path.unwrap_or("").to_string(),
                        h("x-amz-target"),
                        h("authorization"),
                        h("x-aws-ec2-metadata-token"),
                        cl,
                    );
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + content_length {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_len..head_len + content_length].to_vec();
        buf.drain(..head_len + content_length);
        let (status, extra, text) = if imds {
            imds_answer(&state, &method, &path, token.as_deref())
        } else {
            sm_answer(&state, target.as_deref(), auth.as_deref(), &body)
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n{extra}\r\n{text}",
            text.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn imds_answer(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (&'static str, String, String) {
    let mut st = state.lock().unwrap();
    st.counters.imds += 1;
    const CREDS: &str = "/latest/meta-data/iam/security-credentials/";
    if method == "PUT" && path == "/latest/api/token" {
        st.sessions += 1;
        let t = format!("token-{}", st.sessions);
        let n = st.sessions;
        st.tokens.insert(t.clone(), n);
        return (
            "200 OK",
            "x-aws-ec2-metadata-token-ttl-seconds: 300\r\n".into(),
            t,
        );
    }
    let Some(&session) = token.and_then(|t| st.tokens.get(t)) else {
        return ("401 Unauthorized", String::new(), String::new());
    };
    if path == CREDS {
        return ("200 OK", String::new(), "node".into());
    }
    if path == format!("{CREDS}node") {
        // One access key id per session: the double counts requests per node with it.
        let doc = format!(
            r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"ASIAFLEET{session:011}","SecretAccessKey":"fleet-secret","Token":"fleet-session-token","Expiration":"2099-01-01T00:00:00Z","LastUpdated":"2026-01-01T00:00:00Z"}}"#
        );
        return ("200 OK", String::new(), doc);
    }
    ("404 Not Found", String::new(), String::new())
}

fn secret_json(id: &str) -> String {
    format!(
        r#"{{"ARN":"arn:aws:secretsmanager:us-east-1:123456789012:secret:{id}-AbCdEf","Name":"{id}","VersionId":"01234567-89ab-cdef-0123-456789abcdef","SecretString":"{{\"v\":\"{}\"}}","VersionStages":["AWSCURRENT"],"CreatedDate":1.7E9}}"#,
        "x".repeat(256)
    )
}

fn sm_answer(
    state: &Mutex<State>,
    target: Option<&str>,
    auth: Option<&str>,
    body: &[u8],
) -> (&'static str, String, String) {
    let now = Instant::now();
    let key = auth
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').next())
        .unwrap_or("unsigned")
        .to_string();
    let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let mut st = state.lock().unwrap();
    let st = &mut *st;
    let (start, _) = *st.start.get_or_insert((now, unix_ms()));
    let slot = (now.duration_since(start).as_millis() / st.bucket.as_millis().max(1)) as usize;
    if st.timeline.len() <= slot {
        st.timeline.resize(slot + 1, [0; 4]);
    }
    let per = st.per_key.entry(key).or_insert([0, 0]);
    per[0] += 1;
    let throttled = || {
        (
            "400 Bad Request",
            "x-amzn-errortype: ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.availability/\r\n".to_string(),
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_string(),
        )
    };
    match target {
        Some("secretsmanager.GetSecretValue") => {
            if !st.get.take(now) {
                st.counters.get_throttled += 1;
                st.timeline[slot][1] += 1;
                per[1] += 1;
                return throttled();
            }
            st.counters.get_ok += 1;
            st.timeline[slot][0] += 1;
            let id = body["SecretId"].as_str().unwrap_or("missing");
            ("200 OK", String::new(), secret_json(id))
        }
        Some("secretsmanager.BatchGetSecretValue") => {
            if !st.batch.take(now) {
                st.counters.batch_throttled += 1;
                st.timeline[slot][3] += 1;
                per[1] += 1;
                return throttled();
            }
            st.counters.batch_ok += 1;
            st.timeline[slot][2] += 1;
            let ids: Vec<String> = body["SecretIdList"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            st.counters.batch_secrets += ids.len() as u64;
            let values: Vec<String> = ids.iter().map(|i| secret_json(i)).collect();
            (
                "200 OK",
                String::new(),
                format!(r#"{{"SecretValues":[{}],"Errors":[]}}"#, values.join(",")),
            )
        }
        _ => {
            st.counters.other += 1;
            (
                "400 Bad Request",
                String::new(),
                r#"{"__type":"UnknownOperationException"}"#.into(),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The nodes

struct NodeConfig {
    secrets: usize,
    ports: Vec<u16>,
    imds_port: u16,
    settings: String,
    batch: bool,
    dir: String,
}

#[derive(Serialize)]
struct NodeRecord {
    node: usize,
    /// When it booted and when its secrets were written (or it failed), Unix ms.
    boot_unix_ms: f64,
    done_unix_ms: f64,
    ok: bool,
    error: Option<String>,
}

async fn nodes(
    first: usize,
    count: usize,
    spread_ms: u64,
    epoch_ms: u64,
    seed: u64,
    cfg: Arc<NodeConfig>,
) {
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003) ^ first as u64);
    let mut tasks = Vec::new();
    for node in first..first + count {
        let offset = if spread_ms == 0 {
            0.0
        } else {
            rng.f64() * spread_ms as f64
        };
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let wait = (epoch_ms as f64 + offset - unix_ms()).max(0.0);
            tokio::time::sleep(Duration::from_secs_f64(wait / 1000.0)).await;
            let boot = unix_ms();
            let r = if cfg.batch {
                batch_node(node, &cfg).await
            } else {
                node_run(node, &cfg).await
            };
            NodeRecord {
                node,
                boot_unix_ms: boot,
                done_unix_ms: unix_ms(),
                ok: r.is_ok(),
                error: r.err(),
            }
        }));
    }
    for t in tasks {
        let r = t.await.expect("node task");
        println!("{}", serde_json::to_string(&r).unwrap());
    }
}

fn manifest(node: usize, cfg: &NodeConfig) -> String {
    let port = cfg.ports[node % cfg.ports.len()];
    let mut m = format!(
        "[settings]\noutput_root = \"{}/n{node}\"\n{}\n[backend.aws]\ntype = \"aws\"\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:{port}\"\nimds_endpoint = \"http://127.0.0.1:{}\"\n",
        cfg.dir, cfg.settings, cfg.imds_port
    );
    for j in 0..cfg.secrets {
        m += &format!("[[secret]]\npath = \"s/{j}\"\nref = \"fleet/{j}\"\njson_key = \"v\"\n");
    }
    m
}

/// The product's path: manifest, plan, run.
async fn node_run(node: usize, cfg: &NodeConfig) -> Result<(), String> {
    let text = manifest(node, cfg);
    let m = bootsecrets::manifest::parse(&text).map_err(|e| e.to_string())?;
    let plan = bootsecrets::plan::Plan::build(&m, &|_| None).map_err(|e| format!("{e:#}"))?;
    bootsecrets::runner::run(&plan, &bootsecrets::runner::RunOptions::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("{:#}", e.inner()))
}

/// The BatchGetSecretValue lever: the same identity, retry loop and deadline; 20 ids a call.
async fn batch_node(node: usize, cfg: &NodeConfig) -> Result<(), String> {
    use aws_sdk_secretsmanager::config::{
        BehaviorVersion, Credentials, Region, retry::RetryConfig, timeout::TimeoutConfig,
    };
    use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
    let text = manifest(node, cfg);
    let m = bootsecrets::manifest::parse(&text).map_err(|e| e.to_string())?;
    let plan = bootsecrets::plan::Plan::build(&m, &|_| None).map_err(|e| format!("{e:#}"))?;
    let deadline = Deadline::after(plan.deadline);
    let port = cfg.ports[node % cfg.ports.len()];
    let identity = InstanceIdentity::new(&ImdsSettings {
        endpoint: format!("http://127.0.0.1:{}", cfg.imds_port),
        timeout: Duration::from_secs(5),
    })
    .map_err(|e| e.message)?;
    let creds = retry("credentials", &deadline, |_| identity.credentials())
        .await
        .map_err(|e| e.to_string())?;
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.expose(),
            Some(creds.session_token.expose().to_string()),
            None,
            "fleet",
        ))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        )
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .build();
    let client = aws_sdk_secretsmanager::Client::from_conf(conf);
    let ids: Vec<String> = (0..cfg.secrets).map(|j| format!("fleet/{j}")).collect();
    let chunks: Vec<Vec<String>> = ids.chunks(20).map(<[String]>::to_vec).collect();
    let client = &client;
    let deadline = &deadline;
    let results: Vec<Result<usize, String>> = futures_util::stream::iter(chunks)
        .map(|chunk| async move {
            retry("batch", deadline, |_| {
                let chunk = chunk.clone();
                async move {
                    match client
                        .batch_get_secret_value()
                        .set_secret_id_list(Some(chunk))
                        .send()
                        .await
                    {
                        Ok(out) => Ok(out.secret_values().len()),
                        Err(e) if e.code() == Some("ThrottlingException") => {
                            Err(bootsecrets::error::FetchError::transient(
                                "throttled (ThrottlingException)",
                            ))
                        }
                        Err(_) => Err(bootsecrets::error::FetchError::permanent("failed")),
                    }
                }
            })
            .await
            .map_err(|e| e.to_string())
        })
        .buffer_unordered(plan.concurrency)
        .collect()
        .await;
    let got: usize = results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .sum();
    if got != cfg.secrets {
        return Err(format!("{got} values of {}", cfg.secrets));
    }
    Ok(())
}
