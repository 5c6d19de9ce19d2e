//! Every key the configuration code accepts is documented in docs/configuration.md and in the commented example
//! config/pgfleet.toml (which must also pass `--check`, see tests/cli.rs).

use std::collections::BTreeSet;

/// (section, key) for every field of the config structs, read from the files of src/config/.
fn keys_in_code() -> BTreeSet<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/config");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("src/config")
        .map(|entry| entry.expect("src/config entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    files.sort();
    let src: String = files
        .iter()
        .map(|path| std::fs::read_to_string(path).expect("config source file"))
        .collect::<Vec<_>>()
        .join("\n");
    let sections = [
        ("Config", ""),
        ("ListenConfig", "listen"),
        ("UserConfig", "users"),
        ("NodeConfig", "nodes"),
        ("RoutingConfig", "routing"),
        ("PoolConfig", "pool"),
        ("LogConfig", "log"),
        ("HealthConfig", "health"),
        ("AdminConfig", "admin"),
        ("ReplicationConfig", "replication"),
        ("ShardedTableConfig", "sharded_tables"),
        ("ShardingConfig", "sharding"),
    ];
    let tables: BTreeSet<&str> = sections
        .iter()
        .map(|(_, s)| *s)
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = BTreeSet::new();
    let mut current: Option<&str> = None;
    // A field spelled differently in the file (`#[serde(rename = "type")]`) is documented by that spelling.
    let mut renamed: Option<String> = None;
    for line in src.lines() {
        if let Some(at) = line.find("rename = \"") {
            let rest = &line[at + "rename = \"".len()..];
            renamed = rest.split('"').next().map(str::to_owned);
            continue;
        }
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest.split([' ', '{']).next().unwrap_or("");
            current = sections.iter().find(|(s, _)| *s == name).map(|(_, sec)| *sec);
            continue;
        }
        if line.starts_with('}') {
            current = None;
            continue;
        }
        let (Some(section), Some(field)) = (current, line.strip_prefix("    pub ")) else {
            let t = line.trim_start();
            if !(t.starts_with("#[") || t.starts_with("///")) {
                renamed = None;
            }
            continue;
        };
        let key = renamed
            .take()
            .unwrap_or_else(|| field.split(':').next().unwrap_or("").to_owned());
        if section.is_empty() && tables.contains(key.as_str()) {
            continue;
        }
        out.insert((section.to_owned(), key));
    }
    assert!(
        out.len() > 40,
        "parsed only {} keys from src/config/: {out:?}",
        out.len()
    );
    out
}

#[test]
fn configuration_md_covers_every_key() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).expect("doc");
    let missing: Vec<String> = keys_in_code()
        .into_iter()
        .map(|(s, k)| if s.is_empty() { k } else { format!("{s}.{k}") })
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(missing.is_empty(), "docs/configuration.md lacks: {missing:?}");
}

#[test]
fn example_config_covers_every_key() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/pgfleet.toml")).expect("toml");
    let mut missing = Vec::new();
    for (section, key) in keys_in_code() {
        // The key's lines (set or commented out) must stand under its own table header.
        let start = if section.is_empty() {
            Some(0)
        } else {
            text.find(&format!("[{section}]"))
                .or_else(|| text.find(&format!("[[{section}]]")))
        };
        let found = start.is_some_and(|at| {
            let body = &text[at..];
            let end = body[1..].find("\n[").map(|e| e + 1).unwrap_or(body.len());
            body[..end].lines().any(|l| {
                let l = l.trim_start_matches('#').trim();
                l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))
            })
        });
        if !found {
            missing.push(format!("{section}.{key}"));
        }
    }
    assert!(missing.is_empty(), "config/pgfleet.toml lacks: {missing:?}");
}
