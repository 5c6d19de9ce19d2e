//! Helpers shared by the tests that drive pgfleet with real client programs (`psql_pgbench`,
//! `client_drivers`): finding the client tools, running them with a deadline and capturing their
//! output, and failing with a pointer to `scripts/install-test-deps.sh` when a tool is missing.
//!
//! The programs themselves stay in `tests/clients/`.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What to tell whoever runs the tests on a machine lacking a client.
pub(crate) const INSTALL_HINT: &str =
    "run `sudo scripts/install-test-deps.sh` (as root) to install the test clients";

/// The PostgreSQL major version whose client tools the tests prefer.
const PG_MAJOR: &str = "15";

/// Environment variables that would change where libpq-based tools connect or how they behave.
const LIBPQ_ENV: [&str; 14] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
    "PGAPPNAME",
    "PSQLRC",
];

/// A finished client program.
pub(crate) struct Finished {
    /// The command line, for messages.
    pub command: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Finished {
    /// Panics with the whole output unless the program exited 0.
    pub(crate) fn expect_success(self, what: &str) -> Finished {
        assert!(self.status.success(), "{what}: {self}");
        self
    }

    /// The exit code (-1 when killed by a signal).
    pub(crate) fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Shell-like rendering of a command line, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` (stdin closed, libpq environment cleared) and waits at most `timeout`; a program still
/// running then is killed and the test fails with what it printed so far.
pub(crate) fn run(mut cmd: Command, timeout: Duration) -> Finished {
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
    cmd.env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let command = describe(&cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}; {INSTALL_HINT}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("wait for the killed child");
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for `{command}`: {e}"),
        }
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    let finished = Finished {
        command,
        status,
        stdout,
        stderr,
    };
    assert!(!timed_out, "killed after {timeout:?}: {finished}");
    finished
}

/// A PostgreSQL client tool (`psql`, `pgbench`): `$PG_BIN/<tool>`, else the PostgreSQL 15 install of
/// Debian's packages, else the newest `/usr/lib/postgresql/*/bin/<tool>`, else `<tool>` on PATH. Panics
/// with [`INSTALL_HINT`] when none exists.
pub(crate) fn pg_tool(tool: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("PG_BIN") {
        candidates.push(PathBuf::from(dir).join(tool));
    }
    candidates.push(
        Path::new("/usr/lib/postgresql")
            .join(PG_MAJOR)
            .join("bin")
            .join(tool),
    );
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_str()?.parse().ok()?;
                Some((major, e.path().join("bin").join(tool)))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versions.into_iter().map(|(_, p)| p));
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return found.clone();
    }
    find_in_path(tool).unwrap_or_else(|| {
        panic!(
            "the PostgreSQL client tool `{tool}` is not installed (looked at {candidates:?} and PATH); {INSTALL_HINT}"
        )
    })
}

/// `program` on PATH.
pub(crate) fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// `program` on PATH, or a test failure naming it and [`INSTALL_HINT`].
pub(crate) fn require_in_path(program: &str, what: &str) -> PathBuf {
    find_in_path(program).unwrap_or_else(|| panic!("{what} (`{program}`) is not on PATH; {INSTALL_HINT}"))
}

/// Parses a port printed by `SELECT inet_server_port()`.
pub(crate) fn parse_port(text: &str, context: &str) -> u16 {
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{context}: `{text}` is not a port number: {e}"))
}

/// The directory holding the client programs (`tests/clients`).
pub(crate) fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("clients")
}

/// A `node` command run in `tests/clients/node`, or a test failure saying how to install Node.js or the
/// npm packages the scripts need (`packages`, looked for in its node_modules).
pub(crate) fn node_command(packages: &[&str]) -> std::process::Command {
    let node = require_in_path("node", "Node.js");
    let dir = clients_dir().join("node");
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dir.join("node_modules").join(p).is_dir())
        .collect();
    assert!(
        missing.is_empty(),
        "{missing:?} not installed in {}; {INSTALL_HINT}",
        dir.display()
    );
    let mut cmd = std::process::Command::new(node);
    cmd.current_dir(dir);
    cmd
}
