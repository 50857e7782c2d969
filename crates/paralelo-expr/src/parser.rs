//! Python's expression grammar, by precedence climbing: what `compile(s, "<expr>",
//! "eval")` accepts of it, with the constructs numexpr refuses kept as nodes that typing
//! refuses with numexpr's own messages.

use crate::ast::{BinaryOp, CompareOp, Expr, Literal, UnaryOp};
use crate::error::{ExprError, Result};
use crate::lexer::{tokens, Token};

pub fn parse(src: &str) -> Result<Expr> {
    let mut p = Parser {
        toks: tokens(src)?,
        at: 0,
    };
    if p.peek() == &Token::End {
        return Err(ExprError::Syntax("the expression is empty".into()));
    }
    let e = p.test()?;
    if p.peek() == &Token::Op(",") {
        return Err(ExprError::Type(
            "unsupported expression type: <class 'tuple'>".into(),
        ));
    }
    match p.peek() {
        Token::End => Ok(e),
        t => Err(ExprError::Syntax(format!(
            "invalid syntax at {}",
            describe(t)
        ))),
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::Number(_) => "a number".into(),
        Token::Name(n) => format!("'{n}'"),
        Token::Str => "a string".into(),
        Token::Op(o) => format!("'{o}'"),
        Token::End => "the end".into(),
    }
}

/// A call's positional and keyword arguments.
type Arguments = (Vec<Expr>, Vec<(String, Expr)>);

struct Parser {
    toks: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.toks[self.at]
    }

    fn next(&mut self) -> Token {
        let t = self.toks[self.at].clone();
        if t != Token::End {
            self.at += 1;
        }
        t
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Token::Op(o) if *o == op) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Token::Name(n) if n == word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect_op(&mut self, op: &str) -> Result<()> {
        if self.eat_op(op) {
            Ok(())
        } else {
            Err(ExprError::Syntax(format!(
                "expected '{op}', found {}",
                describe(self.peek())
            )))
        }
    }

    /// `or_test ['if' or_test 'else' test]`, and `lambda`.
    fn test(&mut self) -> Result<Expr> {
        if self.eat_word("lambda") {
            return Err(ExprError::Syntax(
                "lambda is not allowed in an expression".into(),
            ));
        }
        let e = self.or_test()?;
        if self.eat_word("if") {
            self.or_test()?;
            if !self.eat_word("else") {
                return Err(ExprError::Syntax("expected 'else' after 'if'".into()));
            }
            self.test()?;
            return Ok(Expr::Logical);
        }
        Ok(e)
    }

    fn or_test(&mut self) -> Result<Expr> {
        let mut e = self.and_test()?;
        while self.eat_word("or") {
            self.and_test()?;
            e = Expr::Logical;
        }
        Ok(e)
    }

    fn and_test(&mut self) -> Result<Expr> {
        let mut e = self.not_test()?;
        while self.eat_word("and") {
            self.not_test()?;
            e = Expr::Logical;
        }
        Ok(e)
    }

    fn not_test(&mut self) -> Result<Expr> {
        if self.eat_word("not") {
            return Ok(Expr::Unary(UnaryOp::Not, Box::new(self.not_test()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr> {
        let first = self.binary(0)?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek() {
                Token::Op("<") => CompareOp::Lt,
                Token::Op("<=") => CompareOp::Le,
                Token::Op(">") => CompareOp::Gt,
                Token::Op(">=") => CompareOp::Ge,
                Token::Op("==") => CompareOp::Eq,
                Token::Op("!=") => CompareOp::Ne,
                Token::Name(n) if n == "in" || n == "is" => CompareOp::Other,
                Token::Name(n) if n == "not" => {
                    self.next();
                    if !self.eat_word("in") {
                        return Err(ExprError::Syntax("expected 'in' after 'not'".into()));
                    }
                    rest.push((CompareOp::Other, self.binary(0)?));
                    continue;
                }
                _ => break,
            };
            self.next();
            if op == CompareOp::Other {
                self.eat_word("not"); // (`is not`)
            }
            rest.push((op, self.binary(0)?));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Expr::Compare(Box::new(first), rest)
        })
    }

    /// The binary operators from `|` to `*`, by precedence level (0: `|`).
    fn binary(&mut self, level: usize) -> Result<Expr> {
        const LEVELS: [&[(&str, BinaryOp)]; 6] = [
            &[("|", BinaryOp::BitOr)],
            &[("^", BinaryOp::BitXor)],
            &[("&", BinaryOp::BitAnd)],
            &[("<<", BinaryOp::LShift), (">>", BinaryOp::RShift)],
            &[("+", BinaryOp::Add), ("-", BinaryOp::Sub)],
            &[
                ("*", BinaryOp::Mul),
                ("/", BinaryOp::Div),
                ("//", BinaryOp::FloorDiv),
                ("%", BinaryOp::Mod),
                ("@", BinaryOp::MatMul),
            ],
        ];
        if level == LEVELS.len() {
            return self.factor();
        }
        let mut e = self.binary(level + 1)?;
        'outer: loop {
            for (text, op) in LEVELS[level] {
                if self.eat_op(text) {
                    let rhs = self.binary(level + 1)?;
                    e = Expr::Binary(*op, Box::new(e), Box::new(rhs));
                    continue 'outer;
                }
            }
            return Ok(e);
        }
    }

    fn factor(&mut self) -> Result<Expr> {
        for (text, op) in [
            ("-", UnaryOp::Neg),
            ("+", UnaryOp::Pos),
            ("~", UnaryOp::Invert),
        ] {
            if self.eat_op(text) {
                return Ok(Expr::Unary(op, Box::new(self.factor()?)));
            }
        }
        self.power()
    }

    fn power(&mut self) -> Result<Expr> {
        let base = self.primary()?;
        if self.eat_op("**") {
            let exp = self.factor()?; // (right-associative, and binds a unary minus: 2**-1)
            return Ok(Expr::Binary(BinaryOp::Pow, Box::new(base), Box::new(exp)));
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<Expr> {
        let mut e = self.atom()?;
        loop {
            if self.eat_op("(") {
                let func = match e {
                    Expr::Name(n) => n,
                    _ => return Err(ExprError::Type("only named functions can be called".into())),
                };
                let (args, kwargs) = self.arguments()?;
                e = Expr::Call { func, args, kwargs };
            } else if self.eat_op(".") {
                match self.next() {
                    Token::Name(attr) => e = Expr::Attribute(Box::new(e), attr),
                    t => {
                        return Err(ExprError::Syntax(format!(
                            "expected an attribute name, found {}",
                            describe(&t)
                        )))
                    }
                }
            } else if matches!(self.peek(), Token::Op("[")) {
                return Err(ExprError::Syntax(
                    "subscripts are not allowed in an expression".into(),
                ));
            } else {
                return Ok(e);
            }
        }
    }

    fn arguments(&mut self) -> Result<Arguments> {
        let mut args = Vec::new();
        let mut kwargs: Vec<(String, Expr)> = Vec::new();
        while !self.eat_op(")") {
            if let (Token::Name(name), Token::Op("=")) =
                (self.peek().clone(), &self.toks[self.at + 1])
            {
                self.at += 2;
                kwargs.push((name, self.test()?));
            } else {
                if !kwargs.is_empty() {
                    return Err(ExprError::Syntax(
                        "positional argument follows keyword argument".into(),
                    ));
                }
                args.push(self.test()?);
            }
            if !self.eat_op(",") {
                self.expect_op(")")?;
                break;
            }
        }
        Ok((args, kwargs))
    }

    fn atom(&mut self) -> Result<Expr> {
        match self.next() {
            Token::Number(lit) => Ok(Expr::Literal(lit)),
            Token::Str => Ok(Expr::Unsupported("strings")),
            Token::Name(n) => Ok(match n.as_str() {
                "True" => Expr::Literal(Literal::Bool(true)),
                "False" => Expr::Literal(Literal::Bool(false)),
                "None" => Expr::Unsupported("None"),
                "and" | "or" | "not" | "if" | "else" | "in" | "is" | "lambda" | "for"
                | "import" | "yield" | "await" | "del" | "pass" | "return" => {
                    return Err(ExprError::Syntax(format!("invalid syntax at '{n}'")));
                }
                _ => Expr::Name(n),
            }),
            Token::Op("(") => {
                if self.eat_op(")") {
                    return Err(ExprError::Type(
                        "unsupported expression type: <class 'tuple'>".into(),
                    ));
                }
                let e = self.test()?;
                if self.eat_op(",") {
                    return Err(ExprError::Type(
                        "unsupported expression type: <class 'tuple'>".into(),
                    ));
                }
                self.expect_op(")")?;
                Ok(e)
            }
            t => Err(ExprError::Syntax(format!(
                "invalid syntax at {}",
                describe(&t)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Box<Expr> {
        Box::new(Expr::Name(n.into()))
    }

    #[test]
    fn precedence_as_python() {
        // -a**2 is -(a**2); a + b * c; a | b & c; 2**-1
        assert_eq!(
            parse("-a**2").unwrap(),
            Expr::Unary(
                UnaryOp::Neg,
                Box::new(Expr::Binary(
                    BinaryOp::Pow,
                    name("a"),
                    Box::new(Expr::Literal(Literal::Int(2)))
                ))
            )
        );
        assert_eq!(
            parse("a + b * c").unwrap(),
            Expr::Binary(
                BinaryOp::Add,
                name("a"),
                Box::new(Expr::Binary(BinaryOp::Mul, name("b"), name("c")))
            )
        );
        assert_eq!(
            parse("a | b & c").unwrap(),
            Expr::Binary(
                BinaryOp::BitOr,
                name("a"),
                Box::new(Expr::Binary(BinaryOp::BitAnd, name("b"), name("c")))
            )
        );
        assert_eq!(
            parse("a ** b ** c").unwrap(),
            Expr::Binary(
                BinaryOp::Pow,
                name("a"),
                Box::new(Expr::Binary(BinaryOp::Pow, name("b"), name("c")))
            )
        );
        assert_eq!(
            parse("a - b - c").unwrap(),
            Expr::Binary(
                BinaryOp::Sub,
                Box::new(Expr::Binary(BinaryOp::Sub, name("a"), name("b"))),
                name("c")
            )
        );
    }

    #[test]
    fn calls_attributes_and_names() {
        let e = parse("sum(where(x > 0, x, 0), axis=1) + y.real").unwrap();
        assert_eq!(e.names(), vec!["x".to_string(), "y".to_string()]);
        assert!(matches!(parse("x < y < z").unwrap(), Expr::Compare(_, rest) if rest.len() == 2));
        assert_eq!(parse("a and b").unwrap(), Expr::Logical);
        assert_eq!(parse("a if b else c").unwrap(), Expr::Logical);
    }

    #[test]
    fn bad_syntax() {
        for bad in [
            "",
            "a +",
            "(a",
            "a b",
            "f(a,,b)",
            "x[0]",
            "lambda: 1",
            "1 +* 2",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(matches!(parse("a, b"), Err(ExprError::Type(_))));
    }
}
