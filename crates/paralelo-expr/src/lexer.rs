//! Python's tokens, as far as an expression uses them.

use num_complex::Complex64;

use crate::ast::Literal;
use crate::error::{ExprError, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Token {
    Number(Literal),
    Name(String),
    /// A string literal (refused when typed).
    Str,
    Op(&'static str),
    End,
}

/// Operators, longest first so that `**` is read before `*`.
const OPS: [&str; 31] = [
    "**", "//", "<<", ">>", "<=", ">=", "==", "!=", "->", ":=", "+", "-", "*", "/", "%", "~", "&",
    "|", "^", "<", ">", "(", ")", ",", "=", ".", ";", "[", "]", ":", "@",
];

pub fn tokens(src: &str) -> Result<Vec<Token>> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() || c == '\\' {
            i += 1;
        } else if c == '#' {
            // A comment, to the end of its line (Python's, which numexpr compiles with).
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let (lit, end) = number(&chars, i)?;
            out.push(Token::Number(lit));
            i = end;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // A string prefix (b'...', r"...").
            if i < chars.len() && (chars[i] == '\'' || chars[i] == '"') && word.len() <= 2 {
                i = string_end(&chars, i)?;
                out.push(Token::Str);
            } else {
                out.push(Token::Name(word));
            }
        } else if c == '\'' || c == '"' {
            i = string_end(&chars, i)?;
            out.push(Token::Str);
        } else {
            let rest: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            match OPS.iter().find(|op| rest.starts_with(**op)) {
                Some(op) => {
                    out.push(Token::Op(op));
                    i += op.len();
                }
                None => {
                    return Err(ExprError::Syntax(format!(
                        "invalid character '{c}' in the expression"
                    )))
                }
            }
        }
    }
    out.push(Token::End);
    Ok(out)
}

fn string_end(chars: &[char], start: usize) -> Result<usize> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(ExprError::Syntax("unterminated string literal".into()))
}

/// A number starting at `start`: an int (decimal, 0x, 0o, 0b), a float, or an imaginary.
fn number(chars: &[char], start: usize) -> Result<(Literal, usize)> {
    let bad = |text: &str| ExprError::Syntax(format!("invalid number literal '{text}'"));
    let mut i = start;
    let radix = match (chars[i], chars.get(i + 1).map(|c| c.to_ascii_lowercase())) {
        ('0', Some('x')) => 16,
        ('0', Some('o')) => 8,
        ('0', Some('b')) => 2,
        _ => 10,
    };
    if radix != 10 {
        i += 2;
        let digits_start = i;
        while i < chars.len() && (chars[i].is_digit(radix) || chars[i] == '_') {
            i += 1;
        }
        let text: String = chars[digits_start..i]
            .iter()
            .filter(|c| **c != '_')
            .collect();
        let whole: String = chars[start..i].iter().collect();
        let digits: String = chars[start + 1..i].iter().collect();
        if text.is_empty() || misplaced_underscore(&digits, true) {
            return Err(bad(&whole));
        }
        let value = i128::from_str_radix(&text, radix).map_err(|_| too_large(&whole))?;
        return Ok((Literal::Int(value), i));
    }
    let mut is_float = false;
    while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '_') {
        i += 1;
    }
    if i < chars.len() && chars[i] == '.' {
        is_float = true;
        i += 1;
        while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '_') {
            i += 1;
        }
    }
    if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
        let mut j = i + 1;
        if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
            j += 1;
        }
        if j < chars.len() && chars[j].is_ascii_digit() {
            is_float = true;
            i = j;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '_') {
                i += 1;
            }
        }
    }
    let whole: String = chars[start..i].iter().collect();
    if misplaced_underscore(&whole, false) {
        return Err(bad(&whole));
    }
    let text: String = whole.chars().filter(|c| *c != '_').collect();
    if i < chars.len() && (chars[i] == 'j' || chars[i] == 'J') {
        let value: f64 = text.parse().map_err(|_| bad(&whole))?;
        return Ok((Literal::Complex(Complex64::new(0.0, value)), i + 1));
    }
    if i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
        return Err(bad(&format!("{whole}{}", chars[i])));
    }
    if is_float {
        return Ok((Literal::Float(text.parse().map_err(|_| bad(&whole))?), i));
    }
    if text.len() > 1 && text.starts_with('0') && text.chars().any(|c| c != '0') {
        return Err(bad(&whole)); // (Python refuses leading zeros: 012)
    }
    match text.parse::<i128>() {
        Ok(v) => Ok((Literal::Int(v), i)),
        Err(_) => Err(too_large(&whole)),
    }
}

/// Whether underscores in a number are other than Python's: each between two digits
/// (with a `radix` prefix, the first may follow its letter: `0x_1f`).
fn misplaced_underscore(number: &str, radix: bool) -> bool {
    let c: Vec<char> = number.chars().collect();
    (0..c.len()).any(|k| {
        let before = k.checked_sub(1).map(|j| c[j]);
        let after = c.get(k + 1);
        let fits = if radix {
            before.is_some_and(|b| b.is_ascii_alphanumeric())
                && after.is_some_and(char::is_ascii_hexdigit)
        } else {
            before.is_some_and(|b| b.is_ascii_digit()) && after.is_some_and(char::is_ascii_digit)
        };
        c[k] == '_' && !fits
    })
}

fn too_large(whole: &str) -> ExprError {
    ExprError::Overflow(format!(
        "the integer constant {whole} is too large (constants hold 128 bits)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_python_reads_them() {
        let lits: Vec<Token> = tokens("1_000 0x1F 0o17 0b101 1. .5 1e3 2.5E-2 3j 1.5J").unwrap();
        assert_eq!(
            lits,
            vec![
                Token::Number(Literal::Int(1000)),
                Token::Number(Literal::Int(31)),
                Token::Number(Literal::Int(15)),
                Token::Number(Literal::Int(5)),
                Token::Number(Literal::Float(1.0)),
                Token::Number(Literal::Float(0.5)),
                Token::Number(Literal::Float(1000.0)),
                Token::Number(Literal::Float(0.025)),
                Token::Number(Literal::Complex(Complex64::new(0.0, 3.0))),
                Token::Number(Literal::Complex(Complex64::new(0.0, 1.5))),
                Token::End,
            ]
        );
        assert!(matches!(tokens("012"), Err(ExprError::Syntax(_))));
        assert_eq!(
            tokens("99999999999999999999 0x10000000000000000").unwrap()[..2],
            [
                Token::Number(Literal::Int(99_999_999_999_999_999_999)),
                Token::Number(Literal::Int(1 << 64))
            ]
        );
        assert!(matches!(
            tokens("999999999999999999999999999999999999999999"),
            Err(ExprError::Overflow(_))
        ));
        assert!(matches!(tokens("0x"), Err(ExprError::Syntax(_))));
    }

    #[test]
    fn operators_longest_first() {
        assert_eq!(
            tokens("a**b//c<=d").unwrap(),
            vec![
                Token::Name("a".into()),
                Token::Op("**"),
                Token::Name("b".into()),
                Token::Op("//"),
                Token::Name("c".into()),
                Token::Op("<="),
                Token::Name("d".into()),
                Token::End,
            ]
        );
        assert_eq!(
            tokens("'ab' b\"c\"").unwrap(),
            vec![Token::Str, Token::Str, Token::End]
        );
        assert!(matches!(tokens("a $ b"), Err(ExprError::Syntax(_))));
    }
}
