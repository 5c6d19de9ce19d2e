//! Who is on the other end of a client connection: a TCP address, or a process on this machine that came
//! through pgfleet's Unix-domain socket. Logs, SHOW CLIENTS and the session span print it.

use std::fmt;
use std::net::SocketAddr;

/// A client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Over TCP, from this address.
    Tcp(SocketAddr),
    /// Through `listen.unix_socket_dir`: a local process, which has no address of its own.
    Local,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            // PostgreSQL's own spelling for such a client in its logs (`%r`, `%h`).
            Peer::Local => f.write_str("[local]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_print_as_postgresql_logs_them() {
        let tcp: SocketAddr = "10.0.0.7:51234".parse().expect("address");
        assert_eq!(Peer::Tcp(tcp).to_string(), "10.0.0.7:51234");
        assert_eq!(Peer::Local.to_string(), "[local]");
    }
}
