//! pgfleet's own Unix-domain socket (`listen.unix_socket_dir`): binding it where a file left by a run that
//! did not stop cleanly may still be, opening it to every local user as PostgreSQL's default
//! `unix_socket_permissions` does, and removing it when pgfleet stops.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalSocketError {
    /// Something accepts connections on the path already (another pgfleet, or PostgreSQL on the same port).
    #[error("another server already listens on {}", path.display())]
    InUse {
        /// The socket's path.
        path: PathBuf,
    },
    /// The path holds something that is not a socket: it is not ours to remove.
    #[error("{} exists and is not a socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A file-system error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The bound socket's file, removed when this is dropped (pgfleet stopping), so that a later start, or a
/// client, does not find a socket nothing listens on.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket at `path`. A socket file found there that refuses connections is a leftover (pgfleet
/// killed) and is replaced; one that accepts them belongs to a running server and is left alone.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, SocketFile), LocalSocketError> {
    let io = |source| LocalSocketError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(LocalSocketError::NotASocket {
                path: path.to_owned(),
            });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(LocalSocketError::InUse {
                    path: path.to_owned(),
                });
            }
            Err(_) => std::fs::remove_file(path).map_err(io)?,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    let file = SocketFile {
        path: path.to_owned(),
    };
    // Access is decided by authentication, as for TCP clients (PostgreSQL's default permissions, 0777).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgfleet-local-socket-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[tokio::test]
    async fn a_leftover_socket_is_replaced_a_live_one_and_other_files_are_not() {
        let dir = temp_dir("bind");
        let path = dir.join(".s.PGSQL.6432");
        // A leftover: bound once, its listener gone, the file still there.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("leftover"));
        assert!(path.exists());
        let (listener, file) = bind(&path).expect("replaces the leftover");
        let mode = std::fs::metadata(&path).expect("socket").permissions().mode();
        assert_eq!(mode & 0o777, 0o777, "open to every local user");
        // A second bind while the first listens is refused and leaves the file in place.
        assert!(matches!(bind(&path), Err(LocalSocketError::InUse { .. })));
        assert!(path.exists());
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        accepted.expect("accept");
        connected.expect("connect");
        drop(listener);
        drop(file);
        assert!(!path.exists(), "removed when pgfleet stops");
        // A regular file in the way is an error, not something to delete.
        std::fs::write(&path, b"not a socket").expect("file");
        assert!(matches!(bind(&path), Err(LocalSocketError::NotASocket { .. })));
        assert!(path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
