// paralelo's expression kernels: the operations, one overload per kind, with numexpr's
// semantics as the CPU engine has them (kernels.rs): integer arithmetic wraps, integer
// division and modulo are Python's and give 0 for a zero divisor, `round` is to even,
// shifts past the width give 0 (left) or the sign (right), NaN wins in maximum/minimum.
// Valid CUDA C++ for NVRTC, and plain C++ (the tests run it on the CPU).
typedef long long px_l;
typedef unsigned long long px_ul;

#if defined(__CUDACC__)
#define PX_F __device__ __forceinline__
PX_F float px_f(unsigned b) { return __int_as_float((int)b); }
PX_F double px_d(px_ul b) { return __longlong_as_double((px_l)b); }
#define PX_INF __longlong_as_double(0x7ff0000000000000LL)
#define PX_INFF __int_as_float(0x7f800000)
#else
#define PX_F static inline
PX_F float px_f(unsigned b) { float f; memcpy(&f, &b, 4); return f; }
PX_F double px_d(px_ul b) { double d; memcpy(&d, &b, 8); return d; }
#define PX_INF HUGE_VAL
#define PX_INFF HUGE_VALF
#endif

// A complex128 element, laid out as numpy's.
struct px_c { double re, im; };
PX_F px_c px_cx(double re, double im) { px_c z; z.re = re; z.im = im; return z; }

// Arithmetic ---------------------------------------------------------------------------
#define PX_INTS(T, U, MIN)                                                                 \
  PX_F T px_add(T a, T b) { return (T)((U)a + (U)b); }                                   \
  PX_F T px_sub(T a, T b) { return (T)((U)a - (U)b); }                                   \
  PX_F T px_mul(T a, T b) { return (T)((U)a * (U)b); }                                   \
  PX_F T px_neg(T a) { return (T)(0 - (U)a); }                                           \
  PX_F T px_wdiv(T a, T b) { return (a == MIN && b == -1) ? MIN : a / b; }               \
  PX_F T px_wrem(T a, T b) { return (b == -1) ? 0 : a % b; }                             \
  PX_F T px_div(T a, T b) { return b == 0 ? 0 : px_wdiv(a, b); }                         \
  PX_F T px_floordiv(T a, T b) {                                                         \
    if (b == 0) return 0;                                                                 \
    T q = px_wdiv(a, b);                                                                  \
    return q - (T)((px_wrem(a, b) != 0) && ((a < 0) != (b < 0)));                         \
  }                                                                                       \
  PX_F T px_mod(T a, T b) {                                                              \
    if (b == 0) return 0;                                                                 \
    T r = px_wrem(a, b);                                                                  \
    return (r != 0 && ((r < 0) != (b < 0))) ? px_add(r, b) : r;                           \
  }                                                                                       \
  PX_F T px_pow(T a, T b) {                                                              \
    if (b < 0) return a == 0 ? 0 : px_wdiv((T)1, a);                                         \
    U e = (U)b; T acc = 1;                                                                \
    while (e) { if (e & 1) acc = px_mul(acc, a); a = px_mul(a, a); e >>= 1; }             \
    return acc;                                                                           \
  }                                                                                       \
  PX_F T px_and(T a, T b) { return a & b; }                                              \
  PX_F T px_or(T a, T b) { return a | b; }                                               \
  PX_F T px_xor(T a, T b) { return a ^ b; }                                              \
  PX_F T px_invert(T a) { return ~a; }                                                   \
  PX_F T px_lshift(T a, T b) {                                                           \
    return (b >= 0 && b < (T)(8 * sizeof(T))) ? (T)((U)a << b) : 0;                       \
  }                                                                                       \
  PX_F T px_rshift(T a, T b) {                                                           \
    T w = (T)(8 * sizeof(T) - 1);                                                         \
    return a >> ((b < 0 || b > w) ? w : b);                                               \
  }                                                                                       \
  PX_F T px_round(T a) { return a; }                                                     \
  PX_F T px_sign(T a) { return (T)((a > 0) - (a < 0)); }                                 \
  PX_F T px_ones_like(T) { return 1; }
PX_INTS(int, unsigned, (int)0x80000000)
PX_INTS(px_l, px_ul, (px_l)0x8000000000000000ULL)

#define PX_REALS(T, S)                                                                     \
  PX_F T px_add(T a, T b) { return a + b; }                                              \
  PX_F T px_sub(T a, T b) { return a - b; }                                              \
  PX_F T px_mul(T a, T b) { return a * b; }                                              \
  PX_F T px_div(T a, T b) { return a / b; }                                              \
  PX_F T px_neg(T a) { return -a; }                                                      \
  PX_F T px_floordiv(T a, T b) { return floor##S(a / b); }                               \
  PX_F T px_mod(T a, T b) { return a - floor##S(a / b) * b; }                            \
  PX_F T px_pow(T a, T b) { return pow##S(a, b); }                                       \
  PX_F T px_sqrt(T a) { return sqrt##S(a); }                                             \
  PX_F T px_sin(T a) { return sin##S(a); }                                               \
  PX_F T px_cos(T a) { return cos##S(a); }                                               \
  PX_F T px_tan(T a) { return tan##S(a); }                                               \
  PX_F T px_arcsin(T a) { return asin##S(a); }                                           \
  PX_F T px_arccos(T a) { return acos##S(a); }                                           \
  PX_F T px_arctan(T a) { return atan##S(a); }                                           \
  PX_F T px_sinh(T a) { return sinh##S(a); }                                             \
  PX_F T px_cosh(T a) { return cosh##S(a); }                                             \
  PX_F T px_tanh(T a) { return tanh##S(a); }                                             \
  PX_F T px_arcsinh(T a) { return asinh##S(a); }                                         \
  PX_F T px_arccosh(T a) { return acosh##S(a); }                                         \
  PX_F T px_arctanh(T a) { return atanh##S(a); }                                         \
  PX_F T px_log(T a) { return log##S(a); }                                               \
  PX_F T px_log1p(T a) { return log1p##S(a); }                                           \
  PX_F T px_log10(T a) { return log10##S(a); }                                           \
  PX_F T px_log2(T a) { return log2##S(a); }                                             \
  PX_F T px_exp(T a) { return exp##S(a); }                                               \
  PX_F T px_expm1(T a) { return expm1##S(a); }                                           \
  PX_F T px_abs(T a) { return fabs##S(a); }                                              \
  PX_F T px_ceil(T a) { return ceil##S(a); }                                             \
  PX_F T px_floor(T a) { return floor##S(a); }                                           \
  PX_F T px_round(T a) { return rint##S(a); }                                            \
  PX_F T px_trunc(T a) { return trunc##S(a); }                                           \
  PX_F T px_sign(T a) { return a > 0 ? (T)1 : a < 0 ? (T)-1 : a == 0 ? (T)0 : a; }        \
  PX_F T px_real(T a) { return a; }                                                      \
  PX_F T px_imag(T) { return 0; }                                                        \
  PX_F T px_conj(T a) { return a; }                                                      \
  PX_F T px_ones_like(T) { return 1; }                                                   \
  PX_F bool px_isnan(T a) { return a != a; }                                             \
  PX_F bool px_isinf(T a) { return a == (T)PX_INF || a == -(T)PX_INF; }                  \
  PX_F bool px_isfinite(T a) { return !px_isnan(a) && !px_isinf(a); }                    \
  PX_F bool px_signbit(T a) { return signbit(a) != 0; }                                  \
  PX_F T px_arctan2(T a, T b) { return atan2##S(a, b); }                                 \
  PX_F T px_fmod(T a, T b) { return fmod##S(a, b); }                                     \
  PX_F T px_hypot(T a, T b) { return hypot##S(a, b); }                                   \
  PX_F T px_nextafter(T a, T b) { return nextafter##S(a, b); }                           \
  PX_F T px_copysign(T a, T b) { return copysign##S(a, b); }                             \
  PX_F T px_maximum(T a, T b) { return (a != a || a > b) ? a : b; }                      \
  PX_F T px_minimum(T a, T b) { return (a != a || a < b) ? a : b; }
PX_REALS(float, f)
PX_REALS(double, )

// Complex numbers, by num-complex's formulas (what the CPU engine computes).
PX_F px_c px_add(px_c a, px_c b) { return px_cx(a.re + b.re, a.im + b.im); }
PX_F px_c px_sub(px_c a, px_c b) { return px_cx(a.re - b.re, a.im - b.im); }
PX_F px_c px_mul(px_c a, px_c b) {
  return px_cx(a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re);
}
PX_F px_c px_div(px_c a, px_c b) {
  double d = b.re * b.re + b.im * b.im;
  return px_cx((a.re * b.re + a.im * b.im) / d, (a.im * b.re - a.re * b.im) / d);
}
PX_F px_c px_neg(px_c a) { return px_cx(-a.re, -a.im); }
PX_F px_c px_scale(px_c a, double k) { return px_cx(a.re * k, a.im * k); }
PX_F px_c px_unscale(px_c a, double k) { return px_cx(a.re / k, a.im / k); }
PX_F bool px_ceq(px_c a, px_c b) { return a.re == b.re && a.im == b.im; }
PX_F double px_norm(px_c a) { return hypot(a.re, a.im); }
PX_F px_c px_polar(double r, double t) { return px_cx(r * cos(t), r * sin(t)); }
PX_F px_c px_exp(px_c z) {
  double re = z.re, im = z.im;
  if (isinf(re)) {
    if (re < 0) {
      if (!isfinite(im)) return px_cx(0, 0);
    } else if (im == 0 || !isfinite(im)) {
      return px_cx(re, isinf(im) ? px_d(0x7ff8000000000000ULL) : im);
    }
  } else if (re != re && im == 0) {
    return z;
  }
  return px_polar(exp(re), im);
}
PX_F px_c px_log(px_c z) { return px_cx(log(px_norm(z)), atan2(z.im, z.re)); }
// num-complex's square root, which its asin, acos, asinh and acosh take (the CPU's).
PX_F px_c px_polar_sqrt(px_c z) {
  if (z.im == 0) {
    if (!signbit(z.re)) return px_cx(sqrt(z.re), z.im);
    double im = sqrt(-z.re);
    return px_cx(0, signbit(z.im) ? -im : im);
  }
  if (z.re == 0) {
    double x = sqrt(fabs(z.im) / 2);
    return px_cx(x, signbit(z.im) ? -x : x);
  }
  return px_polar(sqrt(px_norm(z)), atan2(z.im, z.re) / 2);
}
PX_F px_c px_sqrt(px_c z) {  // (kernels.rs: `sqrt`, C99's)
  double x = z.re, y = z.im;
  if (isinf(y)) return px_cx(PX_INF, y);
  if (isinf(x)) {
    bool nan = y != y;
    if (x < 0) return px_cx(nan ? px_d(0x7ff8000000000000ull) : 0.0, copysign(PX_INF, y));
    return px_cx(x, nan ? y : copysign(0.0, y));
  }
  if (x != x || y != y) return px_cx(px_d(0x7ff8000000000000ull), px_d(0x7ff8000000000000ull));
  if (y == 0) {
    if (x < 0) return px_cx(0.0, copysign(sqrt(-x), y));
    return px_cx(fabs(sqrt(x)), y);
  }
  const double big = 1.7976931348623157e308 / 4, tiny = 2 * 2.2250738585072014e-308;
  double back = 1;
  if (fabs(x) > big || fabs(y) > big) {
    x *= 0.25; y *= 0.25; back = 2;
  } else if (fabs(x) < tiny && fabs(y) < tiny) {
    x *= 18014398509481984.0; y *= 18014398509481984.0; back = 7.450580596923828125e-9;  // (2^54, 2^-27)
  }
  double d = hypot(x, y), r, s;
  if (x > 0) {
    r = sqrt(0.5 * (d + x)); s = 0.5 * (y / r);
  } else {
    s = sqrt(0.5 * (d - x)); r = fabs(0.5 * (y / s));
  }
  return px_cx(r * back, copysign(s * back, y));
}
PX_F px_c px_powi(px_c b, int e) {
  if (e == 0) return px_cx(1, 0);
  unsigned u = e < 0 ? 0u - (unsigned)e : (unsigned)e;
  if (e < 0) {
    double n = b.re * b.re + b.im * b.im;
    b = px_cx(b.re / n, -b.im / n);
  }
  while ((u & 1) == 0) { b = px_mul(b, b); u >>= 1; }
  if (u == 1) return b;
  px_c acc = b;
  while (u > 1) {
    u >>= 1;
    b = px_mul(b, b);
    if (u & 1) acc = px_mul(acc, b);
  }
  return acc;
}
PX_F px_c px_pow(px_c a, px_c b) {
  if (b.im == 0 && b.re == trunc(b.re) && fabs(b.re) < 100) return px_powi(a, (int)b.re);
  if (a.re == 0 && a.im == 0) return (b.re == 0 && b.im == 0) ? px_cx(1, 0) : px_cx(0, 0);
  if (b.re == 0 && b.im == 0) return px_cx(1, 0);
  return px_exp(px_mul(b, px_log(a)));
}
PX_F px_c px_sin(px_c z) { return px_cx(sin(z.re) * cosh(z.im), cos(z.re) * sinh(z.im)); }
PX_F px_c px_cos(px_c z) { return px_cx(cos(z.re) * cosh(z.im), -sin(z.re) * sinh(z.im)); }

PX_F px_c px_sinh(px_c z) { return px_cx(sinh(z.re) * cos(z.im), cosh(z.re) * sin(z.im)); }
PX_F px_c px_cosh(px_c z) { return px_cx(cosh(z.re) * cos(z.im), sinh(z.re) * sin(z.im)); }
PX_F px_c px_tanh(px_c z) {
  if (fabs(z.re) > 20) {  // (cosh 2x dwarfs cos 2y, and overflows past 355)
    return px_cx(copysign(1.0, z.re), 2 * sin(z.im + z.im) * exp(-2 * fabs(z.re)));
  }
  double r = z.re + z.re, i = z.im + z.im;
  return px_unscale(px_cx(sinh(r), sin(i)), cosh(r) + cos(i));
}
PX_F px_c px_tan(px_c z) {  // -i tanh(iz)
  px_c t = px_tanh(px_cx(-z.im, z.re));
  return px_cx(t.im, -t.re);
}
PX_F px_c px_times_i(px_c z) { return px_mul(px_cx(0, 1), z); }  // (signed zeros as num-complex's)
PX_F px_c px_one_minus_square(px_c z) { return px_sub(px_cx(1, 0), px_mul(z, z)); }
PX_F px_c px_arcsin(px_c z) {
  // -i ln(sqrt(1 - z^2) + iz)
  px_c l = px_log(px_add(px_polar_sqrt(px_one_minus_square(z)), px_times_i(z)));
  return px_mul(px_cx(-0.0, -1), l);
}
PX_F px_c px_arccos(px_c z) {
  // -i ln(i sqrt(1 - z^2) + z)
  px_c l = px_log(px_add(px_times_i(px_polar_sqrt(px_one_minus_square(z))), z));
  return px_mul(px_cx(-0.0, -1), l);
}
PX_F px_c px_arctan(px_c z) {
  if (z.re == 0 && z.im == 1) return px_cx(0, PX_INF);
  if (z.re == 0 && z.im == -1) return px_cx(0, -PX_INF);
  px_c iz = px_times_i(z);
  px_c d = px_sub(px_log(px_add(px_cx(1, 0), iz)), px_log(px_sub(px_cx(1, 0), iz)));
  return px_div(d, px_cx(0, 2));
}
PX_F px_c px_arcsinh(px_c z) {
  return px_log(px_add(z, px_polar_sqrt(px_add(px_cx(1, 0), px_mul(z, z)))));
}
PX_F px_c px_arccosh(px_c z) {
  px_c two = px_cx(2, 0);
  px_c s = px_add(px_polar_sqrt(px_div(px_add(z, px_cx(1, 0)), two)),
                  px_polar_sqrt(px_div(px_sub(z, px_cx(1, 0)), two)));
  return px_mul(two, px_log(s));
}
PX_F px_c px_arctanh(px_c z) {
  if (z.re == 1 && z.im == 0) return px_cx(PX_INF, 0);
  if (z.re == -1 && z.im == 0) return px_cx(-PX_INF, 0);
  px_c d = px_sub(px_log(px_add(px_cx(1, 0), z)), px_log(px_sub(px_cx(1, 0), z)));
  return px_div(d, px_cx(2, 0));
}
PX_F px_c px_log1p(px_c z) { return px_log(px_cx(z.re + 1, z.im)); }
PX_F px_c px_log10(px_c z) { return px_unscale(px_log(z), 2.302585092994046); }
PX_F px_c px_log2(px_c z) { return px_unscale(px_log(z), 0.6931471805599453); }
PX_F px_c px_expm1(px_c z) {
  double h = sin(z.im / 2);
  return px_cx(expm1(z.re) * cos(z.im) - 2 * (h * h), exp(z.re) * sin(z.im));
}
PX_F px_c px_abs(px_c z) {  // (kernels.rs: `modulus`)
  double s = z.re * z.re + z.im * z.im;
  bool normal = s >= 2.2250738585072014e-308 && s <= 1.7976931348623157e308;  // (not NaN)
  return px_cx(normal ? sqrt(s) : hypot(z.re, z.im), 0);
}
PX_F px_c px_conj(px_c z) { return px_cx(z.re, -z.im); }
PX_F px_c px_round(px_c z) { return px_cx(rint(z.re), rint(z.im)); }
PX_F px_c px_sign(px_c z) {
  double n = px_norm(z);
  return n == 0 ? px_cx(0, 0) : px_unscale(z, n);
}
PX_F px_c px_ones_like(px_c) { return px_cx(1, 0); }
PX_F double px_real(px_c z) { return z.re; }
PX_F double px_imag(px_c z) { return z.im; }
PX_F bool px_isnan(px_c z) { return z.re != z.re || z.im != z.im; }
PX_F bool px_isinf(px_c z) { return px_isinf(z.re) || px_isinf(z.im); }
PX_F bool px_isfinite(px_c z) { return px_isfinite(z.re) && px_isfinite(z.im); }
PX_F px_c px_complex(double re, double im) { return px_cx(re, im); }

// Booleans, comparisons, `where`, copies --------------------------------------------------
PX_F bool px_and(bool a, bool b) { return a && b; }
PX_F bool px_or(bool a, bool b) { return a || b; }
PX_F bool px_xor(bool a, bool b) { return a != b; }
PX_F bool px_invert(bool a) { return !a; }
template <class T> PX_F bool px_gt(T a, T b) { return a > b; }
template <class T> PX_F bool px_ge(T a, T b) { return a >= b; }
template <class T> PX_F bool px_eq(T a, T b) { return a == b; }
template <class T> PX_F bool px_ne(T a, T b) { return a != b; }
PX_F bool px_eq(px_c a, px_c b) { return px_ceq(a, b); }
PX_F bool px_ne(px_c a, px_c b) { return !px_ceq(a, b); }
template <class T> PX_F T px_where(bool c, T a, T b) { return c ? a : b; }
template <class T> PX_F T px_copy(T a) { return a; }

// Widening casts (numexpr only widens) ----------------------------------------------------
template <class T> PX_F int px_to_int32(T a) { return (int)a; }
template <class T> PX_F px_l px_to_int64(T a) { return (px_l)a; }
template <class T> PX_F float px_to_float32(T a) { return (float)a; }
template <class T> PX_F double px_to_float64(T a) { return (double)a; }
template <class T> PX_F px_c px_to_complex128(T a) { return px_cx((double)a, 0); }
PX_F px_c px_to_complex128(px_c a) { return a; }

// Reductions: what each folds in, its start, and how two partial results meet -------------
template <class T> PX_F T px_lesser(T a, T b) { return a != a ? a : b != b ? b : (b < a ? b : a); }
// (of equal values only 0.0 and -0.0 differ: which wins depends on the fold's order)
template <class T> PX_F T px_greater(T a, T b) { return a != a ? a : b != b ? b : (b < a ? a : b); }
