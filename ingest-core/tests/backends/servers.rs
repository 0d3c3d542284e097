//! Real servers for tests, started on free loopback ports: moto's SQS server and redis-server.
//! Shared by ingest-core's and http-edge's integration tests (http-edge includes this file by
//! path), so the way they are found, started and stopped is written once.
// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The workspace root (the binaries installed by `.ci/services.sh` live under it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ingest-core is inside the workspace")
        .to_owned()
}

fn find_binary(env_var: &str, default: PathBuf, what: &str) -> PathBuf {
    let path = std::env::var_os(env_var).map_or(default, PathBuf::from);
    let found = if path.components().count() > 1 {
        path.is_file()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(&path).is_file()))
    };
    assert!(
        found,
        "{what} not found at {} (set {env_var}, or run `bash .ci/services.sh` to install it); \
         these tests need the real server and do not skip",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (the listener is closed before the server binds it).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A server process on a fixed port that can be stopped and started again on the same port.
pub(crate) struct Server {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
    frozen: bool,
}

impl Server {
    /// moto's SQS-compatible server.
    pub(crate) fn moto() -> Self {
        let program = find_binary(
            "MOTO_SERVER",
            workspace_root().join(".venv-moto/bin/moto_server"),
            "moto_server",
        );
        let port = free_port();
        let mut s = Self {
            name: "moto_server",
            program,
            args: vec![
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
            port,
            child: None,
            frozen: false,
        };
        s.start();
        s
    }

    /// A throwaway redis-server: no persistence, loopback only.
    pub(crate) fn redis() -> Self {
        let program = find_binary("REDIS_SERVER", "redis-server".into(), "redis-server");
        let port = free_port();
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]
        .map(str::to_owned)
        .to_vec();
        let mut s = Self {
            name: "redis-server",
            program,
            args,
            port,
            child: None,
            frozen: false,
        };
        s.start();
        s
    }

    /// The server's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the server and waits until it accepts connections.
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        // `timeout` bounds the server's life even if this test process dies without cleaning up.
        let child = Command::new("timeout")
            .arg("600")
            .arg(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
        let give_up = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{} exited at start-up: {status}", self.name);
            }
            assert!(
                Instant::now() < give_up,
                "{} did not listen on {} within 30 s",
                self.name,
                self.addr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes the server (SIGSTOP to the process `timeout` runs): its connections stay open
    /// and nothing answers, as with a hung host or a network that drops packets.
    #[allow(dead_code)]
    pub(crate) fn freeze(&mut self) {
        self.signal_server("-STOP");
        self.frozen = true;
    }

    /// Lets a frozen server go on (SIGCONT).
    #[allow(dead_code)]
    pub(crate) fn thaw(&mut self) {
        self.signal_server("-CONT");
        self.frozen = false;
    }

    fn signal_server(&self, which: &str) {
        let child = self.child.as_ref().expect("server running");
        // `timeout` runs the server as its child.
        let status = Command::new("pkill")
            .args([which, "-P", &child.id().to_string()])
            .status()
            .expect("run pkill");
        assert!(status.success(), "pkill {which} -P {}", child.id());
    }

    /// Stops the server (SIGTERM, forwarded by `timeout`) and waits until it is gone.
    pub(crate) fn stop(&mut self) {
        if self.frozen {
            self.thaw();
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if Instant::now() > give_up {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The port must be closed before a test relies on the server being down.
        let give_up = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok()
            && Instant::now() < give_up
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
