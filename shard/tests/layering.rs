//! The shard's layering (docs/ARCHITECTURE.md, "Module map"): the leaf services know nothing
//! of the engine, the shard container, the pump, actors or envelopes. Checked on the source,
//! so a new `use crate::engine::...` in a service fails here rather than in review.

use std::path::Path;

/// Leaf services, and the only crate modules each may name (besides itself).
const LEAVES: &[(&str, &[&str])] = &[
    ("calls.rs", &["error"]),
    ("clock.rs", &[]),
    ("cross.rs", &["ring"]),
    ("ring.rs", &["sync"]),
    ("scheduler.rs", &["turn"]),
    ("signal.rs", &[]),
    ("stats.rs", &["memory"]),
    ("memory.rs", &[]),
    ("timers.rs", &[]),
    ("directory.rs", &[]),
    ("admission.rs", &[]),
    ("turn.rs", &["stats"]),
    ("trace.rs", &[]),
    ("sync.rs", &[]),
    ("log_tasks.rs", &["rt"]),
    ("rt/mod.rs", &["ring", "sync"]),
    ("rt/tcp.rs", &[]),
    ("rt/log_io.rs", &[]),
];

/// The crate modules a source file names (`crate::x`), outside comments and outside its unit
/// tests (a test module may build a whole engine).
fn named_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") || line.starts_with("#[cfg(all(test") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn leaf_services_name_no_engine_container_or_actor_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (file, allowed) in LEAVES {
        let text =
            std::fs::read_to_string(src.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let own = file.trim_end_matches(".rs").trim_end_matches("/mod");
        for m in named_modules(&text) {
            if own.starts_with(&m) || own.ends_with(&m) || allowed.contains(&m.as_str()) {
                continue;
            }
            bad.push(format!("{file} names crate::{m}"));
        }
    }
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_sees_a_forbidden_import() {
    let text = "use crate::engine::shared::Phase; // crate::shard in a comment is fine\n\
                #[cfg(test)]\nmod tests { use crate::net::X; }\n";
    assert_eq!(named_modules(text), vec!["engine".to_owned()]);
}
