//! The container image: the Dockerfile's ENTRYPOINT + CMD run as a plain process against a local cluster
//! and stop on its STOPSIGNAL; the compose example's config is valid; and, when a Docker engine answers
//! `docker info`, the image is built and serves queries (otherwise that test says it was skipped and why).

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect, free_port};

/// Where the image expects its config (the path CMD passes to `--config`).
const IMAGE_CONFIG: &str = "/etc/pgfleet/pgfleet.toml";
/// How long pgfleet may take to listen, and to exit after the stop signal.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn dockerfile() -> String {
    fs::read_to_string(repo_path("Dockerfile")).expect("read Dockerfile")
}

/// The Dockerfile's instructions of the final stage (after the last FROM), continuation lines joined, comments
/// dropped, each as (INSTRUCTION, rest of line).
fn final_stage(text: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            joined.push(std::mem::take(&mut current));
        }
    }
    let mut stage = Vec::new();
    for line in joined {
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = instruction.to_ascii_uppercase();
        if instruction == "FROM" {
            stage.clear();
        }
        stage.push((instruction, rest.trim().to_owned()));
    }
    stage
}

/// The value of the last `instruction` in the final stage (the one Docker uses).
fn instruction(text: &str, name: &str) -> Option<String> {
    final_stage(text)
        .into_iter()
        .rev()
        .find(|(i, _)| i == name)
        .map(|(_, rest)| rest)
}

/// Parses a JSON array of strings (Docker's exec form): `["a", "b\"c"]`.
fn json_strings(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| format!("not a JSON array: {text}"))?;
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None if items.is_empty() => return Ok(items),
            Some('"') => {}
            other => return Err(format!("expected a string at {other:?} in {text}")),
        }
        let mut item = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => item.push('\n'),
                    Some('t') => item.push('\t'),
                    Some(c @ ('"' | '\\' | '/')) => item.push(c),
                    other => return Err(format!("unsupported escape {other:?} in {text}")),
                },
                Some(c) => item.push(c),
                None => return Err(format!("unterminated string in {text}")),
            }
        }
        items.push(item);
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => return Ok(items),
            Some(',') => {}
            Some(c) => return Err(format!("expected ',' or ']' at {c:?} in {text}")),
        }
    }
}

/// ENTRYPOINT followed by CMD, both in exec form, as the container would run them.
fn container_command(text: &str) -> Vec<String> {
    let entrypoint = instruction(text, "ENTRYPOINT").expect("the Dockerfile has an ENTRYPOINT");
    let cmd = instruction(text, "CMD").expect("the Dockerfile has a CMD");
    let mut argv = json_strings(&entrypoint).expect("ENTRYPOINT is a JSON array (exec form)");
    argv.extend(json_strings(&cmd).expect("CMD is a JSON array (exec form)"));
    argv
}

/// The STOPSIGNAL as a name `kill -s` takes ("INT"); Docker's default is SIGTERM.
fn stop_signal(text: &str) -> String {
    let signal = instruction(text, "STOPSIGNAL").unwrap_or_else(|| "SIGTERM".to_owned());
    signal.trim().trim_start_matches("SIG").to_owned()
}

/// A spawned process killed on drop, whose output goes to a log file.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn log_contents(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until 127.0.0.1:`port` accepts TCP connections; panics with the log if the process exits first.
    fn wait_listening(&mut self, port: u16) {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "pgfleet exited ({status}) before listening on {address}:\n{}",
                    self.log_contents()
                );
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pgfleet did not listen on {address} within {READY_TIMEOUT:?}:\n{}",
                self.log_contents()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn dockerfile_runs_as_non_root_with_the_documented_contract() {
    let text = dockerfile();
    let stage = final_stage(&text);
    assert!(
        text.contains("FROM rust:1.95-bookworm AS build"),
        "the build stage uses Rust 1.95 on bookworm"
    );
    assert!(
        text.contains("FROM debian:bookworm-slim"),
        "the runtime stage is debian:bookworm-slim"
    );
    let user = instruction(&text, "USER").expect("the final stage sets USER");
    let user = user.split(':').next().unwrap_or_default().trim().to_owned();
    assert!(
        !user.is_empty() && user != "root" && user != "0",
        "the container must not run as root (USER {user})"
    );
    assert_eq!(instruction(&text, "STOPSIGNAL").as_deref(), Some("SIGINT"));
    let healthcheck = instruction(&text, "HEALTHCHECK").expect("the final stage has a HEALTHCHECK");
    assert!(
        healthcheck.contains("CMD"),
        "HEALTHCHECK runs a command: {healthcheck}"
    );
    assert!(
        stage
            .iter()
            .any(|(i, rest)| i == "EXPOSE" && rest.split_whitespace().any(|p| p == "6432")),
        "the image exposes 6432"
    );
    let argv = container_command(&text);
    assert_eq!(argv, ["pgfleet", "--config", IMAGE_CONFIG], "ENTRYPOINT + CMD");
    let compose = fs::read_to_string(repo_path("docker-compose.yml")).expect("read docker-compose.yml");
    assert!(
        compose.contains(&format!("./docker/pgfleet.toml:{IMAGE_CONFIG}")),
        "docker-compose.yml mounts docker/pgfleet.toml at {IMAGE_CONFIG}"
    );
    let ignore = fs::read_to_string(repo_path(".dockerignore")).expect("read .dockerignore");
    for entry in ["target*", ".git", "bench/results"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore excludes {entry}"
        );
    }
}

#[test]
fn compose_config_passes_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgfleet"))
        .arg("--check")
        .arg("--config")
        .arg(repo_path("docker/pgfleet.toml"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run pgfleet --check");
    assert!(
        out.status.success(),
        "docker/pgfleet.toml must pass --check: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_command_runs_as_a_plain_process() {
    let text = dockerfile();
    let mut argv = container_command(&text);
    let signal = stop_signal(&text);
    assert_eq!(argv[0], "pgfleet", "the ENTRYPOINT runs the pgfleet binary");
    let config_at = argv
        .iter()
        .position(|a| a == "--config")
        .map(|i| i + 1)
        .filter(|&i| i < argv.len())
        .expect("CMD passes --config FILE");
    assert_eq!(argv[config_at], IMAGE_CONFIG);

    let cluster = cluster_async().await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("pgfleet.toml");
    fs::write(&config_path, Proxy::config_for(&cluster, port, "")).expect("write config");
    argv[0] = env!("CARGO_BIN_EXE_pgfleet").to_owned();
    argv[config_at] = config_path.to_string_lossy().into_owned();

    let log = dir.path().join("pgfleet.log");
    let log_file = File::create(&log).expect("create log");
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("clone log handle"))
        .stderr(log_file)
        .spawn()
        .expect("spawn pgfleet");
    let mut process = Process { child, log };
    process.wait_listening(port);

    let dsn = format!(
        "host=127.0.0.1 port={port} user={APP_USER} password={PASSWORD} dbname={APP_DB} sslmode=disable"
    );
    let client = connect(&dsn).await;
    let row = client
        .query_one("SELECT 40 + 2", &[])
        .await
        .expect("query through pgfleet");
    assert_eq!(row.get::<_, i32>(0), 42);
    client
        .batch_execute("CREATE TABLE container_t (x int); INSERT INTO container_t VALUES (1)")
        .await
        .expect("write through pgfleet");

    // `docker stop` sends the STOPSIGNAL; pgfleet must exit promptly (a client is still connected).
    let pid = process.child.id().to_string();
    let status = Command::new("kill")
        .args(["-s", &signal, &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {signal} {pid} failed");
    let deadline = Instant::now() + STOP_TIMEOUT;
    let exit = loop {
        if let Some(exit) = process.child.try_wait().expect("wait for pgfleet") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "pgfleet still runs {STOP_TIMEOUT:?} after SIG{signal}:\n{}",
            process.log_contents()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        exit.success(),
        "pgfleet exits 0 on SIG{signal}, got {exit}:\n{}",
        process.log_contents()
    );
    drop(client);
}

/// `docker <args>`, with the combined output on failure.
fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!("{}: {}{}", out.status, stdout.trim(), stderr.trim()))
    }
}

/// Why no Docker engine can be used, if none can.
fn docker_unavailable() -> Option<String> {
    let out = match Command::new("docker").arg("info").output() {
        Ok(out) => out,
        Err(e) => return Some(format!("cannot run docker: {e}")),
    };
    if out.status.success() {
        return None;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| out.status.to_string());
    Some(reason)
}

/// Removes the container on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_builds_and_serves_when_docker_is_available() {
    if let Some(reason) = docker_unavailable() {
        println!("skipped: no Docker engine (docker info failed: {reason})");
        return;
    }
    let image = "pgfleet-test";
    let root = env!("CARGO_MANIFEST_DIR");
    if let Err(e) = docker(&["build", "-t", image, root]) {
        panic!("docker build failed: {e}");
    }

    let cluster = cluster_async().await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("pgfleet.toml");
    fs::write(&config_path, Proxy::config_for(&cluster, port, "")).expect("write config");
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&config_path, fs::Permissions::from_mode(0o644)).expect("chmod config");
    }
    let name = format!("pgfleet-test-{}", std::process::id());
    let mount = format!("{}:{IMAGE_CONFIG}:ro", config_path.display());
    let _ = docker(&["rm", "-f", &name]);
    let container = Container(name.clone());
    if let Err(e) = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "-v",
        &mount,
        image,
    ]) {
        panic!("docker run failed: {e}");
    }

    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the container did not listen on {address}:\n{}",
            docker(&["logs", &name]).unwrap_or_else(|e| e)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dsn = format!(
        "host=127.0.0.1 port={port} user={APP_USER} password={PASSWORD} dbname={APP_DB} sslmode=disable"
    );
    let client = connect(&dsn).await;
    let row = client
        .query_one("SELECT 40 + 2", &[])
        .await
        .expect("query through the container");
    assert_eq!(row.get::<_, i32>(0), 42);
    drop(client);

    // `docker stop` uses the image's STOPSIGNAL; pgfleet exits 0 well within the grace period.
    docker(&["stop", "-t", "35", &name]).expect("docker stop");
    let code = docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]).expect("docker inspect");
    assert_eq!(code.trim(), "0", "pgfleet's exit code in the container");
    drop(container);
}
