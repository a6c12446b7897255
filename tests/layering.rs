//! The layering rule of ARCHITECTURE.md, held by `cargo test`: each
//! top-level folder (or leaf file) of `src/` imports only what its row of
//! the "Layers" table lists, the table itself has no cycle, and inside a
//! folder no two modules import each other, directly or through others.
//!
//! Imports are read from the source as the compiler sees them: every
//! `crate::name` path and every name of a `use crate::{...}` group, outside
//! comments (tests included: a test module may not reach up either), plus
//! `super::name` between siblings of one folder. Between siblings, a unit
//! test module may use what it tests with (it is not part of the module's
//! dependencies), so those edges are read from code outside `#[cfg(test)]`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One top-level unit's row of the table: what it may import.
type Table = BTreeMap<String, BTreeSet<String>>;

/// The "Layers" table of ARCHITECTURE.md: rows like
/// `` | `cache/` | owns ... | config, metrics, rfc | `` (a last cell of
/// `nothing` for none).
fn layers_table(architecture: &str) -> Table {
    let section = architecture
        .split("\n## Layers")
        .nth(1)
        .expect("ARCHITECTURE.md has a \"## Layers\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut table = Table::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let unit = cells[0]
            .trim_matches('`')
            .trim_end_matches('/')
            .trim_end_matches(".rs");
        let allowed = cells.last().expect("a may-import cell");
        let allowed = match *allowed {
            "nothing" => BTreeSet::new(),
            list => list
                .split(',')
                .map(|n| n.trim().trim_matches('`').to_string())
                .collect(),
        };
        table.insert(unit.to_string(), allowed);
    }
    assert!(!table.is_empty(), "the Layers table has no rows");
    table
}

/// A source file: its path under `src/` (with `/`) and its text.
struct Source {
    path: String,
    text: String,
}

fn sources(dir: &Path, under: &str, out: &mut Vec<Source>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let relative = format!("{under}{name}");
        if path.is_dir() {
            sources(&path, &format!("{relative}/"), out);
        } else if name.ends_with(".rs") {
            let text = std::fs::read_to_string(&path).expect("read a source file");
            out.push(Source {
                path: relative,
                text,
            });
        }
    }
}

/// The text without `//` comments (doc comments name modules freely).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path after `crate::` (as `a::b::c`, the first segments only).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in top_level_items(&group[..end]) {
                paths.push(segments(item));
            }
        } else {
            paths.push(segments(rest));
        }
    }
    paths
}

fn matching_brace(text: &str) -> usize {
    let mut depth = 1;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    text.len()
}

fn top_level_items(group: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(group[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(group[start..].trim());
    items.into_iter().filter(|i| !i.is_empty()).collect()
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|s| !s.is_empty())
        .collect()
}

/// `src/cache/store/mod.rs` → ("cache", Some("store")); `src/admin.rs` → ("admin", None).
fn unit_and_child(path: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = path.trim_end_matches(".rs").split('/').collect();
    let unit = parts[0].to_string();
    let child = parts.get(1).filter(|c| **c != "mod").map(|c| c.to_string());
    (unit, child)
}

/// What breaks the rule, one line each (empty: the code keeps it).
fn violations(table: &Table, sources: &[Source]) -> Vec<String> {
    let mut found = Vec::new();
    let units: BTreeSet<String> = sources
        .iter()
        .map(|s| unit_and_child(&s.path).0)
        .filter(|u| u != "lib" && u != "main")
        .collect();
    for unit in &units {
        if !table.contains_key(unit) {
            found.push(format!("src/{unit} has no row in the Layers table"));
        }
    }
    for (unit, allowed) in table {
        for name in allowed {
            if !table.contains_key(name) {
                found.push(format!("{unit} may import {name}, which has no row"));
            }
        }
    }
    if let Some(cycle) = cycle(table) {
        found.push(format!(
            "the Layers table has a cycle: {}",
            cycle.join(" -> ")
        ));
    }
    let mut children: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for source in sources {
        let (unit, child) = unit_and_child(&source.path);
        let Some(allowed) = table.get(&unit) else {
            continue;
        };
        let code = code(&source.text);
        let outside_tests = code.split("#[cfg(test)]").next().unwrap_or("");
        for path in crate_paths(&code) {
            let Some(first) = path.first() else { continue };
            let known = units.contains(first) || table.contains_key(first);
            if first != &unit && known && !allowed.contains(first) {
                found.push(format!(
                    "src/{} imports crate::{}, which {unit} may not (Layers table)",
                    source.path,
                    path.join("::")
                ));
            }
        }
        if let Some(from) = &child {
            let named = crate_paths(outside_tests)
                .into_iter()
                .filter_map(|path| (path.first() == Some(&unit)).then(|| path.get(1).cloned())?);
            for to in named.chain(super_siblings(outside_tests, &source.path)) {
                let edges = children.entry(unit.clone()).or_default();
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    for (unit, edges) in &children {
        let edges: Table = edges
            .iter()
            .map(|(from, to)| {
                let to = to.iter().filter(|t| *t != from && edges.contains_key(*t));
                (from.clone(), to.cloned().collect())
            })
            .collect();
        if let Some(cycle) = cycle(&edges) {
            found.push(format!(
                "modules of src/{unit}/ import each other: {}",
                cycle.join(" -> ")
            ));
        }
    }
    found
}

/// For a file directly in a folder (`src/x/a.rs`), the sibling modules it
/// names with `super::name` (`src/x/a/mod.rs` and deeper files are inside
/// `a`, where `super` is still `a` or below it).
fn super_siblings(code: &str, path: &str) -> Vec<String> {
    if path.matches('/').count() != 1 {
        return Vec::new();
    }
    code.match_indices("super::")
        .filter_map(|(at, _)| segments(&code[at + "super::".len()..]).into_iter().next())
        .filter(|name| name.chars().all(|c| c.is_lowercase() || c == '_'))
        .collect()
}

/// A cycle among the edges, if there is one.
fn cycle(edges: &Table) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &Table,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_folder_imports_only_the_layers_below_it() {
    let architecture = std::fs::read_to_string(repository().join("ARCHITECTURE.md"))
        .expect("read ARCHITECTURE.md");
    let table = layers_table(&architecture);
    let mut all = Vec::new();
    sources(&repository().join("src"), "", &mut all);
    let found = violations(&table, &all);
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

/// The check finds what it is for: an import upward, an import sideways
/// that the table does not list, a cycle in the table, and two modules of
/// one folder that import each other.
#[test]
fn the_check_finds_upward_imports_and_cycles() {
    let architecture = "\n## Layers\n\n| unit | owns | may import |\n|---|---|---|\n\
        | `rfc/` | rules | nothing |\n| `cache/` | store | rfc |\n\
        | `net/` | edge | rfc |\n| `proxy.rs` | path | cache, net, rfc |\n";
    let table = layers_table(architecture);
    let source = |path: &str, text: &str| Source {
        path: path.into(),
        text: text.into(),
    };
    let clean = [
        source("rfc/mod.rs", "pub mod a;"),
        source(
            "cache/mod.rs",
            "use crate::rfc::a; // crate::proxy in a comment",
        ),
        source("net/mod.rs", "use crate::rfc::a;"),
        source("proxy.rs", "use crate::{cache::x, net::{y, z}};"),
    ];
    assert_eq!(violations(&table, &clean), Vec::<String>::new());

    let upward = [source("cache/store.rs", "fn f() { crate::proxy::go() }")];
    assert_eq!(violations(&table, &upward).len(), 1, "upward");
    let sideways = [source(
        "net/origin.rs",
        "use crate::{rfc::a, cache::store};",
    )];
    assert_eq!(violations(&table, &sideways).len(), 1, "sideways");
    let unlisted = [source("extra.rs", "")];
    assert_eq!(violations(&table, &unlisted).len(), 1, "a unit with no row");

    let mut cyclic = table.clone();
    cyclic.get_mut("rfc").unwrap().insert("proxy".into());
    assert!(violations(&cyclic, &[]).iter().any(|v| v.contains("cycle")));

    let siblings = [
        source("net/a.rs", "use super::b::X;"),
        source("net/b.rs", "use crate::net::a::Y;"),
    ];
    let found = violations(&table, &siblings);
    assert!(
        found.len() == 1 && found[0].contains("import each other"),
        "{found:?}"
    );
}
