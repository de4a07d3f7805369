//! The architecture, checked from the sources: every `crate::` and `super::` import points down
//! the layers of docs/architecture.md, and no two files import each other through those paths,
//! directly or around a cycle. A module's own submodules are part of it: a parent names its
//! children by relative paths (`framer::Framer`), which are not counted, so a child may use its
//! parent's items (`super::StreamError`) as a facade's internals do. Test code (`#[cfg(test)]`
//! modules and `tests.rs` files) may import anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules, lowest layer first. A module may import its own layer and those
/// before it, never one after it.
const LAYERS: [&str; 10] = [
    "util", "domain", "mock", "http", "input", "cli", "store", "engine", "inspect", "demo",
];

/// One source file: its module path (`engine::attempt`) and its non-test code.
struct Source {
    module: String,
    code: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&root).expect("under src");
            let module = module_of(relative)?;
            let text = std::fs::read_to_string(&path).expect("read source");
            Some(Source {
                module,
                code: without_tests_and_comments(&text),
            })
        })
        .filter(|s| s.module != "tests" && !s.module.ends_with("::tests"))
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// `engine/attempt.rs` → `engine::attempt`, `store/mod.rs` → `store`, `lib.rs` → `` (the
/// crate root); `main.rs` is the binary, not a module of the library.
fn module_of(relative: &Path) -> Option<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop()?;
    match file.as_str() {
        "main.rs" if parts.is_empty() => return None,
        "lib.rs" if parts.is_empty() => {}
        "mod.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_owned()),
    }
    Some(parts.join("::"))
}

/// The code before the first `#[cfg(test)]`, without `//` comments (doc links are not imports).
fn without_tests_and_comments(text: &str) -> String {
    text.lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            Some(_) | None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module a file's code names: `crate::a::b::C` → `a::b` (the longest prefix that is a
/// module file), `use crate::a::{b, c}` → `a::b` and `a::c` where those are modules, and
/// `super::x` resolved against the file's own module.
fn imports(source: &Source, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let code = source.code.as_str();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent(source))] {
        let mut at = 0;
        while let Some(offset) = code[at..].find(prefix) {
            let start = at + offset;
            at = start + prefix.len();
            let before = code[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut path: Vec<String> = if base.is_empty() {
                Vec::new()
            } else {
                base.split("::").map(str::to_owned).collect()
            };
            let mut rest = &code[at..];
            loop {
                let name = ident(rest);
                if !name.is_empty() {
                    path.push(name.to_owned());
                    rest = &rest[name.len()..];
                    match rest.strip_prefix("::") {
                        Some(more) => rest = more,
                        None => break,
                    }
                } else if let Some(group) = rest.strip_prefix('{') {
                    // `a::{b, c::D}`: each item's first name, under the path so far.
                    let inner = &group[..group.find('}').unwrap_or(group.len())];
                    for item in inner.split(',') {
                        let mut with_item = path.clone();
                        with_item.push(ident(item.trim()).to_owned());
                        insert_longest(&with_item, modules, source, &mut found);
                    }
                    break;
                } else {
                    break;
                }
            }
            if path.is_empty() && prefix == "crate::" && rest.starts_with(char::is_uppercase) {
                // `crate::Exit`: an item of the crate root, the top layer.
                found.insert(String::new());
            }
            insert_longest(&path, modules, source, &mut found);
        }
    }
    found
}

/// A leading lower-case identifier (module names are snake case; types are not).
fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// Records the longest prefix of `path` that is a module, unless it is the file itself.
fn insert_longest(
    path: &[String],
    modules: &BTreeSet<String>,
    source: &Source,
    found: &mut BTreeSet<String>,
) {
    let longest = (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|candidate| modules.contains(candidate));
    if let Some(module) = longest.filter(|m| *m != source.module) {
        found.insert(module);
    }
}

/// The module `super` names in this file.
fn parent(source: &Source) -> String {
    let mut parts: Vec<&str> = source.module.split("::").collect();
    parts.pop();
    parts.join("::")
}

fn layer(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|l| *l == top)
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let modules: BTreeSet<String> = sources.iter().map(|s| s.module.clone()).collect();
    sources
        .iter()
        .map(|s| (s.module.clone(), imports(s, &modules)))
        .collect()
}

#[test]
fn imports_point_down() {
    let graph = graph();
    assert!(
        graph.len() > 40,
        "the scan found only {} modules",
        graph.len()
    );
    let mut upward = Vec::new();
    for (module, imports) in &graph {
        let Some(own) = layer(module) else {
            continue; // the crate root: the top, may import anything
        };
        for import in imports {
            match layer(import) {
                Some(theirs) if theirs > own => upward.push(format!("{module} → {import}")),
                Some(_) => {}
                None => upward.push(format!("{module} → {import} (the crate root)")),
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports pointing up:\n{}",
        upward.join("\n")
    );
    // Every top-level module is in the list.
    for module in graph.keys().filter(|m| !m.is_empty()) {
        assert!(
            layer(module).is_some(),
            "{module} is in no layer: add it to LAYERS and docs/architecture.md"
        );
    }
}

#[test]
fn no_import_cycles_between_files() {
    let graph = graph();
    // Depth-first search with colours: grey on the stack, black done.
    let mut colour: BTreeMap<&str, u8> = BTreeMap::new();
    let mut cycles = Vec::new();
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        colour.insert(module, 1);
        stack.push(module);
        for next in graph.get(module).into_iter().flatten() {
            match colour.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|m| *m == next).unwrap_or(0);
                    cycles.push(format!("{} → {next}", stack[from..].join(" → ")));
                }
                Some(_) => {}
                None => visit(next, graph, colour, stack, cycles),
            }
        }
        stack.pop();
        colour.insert(module, 2);
    }
    for module in graph.keys() {
        if !colour.contains_key(module.as_str()) {
            visit(module, &graph, &mut colour, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_scanner_sees_imports() {
    // The test above can only pass meaningfully if the scan finds real edges.
    let graph = graph();
    let attempt = &graph["engine::attempt"];
    assert!(attempt.contains("http::classify"), "{attempt:?}");
    assert!(attempt.contains("engine::context"), "{attempt:?}");
    assert!(graph["store::journal"].contains("store::db"));
}
