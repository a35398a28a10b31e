//! Embeds the conformance corpus (`testsuite/corpus/*.tdl` and
//! `examples/*.tdl`) in the binary for `tdlc selftest`.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = String::from(
        "/// `(name, source)` of every corpus program, in name order.\npub const CORPUS: &[(&str, &str)] = &[\n",
    );
    for dir in ["testsuite/corpus", "examples"] {
        let path = root.join(dir);
        println!("cargo:rerun-if-changed={}", path.display());
        let Ok(entries) = std::fs::read_dir(&path) else { continue };
        let mut files: Vec<_> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "tdl")).collect();
        files.sort();
        let short = dir.rsplit('/').next().unwrap_or(dir);
        for f in files {
            println!("cargo:rerun-if-changed={}", f.display());
            let name = format!("{short}/{}", f.file_name().unwrap_or_default().to_string_lossy());
            let _ = writeln!(out, "    ({name:?}, include_str!({:?})),", f.display().to_string());
        }
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("corpus.rs");
    std::fs::write(dest, out).expect("write corpus.rs");
}
