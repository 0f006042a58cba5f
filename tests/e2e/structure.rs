//! The host's structure, checked from its own source: each room (a top-level
//! module of `host/src`) imports only rooms below it, so the rooms form no
//! circle, and the composition root is imported by nobody.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Which rooms each room names as `crate::<room>` outside its tests.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let room_of = |path: &Path| {
        let first = path.strip_prefix(&src).unwrap().components().next().unwrap();
        first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string()
    };
    let rooms: BTreeSet<String> = files.iter().map(|f| room_of(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = rooms.iter().map(|r| (r.clone(), BTreeSet::new())).collect();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        if name.contains("tests") || name == "testdb.rs" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        // A file's own test module comes last.
        let text = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
        let from = room_of(file);
        let mut rest = text;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let to: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if to != from && rooms.contains(&to) && to != "testdb" {
                graph.get_mut(&from).unwrap().insert(to);
            }
        }
    }
    graph
}

/// A circle through `start`, if its imports lead back to it.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![start.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in &graph[last] {
            if next == start {
                return Some(path.clone());
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn rooms_import_only_rooms_below_them() {
    let graph = imports();
    assert!(graph.len() > 20, "the rooms were not found: {graph:?}");
    for room in graph.keys() {
        if let Some(path) = circle(&graph, room) {
            panic!("the rooms import each other in a circle: {} → {room}", path.join(" → "));
        }
    }
    let importers: Vec<&String> = graph.iter().filter(|(_, to)| to.contains("node")).map(|(from, _)| from).collect();
    assert!(importers.iter().all(|r| *r == "cli" || *r == "lib"), "the composition root is imported by {importers:?}");
}
