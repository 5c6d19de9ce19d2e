//! The `pgfleet` command line: `--check` accepts a good config and the shipped example, and refuses bad ones
//! with a non-zero exit status and a message naming the key (or file) at fault; at start, pgfleet raises its
//! open-file limit. No PostgreSQL is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A config that passes validation: one primary, one replica, one user.
const GOOD: &str = r#"
[listen]
address = "127.0.0.1:6432"

[[users]]
name = "app"
password = "secret"

[[nodes]]
name = "primary"
address = "127.0.0.1:5432"
role = "primary"

[[nodes]]
name = "replica1"
address = "127.0.0.1:5433"
role = "replica"

[routing]
load_balance = "round_robin"

[pool]
max_size = 5
connect_timeout = "2s"
idle_timeout = "1m"
"#;

fn pgfleet(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgfleet"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the pgfleet binary")
}

/// Runs `pgfleet --check --config <path>`.
fn check_file(path: &Path) -> Output {
    pgfleet(&["--check".as_ref(), "--config".as_ref(), path.as_os_str()])
}

/// Writes `text` to a temp file and checks it; returns the output and the path (kept alive by the dir).
fn check_text(text: &str) -> (Output, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pgfleet.toml");
    std::fs::write(&path, text).expect("write config");
    let out = check_file(&path);
    (out, dir, path)
}

fn text_of(out: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The config must be refused with a non-zero status, and the combined output must contain every needle.
fn assert_refused(text: &str, needles: &[&str]) {
    let (out, _dir, _path) = check_text(text);
    let all = text_of(&out);
    assert!(
        !out.status.success(),
        "a bad config must fail --check:\n{text}\n{all}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a bad config exits with status 1:\n{all}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr must mention `{needle}` for config:\n{text}\n{all}"
        );
    }
}

#[test]
fn check_accepts_a_good_config() {
    let (out, _dir, path) = check_text(GOOD);
    let all = text_of(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&path.display().to_string()),
        "names the file it checked: {all}"
    );
    assert!(stdout.contains("valid"), "{all}");
}

#[test]
fn check_accepts_the_shipped_example_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join("pgfleet.toml");
    let out = check_file(&path);
    assert!(
        out.status.success(),
        "config/pgfleet.toml must pass --check:\n{}",
        text_of(&out)
    );
}

#[test]
fn check_does_not_start_the_proxy() {
    // --check must return at once even though nothing listens on the node addresses.
    let started = std::time::Instant::now();
    let (out, _dir, _path) = check_text(GOOD);
    assert!(out.status.success(), "{}", text_of(&out));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "--check took {:?}",
        started.elapsed()
    );
}

#[test]
fn bad_node_address_names_the_node_key() {
    let text = GOOD.replace("127.0.0.1:5433", "localhost-without-port");
    assert_refused(&text, &["nodes[1].address", "localhost-without-port"]);
    let text = GOOD.replace("127.0.0.1:5433", "127.0.0.1:notaport");
    assert_refused(&text, &["nodes[1].address", "notaport"]);
}

#[test]
fn two_primaries_are_refused() {
    let text = GOOD.replace("role = \"replica\"", "role = \"primary\"");
    assert_refused(&text, &["nodes", "primary", "2"]);
}

#[test]
fn no_primary_is_refused() {
    let text = GOOD.replace(
        "address = \"127.0.0.1:5432\"\nrole = \"primary\"",
        "address = \"127.0.0.1:5432\"\nrole = \"replica\"",
    );
    assert_ne!(text, GOOD);
    assert_refused(&text, &["nodes", "primary", "0"]);
}

#[test]
fn unknown_load_balance_value_is_refused() {
    let text = GOOD.replace("\"round_robin\"", "\"fastest_first\"");
    assert_refused(&text, &["load_balance", "fastest_first"]);
}

#[test]
fn missing_users_are_refused() {
    let start = GOOD.find("[[users]]").expect("users table");
    let end = GOOD.find("[[nodes]]").expect("nodes table");
    let text = format!("{}{}", &GOOD[..start], &GOOD[end..]);
    assert_refused(&text, &["users"]);
}

#[test]
fn user_without_password_is_refused() {
    let text = GOOD.replace("password = \"secret\"\n", "");
    assert_refused(&text, &["users[0].password"]);
}

#[test]
fn unknown_keys_are_refused() {
    let text = GOOD.replace("[pool]\n", "[pool]\nmax_sise = 3\n");
    assert_refused(&text, &["max_sise"]);
    let text = format!("{GOOD}\n[bogus_section]\nx = 1\n");
    assert_refused(&text, &["bogus_section"]);
}

#[test]
fn bad_values_name_their_key() {
    assert_refused(&GOOD.replace("max_size = 5", "max_size = 0"), &["pool.max_size"]);
    assert_refused(
        &GOOD.replace("connect_timeout = \"2s\"", "connect_timeout = \"2 fortnights\""),
        &["connect_timeout"],
    );
    assert_refused(
        &GOOD.replace("address = \"127.0.0.1:6432\"", "address = \"nowhere\""),
        &["listen.address"],
    );
}

#[test]
fn tls_mode_require_needs_a_certificate() {
    let listen = "address = \"127.0.0.1:6432\"\n";
    assert_refused(
        &GOOD.replacen(listen, &format!("{listen}tls_mode = \"require\"\n"), 1),
        &["listen.tls_mode", "listen.tls_cert"],
    );
    assert_refused(
        &GOOD.replacen(listen, &format!("{listen}authentication_timeout = \"0s\"\n"), 1),
        &["listen.authentication_timeout"],
    );
}

/// The soft and hard "Max open files" of a running process, from /proc.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/<pid>/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().expect("soft limit").to_owned();
    let hard = fields.next().expect("hard limit").to_owned();
    (soft, hard)
}

#[tokio::test]
async fn serving_raises_the_soft_open_file_limit_to_the_hard_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = dir.path().join("pgfleet.toml");
    std::fs::write(
        &config,
        GOOD.replace("127.0.0.1:6432", &format!("127.0.0.1:{port}")),
    )
    .expect("write config");
    let log = dir.path().join("pgfleet.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    // A low soft limit, as many systems start services with (1024); exec keeps the shell's pid for pgfleet.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 64 && exec \"$0\" --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_pgfleet"))
        .arg(&config)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(log_file.try_clone().expect("clone log"))
        .stderr(log_file)
        .spawn()
        .expect("start pgfleet");
    let listening = crate::support::wait_until(std::time::Duration::from_secs(10), async || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|text| text.contains("pgfleet listening"))
    })
    .await;
    let text = listening.unwrap_or_else(|| std::fs::read_to_string(&log).unwrap_or_default());
    let (soft, hard) = open_file_limits(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("raised the open-file limit from=64"), "{text}");
    assert_eq!(soft, hard, "soft limit raised to the hard one\n{text}");
}

#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("no-such-pgfleet.toml");
    let out = check_file(&path);
    let all = text_of(&out);
    assert!(!out.status.success(), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&path.display().to_string()),
        "the error names the missing file: {all}"
    );
    // Running (not just checking) a missing file fails the same way, without listening.
    let out = pgfleet(&["--config".as_ref(), path.as_os_str()]);
    let all = text_of(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&path.display().to_string()),
        "{all}"
    );
}

#[test]
fn invalid_toml_syntax_is_refused() {
    let text = GOOD.replace("[pool]", "[pool");
    let (out, _dir, path) = check_text(&text);
    let all = text_of(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&path.display().to_string()),
        "{all}"
    );
}
