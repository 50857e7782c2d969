//! The CUDA kernels' source, run on the CPU (`cuda_emulator.hpp`: a block's threads are
//! threads, `__syncthreads` a barrier) with the launches `cuda::plan` makes, against the
//! CPU engine on the same inputs: every operation of every kind, contiguous, strided,
//! broadcast and transposed operands, and each kind of reduction. Elementwise results
//! must be the same bits (the same C library computes both); folded ones, summed in
//! another order, within a few ulps. Needs a C++20 compiler (`c++`); without one it says
//! so and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use paralelo_expr::cuda::{kernel_source, plan, source::PRELUDE, Args, Launch};
use paralelo_expr::{compile, evaluate, names, ArrayArg, DType, Optimization, Program};

const ROWS: usize = 37;
const COLS: usize = 53;

/// A deterministic generator (xorshift), so that a failure reproduces.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A real in [-3, 3], now and then (`specials`) a special one.
    fn real(&mut self, specials: bool) -> f64 {
        if !specials {
            return (self.unit() - 0.5) * 6.0;
        }
        match self.next() % 40 {
            0 => 0.0,
            1 => -0.0,
            2 => f64::INFINITY,
            3 => f64::NAN,
            4 => 1.0,
            _ => (self.unit() - 0.5) * 6.0,
        }
    }
}

/// `n` random elements of `kind`, as bytes; `specials`: zeros, infinities and NaNs among
/// them (not for reductions, which a NaN anywhere would make NaN).
fn random(kind: DType, n: usize, draw: &mut Draw, specials: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * kind.size());
    for _ in 0..n {
        match kind {
            DType::Bool => out.push((draw.next() & 1) as u8),
            DType::Int => {
                // (now and then the most negative, which wraps)
                let v = match draw.next() % 50 {
                    0 => i32::MIN,
                    _ => (draw.next() % 41) as i32 - 20,
                };
                out.extend(v.to_ne_bytes());
            }
            DType::Long => {
                // (now and then any 64 bits, whose products wrap)
                let v = match draw.next() % 50 {
                    0 => draw.next() as i64,
                    _ => (draw.next() % 41) as i64 - 20,
                };
                out.extend(v.to_ne_bytes());
            }
            DType::Float => out.extend((draw.real(specials) as f32).to_ne_bytes()),
            DType::Double => out.extend(draw.real(specials).to_ne_bytes()),
            DType::Complex => {
                out.extend(draw.real(specials).to_ne_bytes());
                out.extend(draw.real(specials).to_ne_bytes());
            }
        }
    }
    out
}

/// How the inputs lie in memory.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// Every input C-contiguous, of the full shape.
    Contiguous,
    /// The first input every other element, the second broadcast along the rows, the
    /// third transposed.
    Mixed,
    /// Every input read backwards (negative strides), the third transposed too.
    Reversed,
}

impl Layout {
    /// Most blocks a grid takes: few (every thread strides far), many (more partial
    /// results than `px_finish` has threads; `px_rows` rather than `px_row_threads`).
    fn max_blocks(self) -> u32 {
        match self {
            Layout::Contiguous => 5,
            Layout::Mixed => 64,
            Layout::Reversed => 37,
        }
    }
}

/// An input: its bytes, its strides over the `ROWS x COLS` iteration, and where its first
/// element is among the bytes.
struct Input {
    bytes: Vec<u8>,
    strides: Vec<isize>,
    first: usize,
}

fn inputs(program: &Program, layout: Layout, draw: &mut Draw) -> Vec<Input> {
    program
        .inputs
        .iter()
        .enumerate()
        .map(|(i, (_, kind))| {
            let s = kind.size() as isize;
            let (len, strides) = match (layout, i % 3) {
                (Layout::Contiguous, _) => (ROWS * COLS, vec![COLS as isize * s, s]),
                (Layout::Mixed, 0) => (2 * ROWS * COLS, vec![2 * COLS as isize * s, 2 * s]),
                (Layout::Mixed, 1) => (COLS, vec![0, s]),
                (Layout::Mixed, _) => (ROWS * COLS, vec![s, ROWS as isize * s]),
                (Layout::Reversed, 2) => (ROWS * COLS, vec![-s, -(ROWS as isize) * s]),
                (Layout::Reversed, _) => (ROWS * COLS, vec![-(COLS as isize) * s, -s]),
            };
            let first = if layout == Layout::Reversed {
                (len - 1) * s as usize
            } else {
                0
            };
            Input {
                bytes: random(*kind, len, draw, program.reduce.is_none()),
                strides,
                first,
            }
        })
        .collect()
}

/// What a case computes over: the iteration shape, the inputs' strides along it, and the
/// output's (0 along what a reduction folds).
struct Case {
    shape: Vec<usize>,
    strides: Vec<Vec<isize>>,
    out_strides: Vec<isize>,
    out_len: usize,
}

fn case(program: &Program, inputs: &[Input]) -> Case {
    let size = program.out.size() as isize;
    let strides: Vec<Vec<isize>> = inputs.iter().map(|i| i.strides.clone()).collect();
    match program.reduce {
        None => Case {
            shape: vec![ROWS, COLS],
            strides,
            out_strides: vec![COLS as isize * size, size],
            out_len: ROWS * COLS,
        },
        Some((_, None)) => Case {
            shape: vec![ROWS, COLS],
            strides,
            out_strides: vec![0, 0],
            out_len: 1,
        },
        Some((_, Some(1))) => Case {
            shape: vec![ROWS, COLS],
            strides,
            out_strides: vec![size, 0],
            out_len: ROWS,
        },
        Some((_, Some(_))) => Case {
            // axis=0: the caller moves it last (the strides swap).
            shape: vec![COLS, ROWS],
            strides: strides.iter().map(|s| vec![s[1], s[0]]).collect(),
            out_strides: vec![size, 0],
            out_len: COLS,
        },
    }
}

fn args<'a>(program: &Program, inputs: &[Input], strides: &'a [Vec<isize>]) -> Vec<ArrayArg<'a>> {
    program
        .inputs
        .iter()
        .zip(inputs)
        .zip(strides)
        .map(|(((_, kind), input), s)| ArrayArg {
            addr: input.bytes.as_ptr() as usize + input.first,
            dtype: *kind,
            strides: s,
            stored: Default::default(),
        })
        .collect()
}

/// The C++ for one program: its source, but the prelude, in a namespace of its own, and
/// a C function launching its kernels by name.
fn translation_unit(index: usize, program: &Program, ndim: usize) -> String {
    let mut unit = namespaced(index, program, ndim);
    let kernels: &[&str] = if program.reduce.is_some() {
        &["px_partial", "px_finish", "px_rows", "px_row_threads"]
    } else {
        &["px_map"]
    };
    let mut dispatch = String::new();
    for k in kernels {
        dispatch.push_str(&format!(
            "  if (!strcmp(kernel, \"{k}\")) px_launch(p{index}::{k}, grid, block, (const p{index}::px_args*)args);\n"
        ));
    }
    unit.push_str(&format!(
        "extern \"C\" void run{index}(const char* kernel, unsigned grid, unsigned block, const void* args) {{\n\
         {dispatch}}}\n"
    ));
    unit
}

/// A program's source but the prelude, in namespace `p{index}` (its kernels of C++
/// linkage there), its macros undefined after it: many programs in one compilation.
fn namespaced(index: usize, program: &Program, ndim: usize) -> String {
    let source = kernel_source(program, ndim);
    let own = source[PRELUDE.len()..].replace("extern \"C\" __global__", "__global__");
    format!(
        "namespace p{index} {{\n{own}\n}}\n#undef PX_NIN\n#undef PX_NOPS\n#undef PX_NDIM\n#undef PX_SCRATCH\n\
         #undef PX_COUNT\n#undef PX_ROW\n#undef PX_PARTS\n#undef PX_DIMS\n#undef PX_STRIDES\n"
    )
}

fn compiler() -> Option<String> {
    ["c++", "g++", "clang++"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .map(str::to_string)
}

/// Builds the shared library holding every unit.
fn build(dir: &Path, units: &[String], cxx: &str) -> PathBuf {
    let src = dir.join("kernels.cpp");
    let emulator = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emulator.hpp");
    let mut text = format!("#include \"{}\"\n{PRELUDE}\n", emulator.display());
    for u in units {
        text.push_str(u);
    }
    std::fs::write(&src, text).unwrap();
    let lib = dir.join("kernels.so");
    let out = Command::new(cxx)
        .args([
            "-std=c++20",
            "-O1",
            "-ffp-contract=off",
            "-fno-fast-math",
            "-shared",
            "-fPIC",
            "-pthread",
        ])
        .arg("-o")
        .arg(&lib)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the kernels do not compile as C++:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

type Run = unsafe extern "C" fn(*const std::ffi::c_char, u32, u32, *const Args);

fn launch(lib: &libloading::Library, index: usize, launch: &mut Launch) -> Vec<u8> {
    let scratch = vec![0u8; launch.scratch.max(16)];
    launch.set_scratch(scratch.as_ptr() as u64);
    let name = format!("run{index}");
    // SAFETY: `run{index}` is the function `translation_unit` defined, of this signature.
    let run: libloading::Symbol<Run> = unsafe { lib.get(name.as_bytes()).unwrap() };
    for step in &launch.steps {
        let kernel = std::ffi::CString::new(step.kernel).unwrap();
        // SAFETY: the argument block holds the addresses of live buffers this test owns
        // (inputs, output, scratch), with the strides `plan` derived from their layouts.
        unsafe { run(kernel.as_ptr(), step.grid, step.block, &launch.args) };
    }
    scratch
}

/// Bytes as elements of `kind` compared: the same bits, or (folded floats) close.
fn same(kind: DType, got: &[u8], want: &[u8], folded: bool) -> Result<(), String> {
    let reals = |b: &[u8], size: usize| -> Vec<f64> {
        b.chunks(size)
            .map(|c| match size {
                4 => f64::from(f32::from_ne_bytes(c.try_into().unwrap())),
                _ => f64::from_ne_bytes(c.try_into().unwrap()),
            })
            .collect()
    };
    match kind {
        DType::Float | DType::Double | DType::Complex if folded => {
            let size = if kind == DType::Float { 4 } else { 8 };
            let tol = if kind == DType::Float { 1e-6 } else { 1e-12 };
            for (i, (g, w)) in reals(got, size).iter().zip(reals(want, size)).enumerate() {
                let close = (g.is_nan() && w.is_nan())
                    || g == &w
                    || (g - w).abs() <= tol * w.abs().max(1.0);
                if !close {
                    return Err(format!("element {i}: {g} against {w}"));
                }
            }
            Ok(())
        }
        _ => {
            let size = kind.size();
            for (i, (g, w)) in got.chunks(size).zip(want.chunks(size)).enumerate() {
                if g != w {
                    let both_nan = matches!(kind, DType::Float | DType::Double | DType::Complex)
                        && reals(g, if kind == DType::Float { 4 } else { 8 })
                            .iter()
                            .zip(reals(w, if kind == DType::Float { 4 } else { 8 }))
                            .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
                    if !both_nan {
                        return Err(format!("element {i}: {g:?} against {w:?}"));
                    }
                }
            }
            Ok(())
        }
    }
}

const CASES: &[(&str, DType)] = &[
    ("a*b + c", DType::Double),
    ("a/b - a//b + a%b", DType::Double),
    ("a**b", DType::Double),
    ("where(a > b, sin(a)**2, cos(b))", DType::Double),
    ("where(a > 0, a, b)", DType::Double),
    ("arctan2(a, b) + hypot(a, b) + fmod(a, b)", DType::Double),
    (
        "sqrt(a) + log(a) + log1p(a) + log10(a) + log2(a) + exp(a) + expm1(a)",
        DType::Double,
    ),
    (
        "sinh(a) + cosh(a) + tanh(a) + arcsinh(a) + arccosh(b + 2) + arctanh(c / 4)",
        DType::Double,
    ),
    (
        "tan(a) + arcsin(a / 4) + arccos(b / 4) + arctan(c)",
        DType::Double,
    ),
    (
        "abs(a) + ceil(a) + floor(b) + round(c) + trunc(a) + sign(b)",
        DType::Double,
    ),
    (
        "nextafter(a, b) + copysign(a, b) + maximum(a, b) + minimum(b, c)",
        DType::Double,
    ),
    // (alone, so that a zero's sign is the result's: sign(-0.0) is 0.0)
    ("sign(b)", DType::Double),
    (
        "isnan(a) | isinf(b) | (isfinite(a) & signbit(b))",
        DType::Double,
    ),
    ("(a > b) ^ (a >= c) | (a == b) & (b != c)", DType::Double),
    ("-a + 2.5 * b ** 2 - 1 / c", DType::Double),
    ("a*b + c", DType::Int),
    ("a//b + a%b - a/b", DType::Int),
    ("a**b", DType::Int),
    ("(a << b) | (a >> c) ^ ~b", DType::Int),
    ("-a + sign(b) + round(c) + where(a > b, a, c)", DType::Int),
    ("sqrt(a) + abs(b)", DType::Int),
    ("a*b + c", DType::Long),
    ("a//b + a%b - a**c", DType::Long),
    ("(a << b) | (a >> c) & ~b", DType::Long),
    ("a*b + c", DType::Float),
    ("sin(a) + sqrt(abs(b)) + arctanh(c / 4)", DType::Float),
    ("a**b + a//b + a%c", DType::Float),
    ("a & b | ~c", DType::Bool),
    ("a ^ b", DType::Bool),
    ("where(a, b, c)", DType::Bool),
    ("a*b + c / a - b", DType::Complex),
    ("a**b + a**2 + b**-3 + c**0.5", DType::Complex),
    ("sqrt(a) + exp(b) + log(c)", DType::Complex),
    ("sin(a) + cos(b) + tan(c)", DType::Complex),
    ("sinh(a) + cosh(b) + tanh(c)", DType::Complex),
    ("arcsin(a) + arccos(b) + arctan(c)", DType::Complex),
    ("arcsinh(a) + arccosh(b) + arctanh(c)", DType::Complex),
    ("log1p(a) + log10(b) + log2(c) + expm1(a)", DType::Complex),
    ("abs(a) + conj(b) + sign(c) + round(a)", DType::Complex),
    (
        "real(a) + imag(b) + complex(real(c), imag(a))",
        DType::Complex,
    ),
    ("(a == b) | (b != c)", DType::Complex),
    ("sum(a*b)", DType::Double),
    ("prod(a / 2 + 1)", DType::Double),
    ("min(a)", DType::Double),
    ("max(a - b)", DType::Double),
    ("sum(a*b, axis=1)", DType::Double),
    ("max(a, axis=0)", DType::Double),
    ("prod(a, axis=1)", DType::Double),
    ("sum(a)", DType::Float),
    ("min(a, axis=1)", DType::Float),
    ("sum(a*b)", DType::Int),
    ("prod(a, axis=0)", DType::Int),
    ("max(a)", DType::Int),
    ("sum(a + b, axis=1)", DType::Long),
    ("min(a)", DType::Long),
    ("sum(a*b)", DType::Complex),
    ("prod(a / 4, axis=1)", DType::Complex),
];

/// Every name given the same kind, but `i`, which stays an int32 (mixed kinds).
fn typed(src: &str, kind: DType) -> Vec<(String, DType)> {
    names(src)
        .unwrap()
        .into_iter()
        .map(|n| {
            let k = if n == "i" { DType::Int } else { kind };
            (n, k)
        })
        .collect()
}

#[test]
fn kernels_emulated_on_the_cpu_compute_what_the_cpu_engine_computes() {
    let Some(cxx) = compiler() else {
        eprintln!("no C++ compiler: the CUDA kernels' source was not run");
        return;
    };
    let mut cases: Vec<(String, DType)> = CASES.iter().map(|(s, k)| (s.to_string(), *k)).collect();
    // Mixed kinds: an int32 with each other kind.
    for kind in [DType::Long, DType::Float, DType::Double, DType::Complex] {
        cases.push(("a * i + i / 3".into(), kind));
    }
    let mut draw = Draw(0x2545_f491_4f6c_dd1d);
    let mut runs = Vec::new();
    let mut units = Vec::new();
    for (src, kind) in &cases {
        let program = compile_program(src, *kind);
        for layout in [Layout::Contiguous, Layout::Mixed, Layout::Reversed] {
            let ins = inputs(&program, layout, &mut draw);
            let c = case(&program, &ins);
            let index = units.len();
            let probe = plan(
                &program,
                &args(&program, &ins, &c.strides),
                &c.shape,
                ArrayArg {
                    addr: 0,
                    dtype: program.out,
                    strides: &c.out_strides,
                    stored: Default::default(),
                },
                8,
                layout.max_blocks(),
            )
            .unwrap();
            units.push(translation_unit(index, &program, probe.ndim));
            runs.push((src.clone(), *kind, layout, program.clone(), ins, c, index));
        }
    }
    let dir = std::env::temp_dir().join(format!("paralelo-cuda-emulated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lib_path = build(&dir, &units, &cxx);
    // SAFETY: a library this test just built, whose initialisers do nothing.
    let lib = unsafe { libloading::Library::new(&lib_path).unwrap() };
    let mut failures = Vec::new();
    let mut launched = std::collections::BTreeSet::new();
    for (src, kind, layout, program, ins, c, index) in runs {
        let size = program.out.size();
        let mut got = vec![0u8; c.out_len * size];
        let mut want = vec![0u8; c.out_len * size];
        let arrays = args(&program, &ins, &c.strides);
        let out = |buf: &mut Vec<u8>| ArrayArg {
            addr: buf.as_mut_ptr() as usize,
            dtype: program.out,
            strides: &c.out_strides,
            stored: Default::default(),
        };
        let mut l = plan(
            &program,
            &arrays,
            &c.shape,
            out(&mut got),
            8,
            layout.max_blocks(),
        )
        .unwrap();
        launched.extend(l.steps.iter().map(|s| s.kernel));
        launch(&lib, index, &mut l);
        // SAFETY: the inputs and output are this test's buffers, sized for their strides.
        unsafe { evaluate(&program, &arrays, &c.shape, out(&mut want)).unwrap() };
        if let Err(e) = same(program.out, &got, &want, program.reduce.is_some()) {
            failures.push(format!("{src} over {kind:?}, {layout:?}: {e}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        launched.into_iter().collect::<Vec<_>>(),
        [
            "px_finish",
            "px_map",
            "px_partial",
            "px_row_threads",
            "px_rows"
        ]
    );
    assert!(
        failures.is_empty(),
        "{} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every case's source, as NVRTC compiles it for a GPU (where NVRTC is installed: the
/// `cuda` feature, and libnvrtc on the library path).
#[cfg(feature = "cuda")]
#[test]
fn nvrtc_compiles_every_kernel() {
    use paralelo_expr::cuda::device::{compile, nvrtc_missing};
    if let Some(why) = nvrtc_missing() {
        eprintln!("{why}: the kernels were not compiled for a GPU");
        return;
    }
    for (src, kind) in CASES {
        let program = compile_program(src, *kind);
        for ndim in [1, 2] {
            let ptx = compile(&kernel_source(&program, ndim), Some("sm_80"))
                .unwrap_or_else(|e| panic!("{src} over {kind:?}, {ndim} dimensions: {e}"));
            let entry = if program.reduce.is_some() {
                "px_partial"
            } else {
                "px_map"
            };
            assert!(
                ptx.contains(&format!(".entry {entry}")),
                "{src}: no {entry} in\n{ptx}"
            );
        }
    }
}

/// Every operation the language has, over every kind numexpr has a kernel for (a
/// scalar operand too), as NVRTC compiles them: one compilation of them all, so that an
/// overload missing from the prelude for some kind is found.
#[cfg(feature = "cuda")]
#[test]
fn nvrtc_compiles_every_operation_over_every_kind() {
    use paralelo_expr::cuda::device::{compile as nvrtc_compile, nvrtc_missing};
    if let Some(why) = nvrtc_missing() {
        eprintln!("{why}: the kernels were not compiled for a GPU");
        return;
    }
    const FUNCS: &[&str] = &[
        "sqrt",
        "sin",
        "cos",
        "tan",
        "arcsin",
        "arccos",
        "arctan",
        "sinh",
        "cosh",
        "tanh",
        "arcsinh",
        "arccosh",
        "arctanh",
        "log",
        "log1p",
        "log10",
        "log2",
        "exp",
        "expm1",
        "abs",
        "ceil",
        "floor",
        "round",
        "trunc",
        "sign",
        "real",
        "imag",
        "conj",
        "isnan",
        "isfinite",
        "isinf",
        "signbit",
        "copy",
        "ones_like",
    ];
    const FUNCS2: &[&str] = &[
        "arctan2",
        "fmod",
        "hypot",
        "nextafter",
        "copysign",
        "maximum",
        "minimum",
        "complex",
    ];
    const BINARY: &[&str] = &[
        "+", "-", "*", "/", "//", "%", "**", ">", ">=", "<", "<=", "==", "!=", "&", "|", "^", "<<",
        ">>",
    ];
    let mut sources: Vec<String> = Vec::new();
    sources.extend(FUNCS.iter().map(|f| format!("{f}(a)")));
    sources.extend(FUNCS2.iter().map(|f| format!("{f}(a, b)")));
    sources.extend(FUNCS2.iter().map(|f| format!("{f}(a, 2)")));
    sources.extend(BINARY.iter().map(|op| format!("a {op} b")));
    sources.extend(BINARY.iter().map(|op| format!("a {op} 3")));
    sources.extend(["-a", "~a", "where(a > b, a, b)", "where(a != b, 1, a)"].map(String::from));
    sources.extend(["sum", "prod", "min", "max"].map(|r| format!("{r}(a * 1)")));
    let kinds = [
        DType::Bool,
        DType::Int,
        DType::Long,
        DType::Float,
        DType::Double,
        DType::Complex,
    ];
    let mut text = String::from(PRELUDE);
    let mut count = 0;
    for src in &sources {
        for kind in kinds {
            // (what numexpr refuses for a kind is refused before any source is made)
            if let Ok(program) = compile(src, &typed(src, kind), Optimization::Aggressive) {
                text.push_str(&namespaced(count, &program, 2));
                count += 1;
            }
        }
    }
    assert!(count > 300, "only {count} programs typed");
    nvrtc_compile(&text, Some("sm_80")).unwrap_or_else(|e| panic!("{count} programs: {e}"));
}

fn compile_program(src: &str, kind: DType) -> Program {
    compile(src, &typed(src, kind), Optimization::Aggressive)
        .unwrap_or_else(|e| panic!("{src} over {kind:?}: {e}"))
}
