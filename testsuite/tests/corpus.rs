//! Every program of `testsuite/corpus/` and `examples/`: it checks, its
//! graph text matches the snapshot, and print → parse → print is identity.

use tdl::ir::text::{graphs_equal, parse_module, print_graph};
use tdl_testsuite::{check_ok, graph_text};

fn roundtrip(name: &str, src: &str) {
    let checked = check_ok(name, src);
    for g in &checked.graphs {
        let text = print_graph(g.graph());
        let module =
            parse_module(&text).unwrap_or_else(|e| panic!("{name}: the text form does not re-parse: {e}\n{text}"));
        assert_eq!(module.graphs.len(), 1);
        let back = &module.graphs[0];
        assert!(graphs_equal(g.graph(), back), "{name}: graph `{}` changed through print → parse", g.name);
        assert_eq!(print_graph(back), text, "{name}: print → parse → print is not identity");
        tdl::ir::verify(back.clone()).unwrap_or_else(|e| panic!("{name}: the re-parsed graph does not verify: {e}"));
    }
}

#[test]
fn corpus_graphs() {
    insta::glob!("../corpus", "*.tdl", |path| {
        let src = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        roundtrip(&name, &src);
        insta::assert_snapshot!(graph_text(&check_ok(&name, &src)));
    });
}

#[test]
fn examples_graphs() {
    insta::glob!("../../examples", "*.tdl", |path| {
        let src = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        roundtrip(&name, &src);
        insta::assert_snapshot!(graph_text(&check_ok(&name, &src)));
    });
}
