//! MQTT peers for the uplink tests: a real mosquitto on a free loopback
//! port, a subscriber that records what arrives, and the fieldmq binary run
//! as a child process (so it can be killed like a crashed daemon).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fieldmq::profile::sparkplug::proto::Payload;
use prost::Message as _;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A free loopback TCP port (bound once, then released for the peer to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn mosquitto_binary() -> PathBuf {
    for candidate in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("mosquitto is not installed; run scripts/install-test-deps")
}

/// A mosquitto broker for one test.
pub struct Mosquitto {
    /// Plain MQTT, for the tests' own clients.
    pub port: u16,
    /// The TLS listener, when started with [`Mosquitto::start_tls`].
    pub tls_port: Option<u16>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub async fn start() -> Mosquitto {
        Mosquitto::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Mosquitto {
        Mosquitto::start_with(port, "").await
    }

    /// A broker whose only listener requires TLS with certificates from `certs`
    /// (and, with `require_client_cert`, a client certificate signed by the same CA).
    pub async fn start_tls(certs: &Certificates, require_client_cert: bool) -> Mosquitto {
        let tls_port = free_port();
        let extra = format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_client_cert}\n",
            certs.ca.display(),
            certs.server_cert.display(),
            certs.server_key.display()
        );
        let mut broker = Mosquitto::start_with(free_port(), &extra).await;
        broker.tls_port = Some(tls_port);
        broker
    }

    async fn start_with(port: u16, listener_extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{listener_extra}allow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\n"
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start mosquitto");
        assert!(
            wait_for_listener(port).await,
            "mosquitto did not listen on {port}"
        );
        Mosquitto {
            port,
            tls_port: None,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Waits (up to 5 s) until something accepts connections on loopback `port`.
pub async fn wait_for_listener(port: u16) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A Sparkplug command (NCMD/DCMD) payload setting one metric, by name.
pub fn sparkplug_command(
    name: &str,
    value: fieldmq::profile::sparkplug::proto::payload::metric::Value,
) -> Vec<u8> {
    Payload {
        timestamp: Some(fieldmq::core::value::now_ms()),
        metrics: vec![fieldmq::profile::sparkplug::proto::payload::Metric {
            name: Some(name.into()),
            value: Some(value),
            ..Default::default()
        }],
        ..Payload::default()
    }
    .encode_to_vec()
}

/// One message as a subscriber saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub qos: QoS,
}

impl Received {
    /// The payload decoded as Sparkplug B with fieldmq's own schema.
    pub fn sparkplug(&self) -> Payload {
        Payload::decode(self.payload.as_slice())
            .unwrap_or_else(|e| panic!("{} is not Sparkplug B: {e}", self.topic))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A test's MQTT client: records every message on its subscriptions and can publish.
pub struct Peer {
    pub client: AsyncClient,
    messages: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// Connects as `id` and subscribes to `filters` (QoS 1), waiting for the SUBACK.
    pub async fn connect(port: u16, id: &str, filters: &[&str]) -> Peer {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        for filter in filters {
            client
                .subscribe(*filter, QoS::AtLeastOnce)
                .await
                .expect("queue subscribe");
        }
        let (tx, messages) = mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let mut pending_subacks = filters.len();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(Received {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            qos: p.qos,
                        });
                    }
                    Ok(Event::Incoming(Incoming::ConnAck(_))) if pending_subacks == 0 => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        pending_subacks = pending_subacks.saturating_sub(1);
                        if pending_subacks == 0
                            && let Some(r) = ready_tx.take()
                        {
                            let _ = r.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), ready)
            .await
            .expect("test client connects and subscribes within 5 s")
            .expect("test client event loop alive");
        Peer {
            client,
            messages,
            task,
        }
    }

    /// The next message whose topic satisfies `pick`, skipping others.
    pub async fn next_where(
        &mut self,
        within: Duration,
        what: &str,
        pick: impl Fn(&Received) -> bool,
    ) -> Received {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                Ok(Some(m)) if pick(&m) => return m,
                Ok(Some(_)) => {}
                Ok(None) => panic!("test client stopped while waiting for {what}"),
                Err(_) => panic!("no {what} within {within:?}"),
            }
        }
    }

    /// The next message on exactly `topic`.
    pub async fn next_on(&mut self, topic: &str, within: Duration) -> Received {
        self.next_where(within, topic, |m| m.topic == topic).await
    }

    /// Every message that arrives within `window`.
    pub async fn collect_for(&mut self, window: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.messages.recv()).await {
            out.push(m);
        }
        out
    }

    /// Asks edge node `group`/`node` for its births again, as a host that
    /// connected late does (NCMD `Node Control/Rebirth`).
    pub async fn request_rebirth(&self, group: &str, node: &str) {
        let rebirth = sparkplug_command(
            "Node Control/Rebirth",
            fieldmq::profile::sparkplug::proto::payload::metric::Value::BooleanValue(true),
        );
        self.publish(&format!("spBv1.0/{group}/NCMD/{node}"), rebirth, false)
            .await;
    }

    pub async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .expect("queue publish");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fieldmq binary running a config, as the service would.
pub struct Gateway {
    child: Child,
    pub stderr: PathBuf,
}

impl Gateway {
    /// Runs `fieldmq run -c config` with its log in `dir`/`name`.log.
    pub fn run(config: &Path, dir: &Path, name: &str) -> Gateway {
        let config = config.as_os_str();
        Gateway::spawn(&["run".as_ref(), "-c".as_ref(), config], dir, name)
    }

    /// Runs `fieldmq <args>` with its log in `dir`/`name`.log.
    pub fn spawn(args: &[&std::ffi::OsStr], dir: &Path, name: &str) -> Gateway {
        Gateway::spawn_with(args, &[], dir, name)
    }

    /// Runs `fieldmq <args>` with extra environment variables `env`.
    pub fn spawn_with(
        args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
        dir: &Path,
        name: &str,
    ) -> Gateway {
        let stderr = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&stderr).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_fieldmq"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,fieldmq=debug,tokio_modbus=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start fieldmq");
        Gateway { child, stderr }
    }

    /// SIGTERM, as systemd stops it; returns the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("fieldmq exits within 10 s of SIGTERM")
            .expect("wait for fieldmq")
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`, as `systemctl reload` does).
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.id() {
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// SIGKILL: a crash or power cut as far as the broker can tell.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resident memory (VmRSS) in KiB; panics if the process is gone.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("gateway running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS for pid {pid}: {status}"))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// A throwaway CA with a server certificate for 127.0.0.1 and a client certificate, made with openssl.
pub struct Certificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certificates {
    pub fn make(dir: &Path) -> Certificates {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl is installed (scripts/install-test-deps)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::write(
            dir.join("san.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("san");
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=fieldmq test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        for (name, cn) in [("server", "127.0.0.1"), ("client", "gw1")] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.cnf",
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        // mosquitto started as root drops to its own user, which must be able to read these
        // throwaway files inside the test's private temporary directory.
        use std::os::unix::fs::PermissionsExt;
        let readable = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(dir, readable.clone()).expect("chmod dir");
        for file in [
            "ca.pem",
            "server.pem",
            "server.key",
            "client.pem",
            "client.key",
        ] {
            std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        Certificates {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}
