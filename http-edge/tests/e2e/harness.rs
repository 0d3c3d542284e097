//! Starts the real `http-edge` binary (with the core embedded) on free ports, with its own data
//! directory, and reads back what it spooled.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::servers::free_port;

pub(crate) struct Edge {
    child: Option<Child>,
    pub(crate) base: String,
    pub(crate) grpc: SocketAddr,
    pub(crate) data: tempfile::TempDir,
    pub(crate) client: reqwest::Client,
}

impl Edge {
    /// Edge + embedded core with verification off (development mode).
    pub(crate) async fn dev() -> Edge {
        Edge::start(&["--insecure-skip-verify"], &[]).await
    }

    /// Edge + embedded core with the given extra flags and environment.
    pub(crate) async fn start(args: &[&str], env: &[(&str, &str)]) -> Edge {
        Edge::launch(None, &[], args, env, "/readyz", true).await
    }

    /// Like [`Edge::start`], started through `wrapper` (a command that ends by exec'ing the
    /// binary and its arguments, which follow the wrapper's own), so [`Edge::pid`] is the edge's.
    pub(crate) async fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Edge {
        Edge::launch(None, wrapper, args, &[], "/readyz", true).await
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Like [`Edge::start`], over the data directory of an earlier run (a restart).
    pub(crate) async fn restart_in(
        data: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Edge {
        Edge::launch(Some(data), &[], args, env, "/readyz", true).await
    }

    /// Takes the data directory out of a stopped edge, to start another on it.
    pub(crate) fn take_data(&mut self) -> tempfile::TempDir {
        assert!(self.child.is_none(), "stop the edge first");
        std::mem::replace(&mut self.data, tempfile::tempdir().unwrap())
    }

    /// The edge alone, calling the core at `core_url` (verification off), once it is live.
    pub(crate) async fn without_core(core_url: &str, args: &[&str]) -> Edge {
        Edge::without_core_env(core_url, args, &[]).await
    }

    /// Like [`Edge::without_core`], with extra environment.
    pub(crate) async fn without_core_env(
        core_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Edge {
        let mut all = vec!["--insecure-skip-verify", "--core-url", core_url];
        all.extend_from_slice(args);
        Edge::launch(None, &[], &all, env, "/livez", false).await
    }

    /// Starts the binary (with the core embedded or not) and waits for `probe` to answer 200.
    async fn launch(
        mut reuse: Option<tempfile::TempDir>,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        probe: &str,
        embedded: bool,
    ) -> Edge {
        for attempt in 0..3 {
            let data = reuse.take().unwrap_or_else(|| tempfile::tempdir().unwrap());
            let http = free_port();
            let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(data.path().join("edge.log"))
                .unwrap();
            let mut cmd = match wrapper.split_first() {
                Some((program, rest)) => {
                    let mut cmd = Command::new(program);
                    cmd.args(rest).arg(env!("CARGO_BIN_EXE_http-edge"));
                    cmd
                }
                None => Command::new(env!("CARGO_BIN_EXE_http-edge")),
            };
            if embedded {
                cmd.arg("--embedded-core");
            }
            cmd.args(["--listen", &format!("127.0.0.1:{http}")])
                .args(["--grpc-listen", &grpc.to_string()])
                .arg("--data-dir")
                .arg(data.path().join("spool"))
                .args(args)
                .env_clear()
                .env("RUST_LOG", "info")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(log);
            let child = cmd.spawn().expect("spawn http-edge");
            let mut edge = Edge {
                child: Some(child),
                base: format!("http://127.0.0.1:{http}"),
                grpc,
                data,
                client: reqwest::Client::new(),
            };
            if edge.wait_for(probe, Duration::from_secs(15)).await {
                return edge;
            }
            eprintln!(
                "edge did not become ready (attempt {attempt}):\n{}",
                edge.log()
            );
            // The next attempt keeps the same data (a restart must find what it left).
            edge.kill();
            reuse = Some(edge.take_data());
        }
        panic!("http-edge never became ready");
    }

    /// Waits up to `within` for `/readyz` to answer 200: a core's health is NOT_SERVING until
    /// its first check of the queues, which a loaded machine can take a while to run.
    pub(crate) async fn becomes_ready(&mut self, within: Duration) -> bool {
        self.wait_for("/readyz", within).await
    }

    async fn wait_for(&mut self, probe: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().unwrap().is_some()
            {
                return false;
            }
            if let Ok(r) = self.client.get(self.url(probe)).send().await
                && r.status() == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("edge.log")).unwrap_or_default()
    }

    pub(crate) fn spool_path(&self, queue: &str) -> PathBuf {
        self.data
            .path()
            .join("spool")
            .join(format!("{queue}.jsonl"))
    }

    /// Every event spooled to `queue` (`inbound` or `status`), parsed.
    pub(crate) fn spooled(&self, queue: &str) -> Vec<Value> {
        match std::fs::read_to_string(self.spool_path(queue)) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).expect("spool lines are JSON"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Total events spooled to both queues.
    pub(crate) fn spooled_count(&self) -> usize {
        self.spooled("inbound").len() + self.spooled("status").len()
    }

    /// Sends `method path` with an optional content type, extra headers and a body.
    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self.client.request(method, self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request sent")
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        self.request(
            reqwest::Method::POST,
            path,
            Some(content_type),
            headers,
            body,
        )
        .await
    }

    pub(crate) async fn post_json(&self, path: &str, body: &str) -> reqwest::Response {
        self.post(path, "application/json", body.to_owned(), &[])
            .await
    }

    pub(crate) async fn post_form(&self, path: &str, body: &str) -> reqwest::Response {
        self.post(
            path,
            "application/x-www-form-urlencoded",
            body.to_owned(),
            &[("x-twilio-signature", "abc123signature456")],
        )
        .await
    }

    /// Kills the process with SIGKILL, at once.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().unwrap()
    }
}

/// The metrics page of the admin listener at `admin` (`host:port`).
pub(crate) async fn scrape(admin: &str) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A peer that accepts connections and never answers on them (a hung process, a network that
/// drops packets); dropped, it closes them all.
pub(crate) struct BlackHole {
    pub(crate) addr: SocketAddr,
    holding: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    pub(crate) async fn start() -> BlackHole {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let holding = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        BlackHole { addr, holding }
    }

    /// Closes the listener and every connection, and returns once they are closed (so that
    /// something else can listen on `addr`).
    pub(crate) async fn close(mut self) {
        self.holding.abort();
        let _ = (&mut self.holding).await;
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.holding.abort();
    }
}

/// The event id the edge answered a webhook with, when it acknowledged it (2xx).
pub(crate) fn acknowledged_event_id(reply: &reqwest::Response) -> Option<String> {
    if !reply.status().is_success() {
        return None;
    }
    reply
        .headers()
        .get("x-ingest-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reply status and JSON body.
pub(crate) async fn json_reply(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}
