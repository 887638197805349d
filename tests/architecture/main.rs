//! Checks of the code's shape that the compiler cannot make: every Postgres table has
//! one owning crate, and no other crate names it in SQL. Other crates reach a table
//! through functions of its owner, so that each table's rules (its states, its locks,
//! its row-level security) live in one place.
//!
//! Reads files only; needs no stack.

mod owners;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use owners::{EXEMPT_CRATES, OWNERS};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn files_with(dir: &Path, extension: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files_with(&path, extension, found);
        } else if path.extension().is_some_and(|e| e == extension) {
            found.push(path);
        }
    }
}

fn words(source: &str) -> Vec<&str> {
    source
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

/// The tables and views the Postgres migrations create. Partitions (`usage_batches_0`,
/// made by name in a loop as `usage_batches_`) count as their parent.
fn migrated_tables() -> BTreeSet<String> {
    let mut files = Vec::new();
    files_with(&workspace().join("migrations/postgres"), "sql", &mut files);
    assert!(!files.is_empty(), "no migrations found");
    let mut tables = BTreeSet::new();
    for file in files {
        let sql = std::fs::read_to_string(&file).unwrap().to_ascii_lowercase();
        let words = words(&sql);
        for (i, pair) in words.windows(2).enumerate() {
            if pair[0] != "create" {
                continue;
            }
            let rest = &words[i + 1..];
            let name = match rest {
                ["table" | "view", "if", "not", "exists", name, ..] => name,
                ["unlogged", "table", name, ..] | ["table" | "view", name, ..] => name,
                _ => continue,
            };
            tables.insert(name.to_string());
        }
    }
    let parents: Vec<String> = tables.iter().cloned().collect();
    tables.retain(|table| {
        let stem = table.trim_end_matches(|c: char| c.is_ascii_digit());
        let stem = stem.strip_suffix('_').unwrap_or(stem);
        stem == table || !parents.iter().any(|p| p == stem)
    });
    // Renamed away and dropped by a later migration.
    tables.remove("usage_events_unpartitioned");
    tables
}

/// The tables a piece of Rust names in SQL: a table name right after one of the words
/// that make a statement read or write a table.
fn tables_named(source: &str, tables: &BTreeSet<String>) -> BTreeSet<String> {
    let words = words(source);
    words
        .windows(2)
        .filter(|pair| {
            matches!(
                pair[0],
                "FROM" | "JOIN" | "UPDATE" | "INTO" | "TABLE" | "TRUNCATE" | "ONLY"
            )
        })
        .map(|pair| {
            let stem = pair[1].trim_end_matches(|c: char| c.is_ascii_digit());
            match stem.strip_suffix('_') {
                Some(parent) if tables.contains(parent) => parent.to_string(),
                _ => pair[1].to_string(),
            }
        })
        .filter(|name| tables.contains(name))
        .collect()
}

/// For each crate, the tables of other crates its SQL names, with the files.
fn trespasses(tables: &BTreeSet<String>) -> BTreeMap<(String, String), BTreeSet<String>> {
    let owner_of: BTreeMap<&str, &str> = OWNERS
        .iter()
        .flat_map(|(krate, owned)| owned.iter().map(move |table| (*table, *krate)))
        .collect();
    let crates = workspace().join("crates");
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&crates).unwrap() {
        let dir = entry.unwrap().path();
        let krate = dir.file_name().unwrap().to_string_lossy().to_string();
        if EXEMPT_CRATES.iter().any(|(exempt, _)| *exempt == krate) {
            continue;
        }
        let mut files = Vec::new();
        files_with(&dir.join("src"), "rs", &mut files);
        for file in files {
            let source = std::fs::read_to_string(&file).unwrap();
            for table in tables_named(&source, tables) {
                if owner_of.get(table.as_str()) == Some(&krate.as_str()) {
                    continue;
                }
                let relative = file.strip_prefix(&crates).unwrap().display().to_string();
                found
                    .entry((krate.clone(), table))
                    .or_insert_with(BTreeSet::new)
                    .insert(relative);
            }
        }
    }
    found
}

#[test]
fn every_table_has_one_owner() {
    let tables = migrated_tables();
    let mut owners: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (krate, owned) in OWNERS {
        for table in *owned {
            owners.entry(table).or_default().push(krate);
        }
    }
    let unowned: Vec<_> = tables
        .iter()
        .filter(|t| !owners.contains_key(t.as_str()))
        .collect();
    assert!(unowned.is_empty(), "tables without an owner: {unowned:?}");
    let shared: Vec<_> = owners.iter().filter(|(_, o)| o.len() > 1).collect();
    assert!(shared.is_empty(), "tables with two owners: {shared:?}");
    let gone: Vec<_> = owners.keys().filter(|t| !tables.contains(**t)).collect();
    assert!(
        gone.is_empty(),
        "owned tables no migration creates: {gone:?}"
    );
}

#[test]
fn no_crate_names_another_crates_tables_in_sql() {
    let tables = migrated_tables();
    let found = trespasses(&tables);
    assert!(
        found.is_empty(),
        "SQL on another crate's table (call a function of its owner instead): {found:#?}"
    );
}

#[test]
fn the_check_sees_what_it_looks_for() {
    let tables: BTreeSet<String> = ["invoices", "usage_batches"]
        .into_iter()
        .map(String::from)
        .collect();
    let named = |sql| tables_named(sql, &tables).into_iter().collect::<Vec<_>>();
    assert_eq!(named("\"UPDATE invoices SET status = $1\""), ["invoices"]);
    assert_eq!(named("\"TRUNCATE usage_batches_3\""), ["usage_batches"]);
    assert_eq!(
        named("\"LOCK TABLE ONLY usage_batches_0\""),
        ["usage_batches"]
    );
    assert!(named("// the invoices of a tenant").is_empty());
    assert!(migrated_tables().contains("tenants"));
    assert!(!migrated_tables().contains("usage_batches_0"));
}
