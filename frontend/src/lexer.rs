//! The `.tdl` lexer (logos). Comments are tokens too, so `tdlc fmt` can keep
//! them; the parser skips them.

use logos::Logos;
use tdl_ir::Span;

#[derive(Logos, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[logos(skip r"[ \t\r\n\f]+")]
pub enum Tok {
    #[token("const")]
    Const,
    #[token("graph")]
    Graph,
    #[token("let")]
    Let,
    #[token("return")]
    Return,
    #[token("true")]
    True,
    #[token("false")]
    False,
    #[token("inf")]
    Inf,

    #[regex(r"[A-Za-z_][A-Za-z0-9_]*")]
    Ident,
    #[regex(r"[0-9]+")]
    Int,
    #[regex(r"[0-9]+\.[0-9]*([eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+|\.[0-9]+([eE][+-]?[0-9]+)?")]
    Float,
    #[regex(r"//[^\n]*", allow_greedy = true)]
    Comment,
    /// `# ...`: not a comment in `.tdl`; reported, then skipped like one.
    #[regex(r"#[^\n]*", allow_greedy = true)]
    HashComment,

    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token(",")]
    Comma,
    #[token(":")]
    Colon,
    #[token(";")]
    Semi,
    #[token("=")]
    Assign,
    #[token("->")]
    Arrow,
    #[token("=>")]
    FatArrow,
    #[token("|>")]
    Pipe,
    #[token("@")]
    At,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("%")]
    Percent,
    #[token("<")]
    Lt,
    #[token("<=")]
    Le,
    #[token(">")]
    Gt,
    #[token(">=")]
    Ge,
    #[token("==")]
    EqEq,
    #[token("!=")]
    Ne,
    #[token("&")]
    Amp,
    #[token("|")]
    Bar,
    #[token("!")]
    Bang,
    #[token("&&")]
    AmpAmp,
    #[token("||")]
    BarBar,

    /// Not produced by logos: a character no token starts with.
    Error,
    /// Not produced by logos: the end of the file.
    Eof,
}

impl Tok {
    /// How the token is described in "expected …, found …" messages.
    pub fn describe(self) -> &'static str {
        match self {
            Tok::Const => "`const`",
            Tok::Graph => "`graph`",
            Tok::Let => "`let`",
            Tok::Return => "`return`",
            Tok::True => "`true`",
            Tok::False => "`false`",
            Tok::Inf => "`inf`",
            Tok::Ident => "an identifier",
            Tok::Int => "an integer",
            Tok::Float => "a number",
            Tok::Comment | Tok::HashComment => "a comment",
            Tok::LParen => "`(`",
            Tok::RParen => "`)`",
            Tok::LBracket => "`[`",
            Tok::RBracket => "`]`",
            Tok::LBrace => "`{`",
            Tok::RBrace => "`}`",
            Tok::Comma => "`,`",
            Tok::Colon => "`:`",
            Tok::Semi => "`;`",
            Tok::Assign => "`=`",
            Tok::Arrow => "`->`",
            Tok::FatArrow => "`=>`",
            Tok::Pipe => "`|>`",
            Tok::At => "`@`",
            Tok::Plus => "`+`",
            Tok::Minus => "`-`",
            Tok::Star => "`*`",
            Tok::Slash => "`/`",
            Tok::Percent => "`%`",
            Tok::Lt => "`<`",
            Tok::Le => "`<=`",
            Tok::Gt => "`>`",
            Tok::Ge => "`>=`",
            Tok::EqEq => "`==`",
            Tok::Ne => "`!=`",
            Tok::Amp => "`&`",
            Tok::Bar => "`|`",
            Tok::Bang => "`!`",
            Tok::AmpAmp => "`&&`",
            Tok::BarBar => "`||`",
            Tok::Error => "an unexpected character",
            Tok::Eof => "the end of the file",
        }
    }
}

/// One token and where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

/// Splits `src` into tokens, comments included, ending with one `Eof`.
/// Never fails: characters no token starts with become `Tok::Error`, which
/// the parser reports.
pub fn lex(src: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut lexer = Tok::lexer(src);
    while let Some(res) = lexer.next() {
        let r = lexer.span();
        let tok = res.unwrap_or(Tok::Error);
        out.push(Token { tok, span: Span::new(r.start, r.end) });
    }
    out.push(Token { tok: Tok::Eof, span: Span::new(src.len(), src.len()) });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn lexes_the_operators() {
        assert_eq!(
            toks("a |> f(x) => <= == != -> @ // c"),
            vec![
                Tok::Ident,
                Tok::Pipe,
                Tok::Ident,
                Tok::LParen,
                Tok::Ident,
                Tok::RParen,
                Tok::FatArrow,
                Tok::Le,
                Tok::EqEq,
                Tok::Ne,
                Tok::Arrow,
                Tok::At,
                Tok::Comment,
                Tok::Eof
            ]
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(
            toks("64 0.125 1e-5 3. .5 inf"),
            vec![Tok::Int, Tok::Float, Tok::Float, Tok::Float, Tok::Float, Tok::Inf, Tok::Eof]
        );
    }

    #[test]
    fn bad_characters_become_error_tokens() {
        assert_eq!(toks("a \0 $ b"), vec![Tok::Ident, Tok::Error, Tok::Error, Tok::Ident, Tok::Eof]);
    }
}
