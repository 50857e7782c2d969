//! A typed tree lowered to straight-line code over registers, each a block of elements:
//! what every core runs, block after block.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::ast::Expr;
use crate::dtype::{DType, Scalar};
use crate::error::{ExprError, Result};
use crate::ops::{Op, Reduce};
use crate::parser::parse;
use crate::typing::{literal_kind, literal_scalar, Node, Optimization, Typer};

/// Where an instruction reads an operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Operand {
    Input(usize),
    Reg(usize),
    Scalar(Scalar),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Instr {
    pub op: Op,
    /// The kind its operands are in (a `Where`'s condition is `Bool` whatever this says).
    pub kind: DType,
    pub out: DType,
    pub args: Vec<Operand>,
    pub dst: usize,
}

/// A `where` whose branches run only where they are picked: per block, the positions
/// its condition picks for each branch are gathered, and each branch's own instructions
/// run over those alone (numexpr, like numpy, computes both branches everywhere).
#[derive(Clone, Debug, PartialEq)]
pub struct LazyWhere {
    /// The instructions of the first branch, then of the second (each computes nothing
    /// any other instruction reads), then the `where` itself, at `end`.
    pub a: std::ops::Range<usize>,
    pub b: std::ops::Range<usize>,
    pub end: usize,
}

/// A compiled expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    /// The inputs' names (sorted, as numexpr orders them) and kinds.
    pub inputs: Vec<(String, DType)>,
    pub instrs: Vec<Instr>,
    /// Each register's kind.
    pub regs: Vec<DType>,
    /// The register holding the result of the elementwise part.
    pub result: usize,
    /// The kind of the result.
    pub out: DType,
    /// The reduction applied last, and its axis (None: all of them).
    pub reduce: Option<(Reduce, Option<usize>)>,
    /// The `where`s run lazily, in order (none inside another).
    pub lazy: Vec<LazyWhere>,
}

impl Program {
    /// Whether the program reads input `index` (folding may leave one unread:
    /// `where(1 > 0, 2, x)`), which then plays no part in the result's shape.
    pub fn reads(&self, index: usize) -> bool {
        self.instrs
            .iter()
            .any(|i| i.args.contains(&Operand::Input(index)))
    }
}

/// The names an expression reads, sorted: the inputs `compile` wants kinds for.
pub fn names(src: &str) -> Result<Vec<String>> {
    with_stack_for(src, || Ok(parse(src)?.names()))
}

/// The longest expression taken, in bytes.
pub const MAX_SOURCE: usize = 100_000;

/// Runs `f` (which parses `src` and walks its tree, recursively) where the stack is deep
/// enough for it: on this thread for a short expression, else on a thread of its own
/// with a deep stack (a caller's thread may have a small one; 3,000 nested parentheses
/// took 8 MiB). Longer than `MAX_SOURCE`, it is refused.
fn with_stack_for<T: Send>(src: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    /// Bytes of source below which any thread's stack is enough (a level of nesting takes
    /// about 2 KiB; a secondary thread may have 512 KiB, or less).
    const SHORT: usize = 100;
    /// Stack reserved per byte of source (a level of nesting takes a byte or two, and
    /// about 2 KiB of stack; an unoptimised build's frames are some ten times larger), and
    /// at least: only the pages a walk reaches are touched, but the reservation itself
    /// must fit a process's address-space limit.
    const PER_BYTE: usize = if cfg!(debug_assertions) {
        48 << 10
    } else {
        4 << 10
    };
    const BASE: usize = 1 << 20;
    const MOST: usize = 4 << 30;
    if src.len() <= SHORT {
        return f();
    }
    if src.len() > MAX_SOURCE {
        return Err(ExprError::Syntax(format!(
            "the expression is {} bytes long: at most {MAX_SOURCE} are taken",
            src.len()
        )));
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("paralelo-expr-compile".into())
            .stack_size((BASE + PER_BYTE * src.len()).min(MOST))
            .spawn_scoped(scope, f)
            .map_err(|e| ExprError::Runtime(format!("cannot start a thread to compile: {e}")))?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Parses, types and lowers `src`, its inputs' kinds given by name (`names(src)`).
pub fn compile(
    src: &str,
    inputs: &[(String, DType)],
    optimization: Optimization,
) -> Result<Program> {
    with_stack_for(src, || lowered(src, inputs, optimization))
}

fn lowered(src: &str, inputs: &[(String, DType)], optimization: Optimization) -> Result<Program> {
    let expr: Expr = parse(src)?;
    let typed = Typer {
        inputs,
        optimization,
    }
    .typed(&expr)?;
    let mut uses = Seen::default();
    count_uses(&typed.root, &mut uses);
    let mut lower = Lower {
        instrs: Vec::new(),
        regs: Vec::new(),
        free: Vec::new(),
        uses,
        done: Seen::default(),
        left: Vec::new(),
        branches: Vec::new(),
    };
    let root = lower.node(&typed.root)?;
    // The result lives in a register (an input or a constant alone is copied there).
    let result = match root {
        Operand::Reg(r) => r,
        other => {
            let kind = typed.root.dtype();
            lower.emit(Op::Func(crate::ops::Func::Copy), kind, kind, vec![other])
        }
    };
    let lazy = lazy_wheres(&lower.instrs, std::mem::take(&mut lower.branches));
    Ok(Program {
        inputs: inputs.to_vec(),
        instrs: lower.instrs,
        out: lower.regs[result],
        regs: lower.regs,
        result,
        reduce: typed.reduce,
        lazy,
    })
}

/// The `where`s worth running lazily: a branch calls a function or a power (skipping
/// arithmetic saves less than gathering costs), no branch holds another `where`, and no
/// instruction outside a branch reads a register the branch writes.
fn lazy_wheres(instrs: &[Instr], branches: Vec<LazyWhere>) -> Vec<LazyWhere> {
    let costly = |r: &std::ops::Range<usize>| {
        instrs[r.clone()]
            .iter()
            .any(|i| i.op == Op::Pow || matches!(i.op, Op::Func(f) if f.is_costly()))
    };
    let own = |lz: &LazyWhere, r: &std::ops::Range<usize>, side: usize| {
        // Each register the branch writes is read, until something else writes it, only
        // inside the branch or by the `where` as this branch's value (`side`): a subtree
        // both branches share is computed in one, and the other may not read it there
        // (`where(c, sin(a), sin(a))` read the other branch's compacted values).
        instrs[r.clone()].iter().all(|w| {
            let reg = Operand::Reg(w.dst);
            instrs[r.end..]
                .iter()
                .enumerate()
                .map(|(j, ins)| (r.end + j, ins))
                .take_while(|(k, ins)| *k == lz.end || ins.dst != w.dst || r.contains(k))
                .all(|(k, ins)| {
                    if k == lz.end {
                        ins.args
                            .iter()
                            .enumerate()
                            .all(|(i, a)| i == side || *a != reg)
                    } else {
                        !ins.args.contains(&reg)
                    }
                })
        })
    };
    let mut out: Vec<LazyWhere> = Vec::new();
    for lz in branches {
        let start = lz.a.start.min(lz.b.start);
        let nested = instrs[start..lz.end].iter().any(|i| i.op == Op::Where);
        if !nested && (costly(&lz.a) || costly(&lz.b)) && own(&lz, &lz.a, 1) && own(&lz, &lz.b, 2) {
            out.push(lz);
        }
    }
    out.sort_by_key(|lz| lz.a.start.min(lz.b.start));
    out
}

/// How many times each distinct operation is used (an operation that appears twice, as
/// `sin(a)` in `sin(a)**2` once powers become products, is computed once, as numexpr's
/// compiler merges duplicate subtrees).
fn count_uses<'t>(node: &'t Node, uses: &mut Seen<'t>) {
    if let Node::Op { args, .. } = node {
        if let Some(seen) = uses.get_mut(node) {
            *seen += 1;
            return;
        }
        uses.insert(node, 1);
        for a in args {
            count_uses(a, uses);
        }
    }
}

/// Operations of a typed tree, each with a number, found by structure: equal subtrees
/// are one entry. Each node's structural hash is computed once (a tree of n nodes is
/// looked up in about n steps, not the n² of comparing whole subtrees one by one; an
/// expression of a thousand terms compiled in 1.6 s that way).
#[derive(Default)]
struct Seen<'t> {
    /// Per structural hash, the distinct subtrees that have it, and their numbers.
    buckets: HashMap<u64, Vec<(&'t Node, usize)>>,
    /// Each node's hash, by address (the tree outlives this).
    hashes: HashMap<*const Node, u64>,
}

impl<'t> Seen<'t> {
    fn hash(&mut self, node: &'t Node) -> u64 {
        if let Some(h) = self.hashes.get(&(node as *const Node)) {
            return *h;
        }
        let mut s = std::collections::hash_map::DefaultHasher::new();
        match node {
            Node::Op {
                op,
                kind,
                out,
                args,
            } => {
                (op, kind, out).hash(&mut s);
                for a in args {
                    self.hash(a).hash(&mut s);
                }
            }
            // (leaves are small: their printed form is their identity)
            leaf => format!("{leaf:?}").hash(&mut s),
        }
        let h = s.finish();
        self.hashes.insert(node as *const Node, h);
        h
    }

    fn get_mut(&mut self, node: &'t Node) -> Option<&mut usize> {
        let h = self.hash(node);
        self.buckets
            .get_mut(&h)?
            .iter_mut()
            // (the same node is found by its address: comparing it with itself would walk
            // its whole subtree)
            .find(|(n, _)| std::ptr::eq(*n, node) || same(n, node))
            .map(|(_, v)| v)
    }

    fn get(&mut self, node: &'t Node) -> Option<usize> {
        self.get_mut(node).map(|v| *v)
    }

    fn insert(&mut self, node: &'t Node, value: usize) {
        let h = self.hash(node);
        self.buckets.entry(h).or_default().push((node, value));
    }
}

/// Whether two subtrees are one operation, as `Seen::hash` sees them: constants by their
/// bits (0.0 and -0.0 differ; a NaN is itself), so that equal subtrees hash alike.
fn same(a: &Node, b: &Node) -> bool {
    match (a, b) {
        (
            Node::Op {
                op,
                kind,
                out,
                args,
            },
            Node::Op {
                op: op2,
                kind: kind2,
                out: out2,
                args: args2,
            },
        ) => {
            (op, kind, out) == (op2, kind2, out2)
                && args.len() == args2.len()
                && args.iter().zip(args2).all(|(x, y)| same(x, y))
        }
        (Node::Op { .. }, _) | (_, Node::Op { .. }) => false,
        (x, y) => format!("{x:?}") == format!("{y:?}"),
    }
}

struct Lower<'t> {
    instrs: Vec<Instr>,
    regs: Vec<DType>,
    /// Registers whose value is no longer needed, to be reused.
    free: Vec<usize>,
    uses: Seen<'t>,
    /// Operations computed already, and their registers.
    done: Seen<'t>,
    /// Per register, the reads still to come before it can be reused.
    left: Vec<usize>,
    /// Every `where`'s branches, as lowered.
    branches: Vec<LazyWhere>,
}

impl<'t> Lower<'t> {
    fn node(&mut self, node: &'t Node) -> Result<Operand> {
        Ok(match node {
            Node::Input { index, .. } => Operand::Input(*index),
            Node::Const(lit) => Operand::Scalar(literal_scalar(*lit, literal_kind(*lit))?),
            Node::Scalar(s) => Operand::Scalar(*s),
            Node::Op {
                op,
                kind,
                out,
                args,
            } => {
                if let Some(r) = self.done.get(node) {
                    return Ok(Operand::Reg(r));
                }
                let mut operands = Vec::with_capacity(args.len());
                let mut spans = Vec::with_capacity(args.len());
                for (i, a) in args.iter().enumerate() {
                    let start = self.instrs.len();
                    let want = if *op == Op::Where && i == 0 {
                        DType::Bool
                    } else {
                        *kind
                    };
                    operands.push(match a {
                        // (from its exact value: an int past 64 bits may be a double)
                        Node::Const(lit) => Operand::Scalar(literal_scalar(*lit, want)?),
                        a => {
                            let operand = self.node(a)?;
                            self.cast(operand, a.dtype(), want)
                        }
                    });
                    spans.push(start..self.instrs.len());
                }
                let dst = self.emit(*op, *kind, *out, operands);
                if *op == Op::Where {
                    let end = self.instrs.len() - 1;
                    self.branches.push(LazyWhere {
                        a: spans[1].clone(),
                        b: spans[2].clone(),
                        end,
                    });
                }
                let reads = self.uses.get(node).unwrap_or(1);
                self.left[dst] = reads;
                self.done.insert(node, dst);
                Operand::Reg(dst)
            }
        })
    }

    /// `operand` (of kind `have`) in kind `want`: a constant converted now, anything else
    /// by a `Cast` instruction.
    fn cast(&mut self, operand: Operand, have: DType, want: DType) -> Operand {
        if have == want {
            return operand;
        }
        match operand {
            Operand::Scalar(s) => Operand::Scalar(s.cast(want)),
            other => Operand::Reg(self.emit(Op::Cast, want, want, vec![other])),
        }
    }

    fn emit(&mut self, op: Op, kind: DType, out: DType, args: Vec<Operand>) -> usize {
        // The operands' registers are free once this has read them; the destination is
        // picked first so that it is never one of them (an instruction reads and writes
        // a block in one pass, but a kernel may write before it has read all).
        let dst = match self.free.iter().position(|r| self.regs[*r] == out) {
            Some(i) => self.free.swap_remove(i),
            None => {
                self.regs.push(out);
                self.left.push(0);
                self.regs.len() - 1
            }
        };
        self.left[dst] = 1;
        for a in &args {
            if let Operand::Reg(r) = a {
                self.left[*r] = self.left[*r].saturating_sub(1);
                if self.left[*r] == 0 && !self.free.contains(r) {
                    self.free.push(*r);
                }
            }
        }
        self.instrs.push(Instr {
            op,
            kind,
            out,
            args,
            dst,
        });
        dst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_are_reused_and_casts_inserted() {
        let inputs = vec![
            ("a".to_string(), DType::Int),
            ("b".to_string(), DType::Double),
        ];
        let p = compile("2*a + 3*b", &inputs, Optimization::Aggressive).unwrap();
        // 2*a in int, cast to double, 3*b, add.
        assert_eq!(p.instrs.len(), 4);
        assert_eq!(p.instrs[1].op, Op::Cast);
        assert_eq!(p.out, DType::Double);
        assert!(p.regs.len() <= 4, "{:?}", p.regs);
        // sin(b)**2 is sin(b)*sin(b): one sine, read twice.
        let squared = compile("sin(b)**2", &inputs, Optimization::Aggressive).unwrap();
        assert_eq!(squared.instrs.len(), 2);
        let alone = compile("a", &inputs, Optimization::Aggressive).unwrap();
        assert_eq!(alone.instrs.len(), 1);
        assert_eq!(names("sum(b * a + b)").unwrap(), vec!["a", "b"]);
    }
}
