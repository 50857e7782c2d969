//! A program's CUDA C++ source: the prelude's operations (one overload per kind, so an
//! instruction is one call whatever its kinds), a function computing one element from
//! the operands' offsets, and the kernels that store or fold it.

use std::fmt::Write;

use crate::dtype::{DType, Scalar};
use crate::ops::{Op, Reduce};
use crate::program::{Operand, Program};

use super::plan::{accumulator, Slots, ARGS};

/// The operations, as `px_add`, `px_sin` … (`prelude.cuh`).
pub const PRELUDE: &str = include_str!("prelude.cuh");

/// The C type a register of `kind` has.
fn ctype(kind: DType) -> &'static str {
    match kind {
        DType::Bool => "bool",
        DType::Int => "int",
        DType::Long => "px_l",
        DType::Float => "float",
        DType::Double => "double",
        DType::Complex => "px_c",
    }
}

/// The C type an element of `kind` has in memory (numpy's bool is a byte).
fn stored(kind: DType) -> &'static str {
    match kind {
        DType::Bool => "unsigned char",
        other => ctype(other),
    }
}

/// A constant, bit for bit.
fn literal(s: Scalar) -> String {
    match s {
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(v) => format!("((int){v})"),
        Scalar::Long(i64::MIN) => "((px_l)0x8000000000000000ULL)".to_string(),
        Scalar::Long(v) => format!("((px_l){v}LL)"),
        Scalar::Float(v) => format!("px_f({:#x}u)", v.to_bits()),
        Scalar::Double(v) => format!("px_d({:#x}ull)", v.to_bits()),
        Scalar::Complex(z) => format!(
            "px_cx(px_d({:#x}ull), px_d({:#x}ull))",
            z.re.to_bits(),
            z.im.to_bits()
        ),
    }
}

fn operand(o: &Operand) -> String {
    match o {
        Operand::Input(i) => format!("in{i}"),
        Operand::Reg(r) => format!("r{r}"),
        Operand::Scalar(s) => literal(*s),
    }
}

/// The prelude's name for an operation.
fn function(op: Op, out: DType) -> String {
    match op {
        Op::Cast => format!("px_to_{}", out.name()),
        other => format!("px_{}", other.name()),
    }
}

/// The statement computing instruction `i` of `program`.
fn statement(program: &Program, i: usize) -> String {
    let ins = &program.instrs[i];
    let args: Vec<String> = ins.args.iter().map(operand).collect();
    format!(
        "r{} = {}({});",
        ins.dst,
        function(ins.op, ins.out),
        args.join(", ")
    )
}

/// `px_value`: one element of the elementwise part, from the operands' offsets. A lazy
/// `where` computes only the branch its condition picks.
fn value_function(program: &Program) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "PX_F {} px_value(const px_args& a, const px_l* off) {{",
        ctype(program.out)
    );
    for (i, (_, kind)) in program.inputs.iter().enumerate() {
        if !program.reads(i) {
            continue;
        }
        let at = format!(
            "*(const {}*)((const char*)(px_ul)a.v[{i}] + off[{i}])",
            stored(*kind)
        );
        let load = if *kind == DType::Bool {
            format!("({at} != 0)")
        } else {
            at
        };
        let _ = writeln!(s, "  const {} in{i} = {load};", ctype(*kind));
    }
    for (r, kind) in program.regs.iter().enumerate() {
        let _ = writeln!(s, "  {} r{r};", ctype(*kind));
    }
    let mut i = 0;
    while i < program.instrs.len() {
        let lazy = program
            .lazy
            .iter()
            .find(|lz| lz.a.start.min(lz.b.start) == i);
        match lazy {
            Some(lz) => {
                let w = &program.instrs[lz.end];
                let _ = writeln!(s, "  if ({}) {{", operand(&w.args[0]));
                for k in lz.a.clone() {
                    let _ = writeln!(s, "    {}", statement(program, k));
                }
                let _ = writeln!(s, "    r{} = {};\n  }} else {{", w.dst, operand(&w.args[1]));
                for k in lz.b.clone() {
                    let _ = writeln!(s, "    {}", statement(program, k));
                }
                let _ = writeln!(s, "    r{} = {};\n  }}", w.dst, operand(&w.args[2]));
                i = lz.end + 1;
            }
            None => {
                let _ = writeln!(s, "  {}", statement(program, i));
                i += 1;
            }
        }
    }
    let _ = writeln!(s, "  return r{};\n}}", program.result);
    s
}

/// The offsets of element `i` (row-major over the merged dimensions) in every operand.
const OFFSETS: &str = r#"
PX_F void px_offsets(const px_args& a, px_l i, px_l* off) {
  for (int k = 0; k < PX_NOPS; k++) off[k] = 0;
  for (int d = PX_NDIM - 1; d >= 0; d--) {
    px_l n = a.v[PX_DIMS + d];
    px_l c = d == 0 ? i : i % n;
    i = d == 0 ? 0 : i / n;
    for (int k = 0; k < PX_NOPS; k++) off[k] += c * a.v[PX_STRIDES + k * PX_NDIM + d];
  }
}
"#;

/// Storing each element.
const MAP: &str = r#"
extern "C" __global__ void px_map(const px_args a) {
  const px_l n = a.v[PX_COUNT];
  px_l off[PX_NOPS];
  // (unrolled: more loads in flight per thread, which memory-bound kernels want)
  #pragma unroll 4
  for (px_l i = (px_l)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (px_l)gridDim.x * blockDim.x) {
    px_offsets(a, i, off);
    *($STORED*)((char*)(px_ul)a.v[PX_NIN] + off[PX_NIN]) = ($STORED)px_value(a, off);
  }
}
"#;

/// Folding: each block's threads fold a stride of elements, then each other's results
/// (`px_partial`, then `px_finish` over the blocks' results); a row per block
/// (`px_rows`: long rows), or a row per thread (`px_row_threads`: many or short rows,
/// neighbouring threads reading neighbouring rows' elements).
const FOLD: &str = r#"
typedef $ACC px_acc;
PX_F px_acc px_fold(px_acc x, px_acc y) { return $FOLD(x, y); }
PX_F px_acc px_block(px_acc* s, px_acc acc) {
  s[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned w = PX_BLOCK / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) s[threadIdx.x] = px_fold(s[threadIdx.x], s[threadIdx.x + w]);
    __syncthreads();
  }
  acc = s[0];
  __syncthreads();
  return acc;
}
extern "C" __global__ void px_partial(const px_args a) {
  __shared__ px_acc s[PX_BLOCK];
  const px_l n = a.v[PX_COUNT];
  px_l off[PX_NOPS];
  px_acc acc = $START;
  #pragma unroll 4
  for (px_l i = (px_l)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (px_l)gridDim.x * blockDim.x) {
    px_offsets(a, i, off);
    acc = px_fold(acc, (px_acc)px_value(a, off));
  }
  acc = px_block(s, acc);
  if (threadIdx.x == 0) ((px_acc*)(px_ul)a.v[PX_SCRATCH])[blockIdx.x] = acc;
}
extern "C" __global__ void px_finish(const px_args a) {
  __shared__ px_acc s[PX_BLOCK];
  const px_acc* parts = (const px_acc*)(px_ul)a.v[PX_SCRATCH];
  px_acc acc = $START;
  for (px_l i = threadIdx.x; i < a.v[PX_PARTS]; i += blockDim.x) acc = px_fold(acc, parts[i]);
  acc = px_block(s, acc);
  if (threadIdx.x == 0) *($OUT*)(px_ul)a.v[PX_NIN] = ($OUT)acc;
}
extern "C" __global__ void px_rows(const px_args a) {
  __shared__ px_acc s[PX_BLOCK];
  const px_l len = a.v[PX_ROW];
  const px_l rows = len == 0 ? 0 : a.v[PX_COUNT] / len;
  for (px_l r = blockIdx.x; r < rows; r += gridDim.x) {
    px_l base[PX_NOPS], off[PX_NOPS];
    px_offsets(a, r * len, base);
    px_acc acc = $START;
    for (px_l k = threadIdx.x; k < len; k += blockDim.x) {
      for (int o = 0; o < PX_NOPS; o++) off[o] = base[o] + k * a.v[PX_STRIDES + o * PX_NDIM + PX_NDIM - 1];
      acc = px_fold(acc, (px_acc)px_value(a, off));
    }
    acc = px_block(s, acc);
    if (threadIdx.x == 0) *($OUT*)((char*)(px_ul)a.v[PX_NIN] + base[PX_NIN]) = ($OUT)acc;
  }
}
extern "C" __global__ void px_row_threads(const px_args a) {
  const px_l len = a.v[PX_ROW];
  const px_l rows = len == 0 ? 0 : a.v[PX_COUNT] / len;
  px_l base[PX_NOPS], off[PX_NOPS];
  for (px_l r = (px_l)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += (px_l)gridDim.x * blockDim.x) {
    px_offsets(a, r * len, base);
    px_acc acc = $START;
    for (px_l k = 0; k < len; k++) {
      for (int o = 0; o < PX_NOPS; o++) off[o] = base[o] + k * a.v[PX_STRIDES + o * PX_NDIM + PX_NDIM - 1];
      acc = px_fold(acc, (px_acc)px_value(a, off));
    }
    *($OUT*)((char*)(px_ul)a.v[PX_NIN] + base[PX_NIN]) = ($OUT)acc;
  }
}
"#;

/// The value a reduction starts from (min and max: the kind's top or bottom, which any
/// element replaces).
fn start(red: Reduce, acc: DType) -> String {
    let one = red == Reduce::Prod;
    match (red, acc) {
        (Reduce::Sum | Reduce::Prod, DType::Complex) => {
            format!("px_cx({}, 0)", u8::from(one))
        }
        (Reduce::Sum | Reduce::Prod, kind) => format!("(({}){})", ctype(kind), u8::from(one)),
        (Reduce::Min, DType::Float) => "PX_INFF".into(),
        (Reduce::Max, DType::Float) => "(-PX_INFF)".into(),
        (Reduce::Min, DType::Double) => "PX_INF".into(),
        (Reduce::Max, DType::Double) => "(-PX_INF)".into(),
        (Reduce::Min, DType::Int) => literal(Scalar::Int(i32::MAX)),
        (Reduce::Max, DType::Int) => literal(Scalar::Int(i32::MIN)),
        (Reduce::Min, DType::Long) => literal(Scalar::Long(i64::MAX)),
        (Reduce::Max, DType::Long) => literal(Scalar::Long(i64::MIN)),
        (_, kind) => unreachable!("no {red:?} over {kind:?}: refused when typed"),
    }
}

/// The whole source for `program` over `ndim` merged dimensions (`Launch::ndim`): the
/// kernels `px_map`, or `px_partial`, `px_finish`, `px_rows` and `px_row_threads` for a
/// reduction.
pub fn kernel_source(program: &Program, ndim: usize) -> String {
    let slots = Slots {
        nin: program.inputs.len(),
        ndim,
    };
    let mut s = String::from(PRELUDE);
    let _ = write!(
        s,
        "\n// The program's own ----------------------------------------------------------\n\
         #ifndef PX_BLOCK\n#define PX_BLOCK {block}\n#endif\n\
         #define PX_NIN {nin}\n#define PX_NOPS {nops}\n#define PX_NDIM {ndim}\n\
         #define PX_SCRATCH {scratch}\n#define PX_COUNT {count}\n#define PX_ROW {row}\n\
         #define PX_PARTS {parts}\n#define PX_DIMS {dims}\n#define PX_STRIDES {strides}\n\
         struct px_args {{ px_l v[{ARGS}]; }};\n",
        block = super::BLOCK,
        nin = slots.nin,
        nops = slots.nin + 1,
        scratch = slots.scratch(),
        count = slots.count(),
        row = slots.row(),
        parts = slots.parts(),
        dims = slots.dims(),
        strides = slots.strides(),
    );
    s.push_str(OFFSETS);
    s.push_str(&value_function(program));
    match program.reduce {
        None => s.push_str(&MAP.replace("$STORED", stored(program.out))),
        Some((red, _)) => {
            let acc = accumulator(red, program.out);
            let fold = match red {
                Reduce::Sum => "px_add",
                Reduce::Prod => "px_mul",
                Reduce::Min => "px_lesser",
                Reduce::Max => "px_greater",
            };
            s.push_str(
                &FOLD
                    .replace("$ACC", ctype(acc))
                    .replace("$FOLD", fold)
                    .replace("$START", &start(red, acc))
                    .replace("$OUT", ctype(program.out)),
            );
        }
    }
    s
}
