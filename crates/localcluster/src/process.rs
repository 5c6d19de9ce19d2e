//! Child processes: the host's shared state, finding the PostgreSQL binaries, running commands as the
//! servers' unprivileged OS user, and inspecting or signalling processes through `/proc`.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::dirs::{ensure_template, reap_orphans};
use crate::{ClusterError, LOG_TAIL_LINES, io_error};

/// The OS user servers run as, when we are root.
#[derive(Debug)]
pub(crate) struct ServerUser {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) switcher: Switcher,
}

#[derive(Debug)]
pub(crate) enum Switcher {
    Runuser(PathBuf),
    Setpriv(PathBuf),
}

/// What every cluster of this process shares.
#[derive(Debug)]
pub(crate) struct Host {
    pub(crate) bin_dir: PathBuf,
    pub(crate) server_user: Option<ServerUser>,
    pub(crate) template: PathBuf,
}

pub(crate) static HOST: OnceLock<Result<Host, String>> = OnceLock::new();

pub(crate) fn host() -> Result<&'static Host, ClusterError> {
    HOST.get_or_init(|| build_host().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|message| ClusterError::Setup(message.clone()))
}

pub(crate) fn build_host() -> Result<Host, ClusterError> {
    let bin_dir = find_bin_dir()?;
    let server_user = choose_server_user()?;
    let mut host = Host {
        bin_dir,
        server_user,
        template: PathBuf::new(),
    };
    reap_orphans(&host);
    host.template = ensure_template(&host)?;
    Ok(host)
}

impl Host {
    pub(crate) fn bin(&self, tool: &str) -> PathBuf {
        self.bin_dir.join(tool)
    }

    /// A command with a predictable environment: no inherited libpq variables (a stray PGHOST or PGOPTIONS
    /// would change what we connect to), English messages, a cwd every user can enter.
    pub(crate) fn command(&self, program: impl AsRef<OsStr>, as_server_user: bool) -> Command {
        let mut cmd = match (&self.server_user, as_server_user) {
            (Some(user), true) => {
                let mut cmd = match &user.switcher {
                    Switcher::Runuser(path) => {
                        let mut cmd = Command::new(path);
                        cmd.args(["-u", &user.name, "--"]);
                        cmd
                    }
                    Switcher::Setpriv(path) => {
                        let mut cmd = Command::new(path);
                        cmd.arg(format!("--reuid={}", user.uid))
                            .arg(format!("--regid={}", user.gid))
                            .args(["--init-groups", "--"]);
                        cmd
                    }
                };
                cmd.arg(program);
                cmd
            }
            _ => Command::new(program),
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("LC_ALL", "C").current_dir("/").stdin(Stdio::null());
        cmd
    }

    pub(crate) fn server_ids(&self) -> Option<(u32, u32)> {
        self.server_user.as_ref().map(|u| (u.uid, u.gid))
    }

    /// Makes a directory we created as root usable by the servers' user.
    pub(crate) fn hand_over(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some((uid, gid)) = self.server_ids() {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(io_error(format!("chown {}", path.display())))?;
        }
        Ok(())
    }
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        text.push(' ');
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            text.push('\'');
            text.push_str(&arg.replace('\'', r"'\''"));
            text.push('\'');
        } else {
            text.push_str(&arg);
        }
    }
    text
}

/// Runs to completion; returns stdout trimmed. On failure the error carries the command, its output and,
/// if `log` is given, the tail of that server log.
pub(crate) fn run(mut cmd: Command, log: Option<&Path>) -> Result<String, ClusterError> {
    let command = describe(&cmd);
    let out = cmd.output().map_err(io_error(format!("running `{command}`")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        output.push_str("\n(stdout) ");
        output.push_str(stdout.trim());
    }
    Err(ClusterError::Command {
        command,
        status: out.status.to_string(),
        output,
        log_tail: log.map(|l| tail_lines(l, LOG_TAIL_LINES)).unwrap_or_default(),
    })
}

pub(crate) fn tail_lines(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `PG_BIN`, else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin` (Debian) or
/// `/usr/pgsql-*/bin` (RHEL).
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_initdb(&dir) {
            Ok(dir)
        } else {
            Err(ClusterError::BinariesNotFound {
                searched: format!("PG_BIN={}", dir.display()),
            })
        };
    }
    let mut searched = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Ok(dir);
        }
        searched.push(format!("pg_config --bindir = {}", dir.display()));
    }
    let mut candidates: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    for (parent, prefix, suffix) in [("/usr/lib/postgresql", "", "bin"), ("/usr", "pgsql-", "bin")] {
        searched.push(format!("{parent}/{prefix}*/{suffix}"));
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix(prefix) else {
                continue;
            };
            let Ok(key) = version
                .split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<u32>, _>>()
            else {
                continue;
            };
            let dir = entry.path().join(suffix);
            if has_initdb(&dir) {
                candidates.push((key, dir));
            }
        }
    }
    candidates.sort();
    candidates
        .pop()
        .map(|(_, dir)| dir)
        .ok_or_else(|| ClusterError::BinariesNotFound {
            searched: searched.join(", "),
        })
}

pub(crate) fn effective_uid() -> Result<u32, ClusterError> {
    // /proc/self belongs to the process's effective uid; `id -u` covers systems without procfs.
    if let Ok(meta) = fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    lookup_id(None, "-u").ok_or_else(|| ClusterError::NoServerUser {
        reason: "`id -u` failed".to_owned(),
    })
}

pub(crate) fn lookup_id(user: Option<&str>, flag: &str) -> Option<u32> {
    let mut cmd = Command::new("id");
    cmd.arg(flag).args(user);
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// PostgreSQL refuses to run as root. As root we use `PGFLEET_PG_USER`, else `postgres`, else `pgfleet`,
/// creating the latter as a system user when neither exists (fresh CI machines).
pub(crate) fn choose_server_user() -> Result<Option<ServerUser>, ClusterError> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let is_usable = |name: &str| lookup_id(Some(name), "-u").is_some_and(|uid| uid != 0);
    let name = match std::env::var("PGFLEET_PG_USER").ok().filter(|n| !n.is_empty()) {
        Some(name) if is_usable(&name) => name,
        Some(name) => {
            return Err(ClusterError::NoServerUser {
                reason: format!("PGFLEET_PG_USER={name} does not exist or is root"),
            });
        }
        None => match ["postgres", "pgfleet"].into_iter().find(|n| is_usable(n)) {
            Some(name) => name.to_owned(),
            None => {
                let mut cmd = Command::new("useradd");
                cmd.args(["--system", "--no-create-home", "--user-group", "pgfleet"]);
                let result = run(cmd, None);
                // Another test process may have created it at the same moment.
                if !is_usable("pgfleet") {
                    let reason = match result {
                        Err(e) => format!("no `postgres` user, and creating `pgfleet` failed: {e}"),
                        Ok(_) => "useradd pgfleet succeeded but `id -u pgfleet` fails".to_owned(),
                    };
                    return Err(ClusterError::NoServerUser { reason });
                }
                "pgfleet".to_owned()
            }
        },
    };
    let (Some(uid), Some(gid)) = (lookup_id(Some(&name), "-u"), lookup_id(Some(&name), "-g")) else {
        return Err(ClusterError::NoServerUser {
            reason: format!("`id` cannot resolve {name}"),
        });
    };
    let switcher = find_in_path("runuser")
        .map(Switcher::Runuser)
        .or_else(|| find_in_path("setpriv").map(Switcher::Setpriv))
        .ok_or_else(|| ClusterError::NoServerUser {
            reason: "neither runuser nor setpriv is installed".into(),
        })?;
    Ok(Some(ServerUser {
        name,
        uid,
        gid,
        switcher,
    }))
}

/// `(pid, start time)` identifies a process across pid reuse.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat).and_then(|fields| fields.get(19).and_then(|t| t.parse().ok()))
}

/// The fields of /proc/PID/stat after the parenthesised command name (which may contain spaces): index 0
/// is field 3 (state), 1 is the ppid, 19 the start time.
pub(crate) fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat_fields(&stat)
        .and_then(|f| f.first().copied())
        .is_some_and(|state| state != "Z" && state != "X")
}

pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    stat_fields(&stat).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                })
                == Some(pid)
        })
        .collect()
}

pub(crate) fn send_signal(signal: &str, pids: &[u32]) -> Result<(), ClusterError> {
    if pids.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("kill");
    cmd.args(["-s", signal])
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null());
    match run(cmd, None) {
        // Backends come and go between listing and signalling; the others still got the signal.
        Err(ClusterError::Command { output, .. })
            if output.lines().all(|line| line.contains("No such process")) =>
        {
            Ok(())
        }
        other => other.map(drop),
    }
}

pub(crate) fn owner_record() -> String {
    let pid = std::process::id();
    format!("{pid} {}", process_start_time(pid).unwrap_or(0))
}

pub(crate) fn owner_alive(record: &str) -> bool {
    let mut parts = record.split_whitespace();
    let (Some(Ok(pid)), Some(Ok(start))) = (
        parts.next().map(str::parse::<u32>),
        parts.next().map(str::parse::<u64>),
    ) else {
        // Unreadable: err on the side of not deleting.
        return true;
    };
    // A killed owner may linger as a zombie (with its start time) until someone reaps it.
    process_start_time(pid) == Some(start) && process_alive(pid)
}
