//! Directories under `/tmp`: the shared initdb template, per-cluster base dirs with owner records, and
//! reaping (stopping and deleting) what dead processes left behind.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{
    Host, children_of, effective_uid, host, owner_alive, owner_record, process_alive, process_start_time,
    run, send_signal,
};
use crate::{
    COMMON_CONF, ClusterError, INITDB_ARGS, KEEP_FILE, OWNER_FILE, TEARDOWN_STOP_TIMEOUT_SECS,
    TEMPLATE_MARKER, TMP_ROOT, io_error,
};

/// FNV-1a: a stable hash (unlike `DefaultHasher`) so that every test binary agrees on the template's name.
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// initdb takes about as long as everything else in a cluster start, so it runs once per machine and
/// configuration: the result is kept as `/tmp/pgfleet-template-<hash>` and each node copies its data dir.
/// Built under a temporary name and renamed into place, so concurrent test processes never see half a
/// template. Passwords are not baked in (they differ per cluster); they are set after start.
pub(crate) fn ensure_template(host: &Host) -> Result<PathBuf, ClusterError> {
    let mut version_cmd = host.command(host.bin("initdb"), false);
    version_cmd.arg("--version");
    let version = run(version_cmd, None)?;
    let uid = match host.server_ids() {
        Some((uid, _)) => uid,
        None => effective_uid()?,
    };
    let key = fnv1a(&format!(
        "v1|{}|{version}|{uid}|{}|{COMMON_CONF}",
        host.bin_dir.display(),
        INITDB_ARGS.join(" ")
    ));
    let name = format!("pgfleet-template-{key:016x}");
    let final_dir = Path::new(TMP_ROOT).join(&name);
    if final_dir.join(TEMPLATE_MARKER).is_file() {
        return Ok(final_dir);
    }
    if final_dir.exists() {
        // Never valid without the marker, which is written before the rename.
        let _ = fs::remove_dir_all(&final_dir);
    }
    let building = unique_tmp_dir_for(host, &format!("{name}.building"))?;
    let result = build_template(host, &building);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&building);
        return Err(e);
    }
    match fs::rename(&building, &final_dir) {
        Ok(()) => Ok(final_dir),
        Err(_) if final_dir.join(TEMPLATE_MARKER).is_file() => {
            let _ = fs::remove_dir_all(&building);
            Ok(final_dir)
        }
        Err(source) => {
            let _ = fs::remove_dir_all(&building);
            Err(ClusterError::Io {
                context: format!("renaming template into {}", final_dir.display()),
                source,
            })
        }
    }
}

pub(crate) fn build_template(host: &Host, building: &Path) -> Result<(), ClusterError> {
    let data = building.join("data");
    let mut initdb = host.command(host.bin("initdb"), true);
    initdb.arg("-D").arg(&data).args(INITDB_ARGS);
    run(initdb, None)?;
    append(&data.join("postgresql.conf"), COMMON_CONF)?;
    fs::write(building.join(TEMPLATE_MARKER), "").map_err(io_error("writing the template marker"))?;
    // Once complete the template belongs to no process: it must never be reaped.
    fs::remove_file(building.join(OWNER_FILE)).map_err(io_error("removing the template's owner file"))
}

pub(crate) fn append(path: &Path, text: &str) -> Result<(), ClusterError> {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_error(format!("opening {}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(io_error(format!("writing {}", path.display())))
}

/// Writes a file the servers' user must be able to read and rewrite.
pub(crate) fn write_owned(host: &Host, path: &Path, text: &str) -> Result<(), ClusterError> {
    fs::write(path, text).map_err(io_error(format!("writing {}", path.display())))?;
    host.hand_over(path)
}

pub(crate) static DIR_SEQ: AtomicU64 = AtomicU64::new(0);

/// Creates `/tmp/<prefix>-<pid>-<n>`: 0755, owned by the servers' user, with an owner record so that it is
/// reaped if this process dies without cleaning up.
pub fn unique_tmp_dir(prefix: &str) -> Result<PathBuf, ClusterError> {
    unique_tmp_dir_for(host()?, prefix)
}

pub(crate) fn unique_tmp_dir_for(host: &Host, prefix: &str) -> Result<PathBuf, ClusterError> {
    loop {
        let seq = DIR_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(TMP_ROOT).join(format!("{prefix}-{}-{seq}", std::process::id()));
        match fs::create_dir(&dir) {
            // Left over by an earlier process with our pid.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(ClusterError::Io {
                    context: format!("creating {}", dir.display()),
                    source,
                });
            }
            Ok(()) => {
                open_up(host, &dir)?;
                write_owned(host, &dir.join(OWNER_FILE), &owner_record())?;
                return Ok(dir);
            }
        }
    }
}

/// The servers' user needs to enter the dir (0755; the umask may have made it tighter) and write in it.
pub(crate) fn open_up(host: &Host, dir: &Path) -> Result<(), ClusterError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .map_err(io_error(format!("chmod {}", dir.display())))?;
    host.hand_over(dir)
}

/// A user-given base dir: absolute, empty, reachable by the servers' user.
pub(crate) fn adopt_base_dir(host: &Host, dir: &Path) -> Result<PathBuf, ClusterError> {
    fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
    let dir = fs::canonicalize(dir).map_err(io_error(format!("resolving {}", dir.display())))?;
    let entries = fs::read_dir(&dir).map_err(io_error(format!("listing {}", dir.display())))?;
    if entries.flatten().any(|e| e.file_name() != OWNER_FILE) {
        return Err(ClusterError::BadBaseDir {
            path: dir,
            reason: "not empty".to_owned(),
        });
    }
    if let Some(user) = &host.server_user {
        for ancestor in dir.ancestors().skip(1) {
            let meta = fs::metadata(ancestor).map_err(io_error(format!("stat {}", ancestor.display())))?;
            let mode = meta.mode();
            let bit = if meta.uid() == user.uid {
                0o100
            } else if meta.gid() == user.gid {
                0o010
            } else {
                0o001
            };
            if mode & bit == 0 {
                return Err(ClusterError::NotTraversable {
                    path: ancestor.to_owned(),
                    user: user.name.clone(),
                });
            }
        }
    }
    open_up(host, &dir)?;
    write_owned(host, &dir.join(OWNER_FILE), &owner_record())?;
    Ok(dir)
}

/// Stops and deletes what earlier processes left in `/tmp/pgfleet-*` when they died without dropping their
/// cluster (killed test runs): leaked postmasters would otherwise pile up on CI machines.
pub(crate) fn reap_orphans(host: &Host) {
    // Without procfs every owner would look dead, including live ones.
    if process_start_time(std::process::id()).is_none() {
        return;
    }
    let Ok(entries) = fs::read_dir(TMP_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("pgfleet-") || dir.join(KEEP_FILE).exists() {
            continue;
        }
        let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        if owner_alive(&owner) {
            continue;
        }
        if let Ok(nodes) = fs::read_dir(&dir) {
            for node in nodes.flatten() {
                let data_dir = node.path().join("data");
                if data_dir.join("postmaster.pid").is_file() {
                    teardown_data_dir(host, &data_dir);
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

pub(crate) fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Alive and really the postmaster of this data dir (a stale postmaster.pid may name a reused pid).
pub(crate) fn postmaster_running(data_dir: &Path) -> Option<u32> {
    let pid = postmaster_pid(data_dir)?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = data_dir.as_os_str().as_encoded_bytes();
    let ours = cmdline.windows(needle.len()).any(|w| w == needle);
    (ours && process_alive(pid)).then_some(pid)
}

/// Best effort, never fails: immediate shutdown, then SIGKILL for whatever is left.
pub(crate) fn teardown_data_dir(host: &Host, data_dir: &Path) {
    let Some(pid) = postmaster_running(data_dir) else {
        return;
    };
    // A paused (SIGSTOPped) server would ignore the shutdown request until the timeout.
    let mut all = vec![pid];
    all.extend(children_of(pid));
    let _ = send_signal("CONT", &all);
    let _ = pg_ctl_stop(host, data_dir, None, "immediate", TEARDOWN_STOP_TIMEOUT_SECS);
    if postmaster_running(data_dir).is_none() {
        return;
    }
    let mut all = vec![pid];
    all.extend(children_of(pid));
    let _ = send_signal("KILL", &all);
    let deadline = Instant::now() + Duration::from_secs(5);
    while all.iter().any(|p| process_alive(*p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn pg_ctl_stop(
    host: &Host,
    data_dir: &Path,
    log: Option<&Path>,
    mode: &str,
    timeout_secs: u64,
) -> Result<(), ClusterError> {
    let mut cmd = host.command(host.bin("pg_ctl"), true);
    cmd.arg("stop")
        .arg("-D")
        .arg(data_dir)
        .args(["-m", mode, "-w", "-t", &timeout_secs.to_string()]);
    match run(cmd, log) {
        Ok(_) => Ok(()),
        // Already down (stopped before, or killed): what the caller wanted.
        Err(_) if postmaster_running(data_dir).is_none() => Ok(()),
        Err(e) => Err(e),
    }
}
