//! The release build (`scripts/build.sh`): it hands the compiler the committed execution profile of `pgo/`,
//! unpacked under target/pgo, and `PGFLEET_PGO=0` leaves it out; the committed profile is in LLVM's indexed
//! format and names the compiler and a commit of this repository it was made from. The flags are read by a
//! cargo subcommand of the test's own that prints them, so nothing is compiled. No PostgreSQL is needed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The first eight bytes of an indexed LLVM profile (`IndexedInstrProf::Magic`, little-endian).
const INDEXED_MAGIC: [u8; 8] = [0xff, b'l', b'p', b'r', b'o', b'f', b'i', 0x81];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The RUSTFLAGS `scripts/build.sh` gives cargo, with `extra_env` set: cargo runs the external subcommand
/// `cargo-showflags` (found on PATH, in `bin`) with the environment the script prepared.
fn flags_of_build_script(bin: &Path, extra_env: &[(&str, &str)]) -> String {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.arg("scripts/build.sh")
        .arg("showflags")
        .current_dir(repo())
        .env("PATH", path)
        .env_remove("RUSTFLAGS")
        .env_remove("PGFLEET_PGO");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run scripts/build.sh");
    assert!(
        out.status.success(),
        "scripts/build.sh showflags failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("flags are UTF-8")
}

fn showflags_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("cargo-showflags");
    fs::write(&script, "#!/bin/sh\nprintf '%s' \"$RUSTFLAGS\"\n").expect("write cargo-showflags");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod cargo-showflags");
    dir
}

fn unpacked_committed_profile() -> Vec<u8> {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(repo().join("pgo/pgfleet.profdata.gz"))
        .output()
        .expect("run gzip");
    assert!(
        out.status.success(),
        "pgo/pgfleet.profdata.gz does not decompress"
    );
    out.stdout
}

#[test]
fn the_build_script_compiles_with_the_committed_profile() {
    let bin = showflags_dir();
    let flags = flags_of_build_script(bin.path(), &[]);
    let unpacked = repo().join("target/pgo/pgfleet.profdata");
    assert!(
        flags.contains(&format!("-Cprofile-use={}", unpacked.display())),
        "RUSTFLAGS of scripts/build.sh: {flags:?}"
    );
    assert!(
        flags.contains("-Cllvm-args=-no-pgo-warn-mismatch"),
        "RUSTFLAGS: {flags:?}"
    );
    let on_disk = fs::read(&unpacked).expect("the profile is unpacked where RUSTFLAGS points");
    assert_eq!(
        on_disk,
        unpacked_committed_profile(),
        "target/pgo holds the committed profile"
    );
}

#[test]
fn without_pgo_the_build_script_adds_no_flags() {
    let bin = showflags_dir();
    assert_eq!(flags_of_build_script(bin.path(), &[("PGFLEET_PGO", "0")]), "");
}

#[test]
fn the_committed_profile_is_an_indexed_profile_of_a_commit_of_this_repository() {
    let profile = unpacked_committed_profile();
    assert!(profile.len() > 4096, "the profile has {} bytes", profile.len());
    assert_eq!(
        profile[..8],
        INDEXED_MAGIC,
        "pgo/pgfleet.profdata.gz is not an indexed LLVM profile"
    );

    let about = fs::read_to_string(repo().join("pgo/profile.txt")).expect("read pgo/profile.txt");
    let field = |name: &str| {
        about
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("pgo/profile.txt has no {name:?} line:\n{about}"))
            .trim()
            .to_owned()
    };
    assert!(field("rustc:").starts_with("rustc 1."), "{about}");
    let commit = field("commit:");
    let ancestor = Command::new("git")
        .args(["merge-base", "--is-ancestor", &commit, "HEAD"])
        .current_dir(repo())
        .status()
        .expect("run git");
    assert!(
        ancestor.success(),
        "the profile's commit {commit} is not in this repository's history"
    );
}
