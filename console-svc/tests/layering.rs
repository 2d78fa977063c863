//! The layering rule of issue 10, held by tests: the lower layers (the
//! backend contract in `backend.rs`, the backends in `sol/` and `vnc/`,
//! ownership in `coordinator/`, `ports.rs`, `spec.rs`, the task handles in
//! `tasks.rs`) import nothing from the cluster layer (`cluster/`) or from
//! the gRPC-facing error type (`error.rs`); they have their own errors,
//! which `error.rs` converts. The contract imports no backend, and no
//! backend imports another. Reads the source files as text, so it needs no
//! build feature and names the file and line that breaks the rule.

use std::path::{Path, PathBuf};

const LOWER: &[&str] = &[
    "backend.rs",
    "sol",
    "vnc",
    "coordinator",
    "ports.rs",
    "spec.rs",
    "tasks.rs",
];
const UPPER: &[&str] = &["crate::cluster", "crate::error", "crate::grpc"];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// Every line of code (comments cut) under `parts` of `src/` that names one
/// of `forbidden`, as `file:line: text`. `min_files` guards against a path
/// that moved and would make the check vacuous.
fn offences(parts: &[&str], forbidden: &[&str], min_files: usize) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for part in parts {
        rust_files(&src.join(part), &mut files);
    }
    assert!(
        files.len() >= min_files,
        "found only {} files for {parts:?} under {src:?}",
        files.len()
    );
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if forbidden.iter().any(|f| code.contains(f)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn lower_layers_import_nothing_from_the_cluster_or_the_grpc_error() {
    let found = offences(LOWER, UPPER, 20);
    assert!(
        found.is_empty(),
        "lower layers reach up:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_backend_contract_names_no_backend_and_no_backend_another() {
    let found = offences(
        &["backend.rs"],
        &["crate::sol", "crate::vnc", "crate::manager"],
        1,
    );
    assert!(
        found.is_empty(),
        "the contract names an implementation:\n{}",
        found.join("\n")
    );
    let found = offences(&["vnc"], &["crate::sol"], 10);
    assert!(
        found.is_empty(),
        "vnc/ reaches into sol/:\n{}",
        found.join("\n")
    );
    let found = offences(&["sol"], &["crate::vnc"], 10);
    assert!(
        found.is_empty(),
        "sol/ reaches into vnc/:\n{}",
        found.join("\n")
    );
}
