//! Every malformed program of `testsuite/errors/`: it must fail to check,
//! without an internal error, and its rendered diagnostics match the
//! snapshot (file:line:column, the source line, the caret, the hint).

use tdl_testsuite::check_err;

#[test]
fn error_diagnostics() {
    insta::glob!("../errors", "*.tdl", |path| {
        let src = std::fs::read_to_string(path).unwrap();
        let name = format!("errors/{}", path.file_name().unwrap().to_string_lossy());
        insta::assert_snapshot!(check_err(&name, &src));
    });
}
