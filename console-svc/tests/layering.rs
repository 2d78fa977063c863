//! The layering rule of issue 10, held by a test: the lower layers (the
//! backends in `sol/` and `vnc/`, ownership in `coordinator/`, `ports.rs`,
//! `spec.rs`) import nothing from the cluster layer (`cluster/`) or from the
//! gRPC-facing error type (`error.rs`); they have their own errors, which
//! `error.rs` converts. Reads the source files as text, so it needs no build
//! feature and names the file and line that breaks the rule.

use std::path::{Path, PathBuf};

const LOWER: &[&str] = &["sol", "vnc", "coordinator", "ports.rs", "spec.rs"];
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

#[test]
fn lower_layers_import_nothing_from_the_cluster_or_the_grpc_error() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for part in LOWER {
        rust_files(&src.join(part), &mut files);
    }
    assert!(
        files.len() > 20,
        "found only {} files under {src:?}",
        files.len()
    );
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if UPPER.iter().any(|upper| code.contains(upper)) {
                offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "lower layers reach up:\n{}",
        offences.join("\n")
    );
}
