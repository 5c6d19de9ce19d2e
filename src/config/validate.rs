//! The checks serde cannot make (addresses, files, uniqueness, exactly one primary, forward-mode
//! requirements), each refusing with [`ConfigError::Invalid`] naming the offending key.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{
    AuthMethod, ClientTlsMode, Config, ConfigError, NodeConfig, NodeTlsMode, ReplicationMode, Role,
    split_host_port, unix_socket_of,
};

/// `sizeof(sun_path) - 1` on Linux: the longest path a Unix-domain socket can be reached by.
const MAX_SOCKET_PATH: usize = 107;

/// A socket path that the kernel would refuse, refused here naming the key that makes it.
fn socket_path_fits(key: impl Into<String>, path: &std::path::Path) -> Result<(), ConfigError> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return Ok(());
    }
    Err(invalid(
        key,
        format!(
            "the socket {} is longer than the {MAX_SOCKET_PATH} bytes a Unix-domain socket path may have: use a \
             shorter directory",
            path.display()
        ),
    ))
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Checks what serde cannot: addresses, uniqueness, exactly one primary.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let (Some(level), Some(old)) = (self.routing.consistency, self.routing.read_your_writes) {
            return Err(invalid(
                "routing.consistency",
                format!(
                    "set together with routing.read_your_writes (= \"{}\"), its older spelling: keep only \
                     routing.consistency (= \"{level}\")",
                    crate::config::Consistency::from(old)
                ),
            ));
        }
        self.listen.address.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "listen.address",
                format!(
                    "`{}` is not host:port (e.g. \"127.0.0.1:6432\")",
                    self.listen.address
                ),
            )
        })?;
        if let Some(dir) = &self.listen.unix_socket_dir {
            if !dir.is_absolute() {
                return Err(invalid(
                    "listen.unix_socket_dir",
                    format!("`{}` is not an absolute path", dir.display()),
                ));
            }
            if let Some(path) = self.listen.unix_socket() {
                socket_path_fits("listen.unix_socket_dir", &path)?;
            }
        }
        match (&self.listen.tls_cert, &self.listen.tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "listen.tls_key",
                    "must be set when listen.tls_cert is set",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "listen.tls_cert",
                    "must be set when listen.tls_key is set",
                ));
            }
            (Some(cert), Some(key)) => {
                for (k, p) in [("listen.tls_cert", cert), ("listen.tls_key", key)] {
                    if !p.exists() {
                        return Err(invalid(k, format!("file {} does not exist", p.display())));
                    }
                }
            }
            (None, None) => {}
        }
        if self.listen.tls_mode == ClientTlsMode::Require && self.listen.tls_cert.is_none() {
            return Err(invalid(
                "listen.tls_mode",
                "\"require\" needs a client TLS certificate: set listen.tls_cert and listen.tls_key",
            ));
        }
        if self.listen.authentication_timeout.is_zero() {
            return Err(invalid(
                "listen.authentication_timeout",
                "must be longer than 0 (PostgreSQL's default is \"60s\")",
            ));
        }
        if self.listen.max_message_size < 1024 {
            return Err(invalid("listen.max_message_size", "must be at least 1kB"));
        }
        if self.users.is_empty() {
            return Err(invalid("users", "at least one [[users]] entry is needed"));
        }
        let mut names = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() {
                return Err(invalid(format!("users[{i}].name"), "must not be empty"));
            }
            if !names.insert(u.name.as_str()) {
                return Err(invalid(
                    format!("users[{i}].name"),
                    format!("user `{}` is listed twice", u.name),
                ));
            }
            if u.password.is_empty() && u.auth != AuthMethod::Trust {
                return Err(invalid(
                    format!("users[{i}].password"),
                    "must be set unless auth = \"trust\" (it is also used to log in to the nodes)",
                ));
            }
        }
        if self.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "at least one [[nodes]] entry (the primary) is needed",
            ));
        }
        let mut node_names = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name.is_empty() {
                return Err(invalid(format!("nodes[{i}].name"), "must not be empty"));
            }
            if !node_names.insert(n.name.as_str()) {
                return Err(invalid(
                    format!("nodes[{i}].name"),
                    format!("node `{}` is listed twice", n.name),
                ));
            }
            split_host_port(&n.address).map_err(|reason| invalid(format!("nodes[{i}].address"), reason))?;
            if let Some(path) = unix_socket_of(&n.address) {
                socket_path_fits(format!("nodes[{i}].address"), &path)?;
            }
            validate_node_tls(i, n)?;
        }
        super::shards::validate_shards(self)?;
        let primaries = self.nodes.iter().filter(|n| n.role == Role::Primary).count();
        let autos = self.nodes.iter().filter(|n| n.role == Role::Auto).count();
        if !self.is_sharded()
            && (primaries > 1 || (primaries == 1 && autos > 0) || (primaries == 0 && autos == 0))
        {
            return Err(invalid(
                "nodes",
                format!(
                    "exactly one node must have role = \"primary\", or use role = \"auto\" on every node that \
                     may become primary (found {primaries} primary and {autos} auto)"
                ),
            ));
        }
        if self.health.interval.is_zero() {
            return Err(invalid("health.interval", "must be more than 0"));
        }
        if let Some(u) = &self.health.user
            && self.user(u).is_none()
        {
            return Err(invalid(
                "health.user",
                format!("`{u}` is not one of the [[users]]"),
            ));
        }
        if self.replication.mode == ReplicationMode::Forward {
            let r = &self.replication;
            if r.databases.is_empty() {
                return Err(invalid(
                    "replication.databases",
                    "forward mode needs the list of databases to forward",
                ));
            }
            if r.user.is_none() || r.password.is_none() {
                return Err(invalid(
                    "replication.user",
                    "forward mode needs replication.user and replication.password: a superuser with REPLICATION",
                ));
            }
            if autos > 0 {
                return Err(invalid(
                    "nodes",
                    "role = \"auto\" is for streaming replicas; forward mode needs one primary",
                ));
            }
            if !r
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                || r.name.is_empty()
            {
                return Err(invalid(
                    "replication.name",
                    "use lowercase letters, digits and _ (it names slots)",
                ));
            }
            if r.copy_parallelism == 0 || r.batch_size == 0 {
                return Err(invalid(
                    "replication.copy_parallelism",
                    "copy_parallelism and batch_size must be at least 1",
                ));
            }
        }
        if let Some(m) = &self.admin.metrics_address {
            m.parse::<SocketAddr>()
                .map_err(|_| invalid("admin.metrics_address", format!("`{m}` is not host:port")))?;
        }
        if self.pool.max_size == Some(0) {
            return Err(invalid("pool.max_size", "must be at least 1"));
        }
        if self.pool.connect_timeout.is_zero() {
            return Err(invalid("pool.connect_timeout", "must be more than 0"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("`{}` is not a level or filter such as \"info\"", self.log.level),
            ));
        }
        Ok(())
    }
}

/// `nodes[i].tls` and `nodes[i].tls_ca` together: a CA file is needed for verify-full, pointless without
/// verification, and must hold certificates; verify-full needs a host a certificate can name.
fn validate_node_tls(i: usize, n: &NodeConfig) -> Result<(), ConfigError> {
    if unix_socket_of(&n.address).is_some() && matches!(n.tls, NodeTlsMode::Require | NodeTlsMode::VerifyFull)
    {
        // libpq ignores sslmode on a local socket and PostgreSQL refuses TLS there: a setting that asks for
        // it could never hold, and silently going without would look like protection.
        return Err(invalid(
            format!("nodes[{i}].tls"),
            format!(
                "\"{}\" cannot hold on a Unix-domain socket ({}): PostgreSQL does not use TLS on local sockets; \
                 set tls = \"disable\" or give the node a TCP address",
                n.tls.as_str(),
                n.address
            ),
        ));
    }
    let key = format!("nodes[{i}].tls_ca");
    match (n.tls, &n.tls_ca) {
        (NodeTlsMode::VerifyFull, None) => {
            return Err(invalid(
                key,
                "must be set when tls = \"verify-full\": the PEM file of the CA that signed the node's certificate",
            ));
        }
        (NodeTlsMode::Disable | NodeTlsMode::Prefer, Some(_)) => {
            // A CA that is silently not checked would look like protection; libpq's prefer never checks.
            return Err(invalid(
                key,
                format!(
                    "is only used with tls = \"require\" or \"verify-full\" (tls is \"{}\")",
                    n.tls.as_str()
                ),
            ));
        }
        (_, Some(path)) => {
            crate::certs::ca_roots(path).map_err(|e| invalid(&key, e.to_string()))?;
        }
        (_, None) => {}
    }
    if n.tls == NodeTlsMode::VerifyFull {
        let (host, _) =
            split_host_port(&n.address).map_err(|reason| invalid(format!("nodes[{i}].address"), reason))?;
        crate::certs::server_name(&host)
            .map_err(|e| invalid(format!("nodes[{i}].address"), e.to_string()))?;
    }
    Ok(())
}
