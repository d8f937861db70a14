// repro.h - shared helpers for the gpurepro step programs.
//
// Header-only, C++17, no third-party dependencies. The protocol part (JSON records, exit codes,
// host numerics) is plain C++; the CUDA part (error capture, device buffers, device info) is only
// compiled when the CUDA runtime API is visible (any .cu translation unit built by nvcc).
//
// Output protocol (see DESIGN.md "Program output protocol"): human-readable text on stdout, plus
// lines of the form
//     @@repro {"event":"...", ...}
// carrying exactly one JSON object each. Events used here: config, preflight, device, status,
// check, layout, result. A program prints config + preflight before its first CUDA API call; with
// --preflight-only it stops right there and exits 0.
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__CUDACC__) || defined(CUDART_VERSION)
#include <cuda_runtime_api.h>
#define REPRO_HAVE_CUDA 1
#endif

namespace repro {

// ------------------------------------------------------------------------------------------------
// JSON
// ------------------------------------------------------------------------------------------------

// Returns `s` as a quoted JSON string (RFC 8259 escaping; bytes >= 0x80 are passed through, so
// UTF-8 stays UTF-8; other control characters become \u00XX).
inline std::string json_quote(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
  return out;
}

inline std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";  // JSON has no NaN/Inf
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

// A flat JSON object builder. Keys are emitted in insertion order.
class Obj {
 public:
  Obj() = default;
  Obj& raw(const std::string& key, const std::string& json_value) {
    if (!body_.empty()) body_ += ",";
    body_ += json_quote(key);
    body_ += ":";
    body_ += json_value;
    return *this;
  }
  Obj& s(const std::string& key, const std::string& v) { return raw(key, json_quote(v)); }
  Obj& i(const std::string& key, long long v) { return raw(key, std::to_string(v)); }
  Obj& u(const std::string& key, unsigned long long v) { return raw(key, std::to_string(v)); }
  Obj& d(const std::string& key, double v) { return raw(key, json_number(v)); }
  Obj& b(const std::string& key, bool v) { return raw(key, v ? "true" : "false"); }
  Obj& null(const std::string& key) { return raw(key, "null"); }
  Obj& ints(const std::string& key, const std::vector<long long>& v) {
    std::string a = "[";
    for (size_t k = 0; k < v.size(); ++k) a += (k ? "," : "") + std::to_string(v[k]);
    return raw(key, a + "]");
  }
  Obj& strs(const std::string& key, const std::vector<std::string>& v) {
    std::string a = "[";
    for (size_t k = 0; k < v.size(); ++k) a += (k ? "," : "") + json_quote(v[k]);
    return raw(key, a + "]");
  }
  Obj& obj(const std::string& key, const Obj& o) { return raw(key, o.dump()); }
  std::string dump() const { return "{" + body_ + "}"; }

 private:
  std::string body_;
};

inline Obj event(const char* name) {
  Obj o;
  o.s("event", name);
  return o;
}

// Prints one protocol line and flushes, so records survive a later crash of the process.
inline void emit(const Obj& o) {
  std::fflush(stderr);
  std::printf("@@repro %s\n", o.dump().c_str());
  std::fflush(stdout);
}

// Human-readable text (also flushed immediately).
inline void say(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void say(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vprintf(fmt, ap);
  va_end(ap);
  std::fflush(stdout);
}

// ------------------------------------------------------------------------------------------------
// Type names (for the resolved kernel schedule etc.), from the compiler's pretty function name.
// ------------------------------------------------------------------------------------------------

template <class T>
std::string type_name() {
  const std::string p = __PRETTY_FUNCTION__;
  // gcc: "std::string repro::type_name() [with T = X; std::string = ...]"
  // clang: "std::string repro::type_name() [T = X]"
  size_t start = p.find("T = ");
  if (start == std::string::npos) return p;
  start += 4;
  int depth = 0;
  size_t end = start;
  for (; end < p.size(); ++end) {
    char c = p[end];
    if (c == '<' || c == '(' || c == '[') ++depth;
    else if (c == '>' || c == ')') --depth;
    else if (c == ']') {
      if (depth == 0) break;
      --depth;
    } else if (c == ';' && depth == 0) break;
  }
  return p.substr(start, end - start);
}

// Name of an index type as written in the source ("int", "int64_t", ...), for config records.
template <class T>
const char* index_type_name() {
  if (std::is_same_v<T, int>) return "int";
  if (std::is_same_v<T, int64_t>) return "int64_t";
  if (std::is_same_v<T, uint32_t>) return "uint32_t";
  if (std::is_same_v<T, uint64_t>) return "uint64_t";
  if (std::is_same_v<T, long long>) return "long long";
  return "unknown";
}

// ------------------------------------------------------------------------------------------------
// Command line
// ------------------------------------------------------------------------------------------------

struct Args {
  bool preflight_only = false;
  bool verbose = false;
};

inline Args parse_args(int argc, char** argv) {
  Args a;
  for (int k = 1; k < argc; ++k) {
    if (std::strcmp(argv[k], "--preflight-only") == 0) a.preflight_only = true;
    else if (std::strcmp(argv[k], "--verbose") == 0 || std::strcmp(argv[k], "-v") == 0) a.verbose = true;
    else if (std::strcmp(argv[k], "--help") == 0 || std::strcmp(argv[k], "-h") == 0) {
      std::printf("usage: %s [--preflight-only] [--verbose]\n"
                  "  --preflight-only  print config and preflight records, exit 0 before any CUDA call\n",
                  argv[0]);
      std::exit(0);
    } else {
      std::fprintf(stderr, "warning: ignoring unknown argument '%s'\n", argv[k]);
    }
  }
  return a;
}

// ------------------------------------------------------------------------------------------------
// Records
// ------------------------------------------------------------------------------------------------

// Outcome vocabulary used by the result record, with the program's exit code for each.
//   pass 0 | mismatch 1 | can_implement_error 2 | init_error 2 | runtime_error 3
inline int exit_code_for(const std::string& outcome) {
  if (outcome == "pass") return 0;
  if (outcome == "mismatch") return 1;
  if (outcome == "can_implement_error" || outcome == "init_error") return 2;
  return 3;
}

// Final record; returns the exit code to return from main().
inline int result(const std::string& outcome, const std::string& reason) {
  emit(event("result").s("outcome", outcome).s("reason", reason));
  say("RESULT: %s%s%s\n", outcome == "pass" ? "PASS" : outcome.c_str(), reason.empty() ? "" : " - ",
      reason.c_str());
  return exit_code_for(outcome);
}

inline void preflight(const std::string& arch, long long shared_storage_bytes, long long capacity_bytes,
                      Obj extra = Obj()) {
  Obj o = event("preflight");
  o.s("arch", arch).i("shared_storage_bytes", shared_storage_bytes).i("smem_capacity_bytes", capacity_bytes)
      .b("fits", shared_storage_bytes <= capacity_bytes);
  std::string e = extra.dump();
  if (e.size() > 2) o.raw("detail", e);
  emit(o);
  say("preflight[%s]: SharedStorage %lld B vs capacity %lld B -> %s\n", arch.c_str(), shared_storage_bytes,
      capacity_bytes, shared_storage_bytes <= capacity_bytes ? "fits" : "DOES NOT FIT");
}

// Rounds v up to a multiple of a (buffer offsets that keep every group's base address aligned).
inline size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Lowercase hex of the object representation of a trivially copyable value.
inline std::string hex_bytes(const void* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  const unsigned char* b = static_cast<const unsigned char*>(p);
  for (size_t k = 0; k < n; ++k) {
    out.push_back(digits[b[k] >> 4]);
    out.push_back(digits[b[k] & 15]);
  }
  return out;
}

// One layout record: the object's type, sizeof (`bytes`), its object representation (`bytes_hex`),
// optionally the logical size it describes (`size`, e.g. cute::size of a layout; -1: omitted) and a
// printed form (`pretty`). `invoke layout.diff` compares every field but name, field by field.
template <class T>
void layout(const std::string& name, const T& value, const std::string& pretty = std::string(), long long size = -1) {
  static_assert(std::is_trivially_copyable_v<T>, "layout dumps need a trivially copyable type");
  Obj o = event("layout");
  o.s("name", name).s("type", type_name<T>()).u("bytes", sizeof(T));
  if (size >= 0) o.i("size", size);
  o.s("bytes_hex", hex_bytes(&value, sizeof(T)));
  if (!pretty.empty()) o.s("pretty", pretty);
  emit(o);
}

// cutlass::Status enumerator names by value (cutlass/cutlass.h, CUTLASS 3.x/4.x order).
inline const char* cutlass_status_name(int v) {
  static const char* names[] = {"kSuccess",           "kErrorMisalignedOperand", "kErrorInvalidDataType",
                                "kErrorInvalidLayout", "kErrorInvalidProblem",    "kErrorNotSupported",
                                "kErrorWorkspaceNull", "kErrorInternal",          "kErrorArchMismatch",
                                "kErrorInsufficientDriver", "kErrorMemoryAllocation", "kInvalid"};
  if (v >= 0 && v < int(sizeof(names) / sizeof(names[0]))) return names[v];
  return "kUnknownStatus";
}

// ------------------------------------------------------------------------------------------------
// Host numerics: bit-exact decoders for the narrow formats, RNG, comparison statistics
// ------------------------------------------------------------------------------------------------

// FP8 E4M3 (OCP, "fn": no infinities, S.1111.111 is NaN). Bias 7.
inline float e4m3_to_float(uint8_t c) {
  int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
  if (e == 15 && m == 7) return NAN;
  float v = (e == 0) ? std::ldexp(float(m) / 8.0f, -6) : std::ldexp(1.0f + float(m) / 8.0f, e - 7);
  return s ? -v : v;
}

// FP4 E2M1: values 0, 0.5, 1, 1.5, 2, 3, 4, 6 (and negatives). Bias 1. Low nibble of `c` is used.
inline float e2m1_to_float(uint8_t c) {
  int s = (c >> 3) & 1, e = (c >> 1) & 3, m = c & 1;
  float v = (e == 0) ? 0.5f * float(m) : std::ldexp(1.0f + 0.5f * float(m), e - 1);
  return s ? -v : v;
}

// UE8M0 scale factor: 2^(c-127); 0xff is NaN.
inline float ue8m0_to_float(uint8_t c) { return c == 0xff ? NAN : std::ldexp(1.0f, int(c) - 127); }
inline uint8_t ue8m0_from_exp(int e) { return static_cast<uint8_t>(e + 127); }

inline float bf16_to_float(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_bf16_rne(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// SplitMix64: small, seedable, identical on every platform.
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(next() % n); }
  int range(int lo, int hi) { return lo + int(below(uint32_t(hi - lo + 1))); }  // inclusive
};

// A random E4M3 code: zero with probability 1/16, else +-(1+m/8)*2^e with e in [emin, emax].
// Keep emax <= 7 (then no NaN code can be produced).
inline uint8_t random_e4m3(Rng& r, int emin, int emax) {
  if (r.below(16) == 0) return 0;
  int s = int(r.below(2)), e = r.range(emin, emax), m = int(r.below(8));
  return static_cast<uint8_t>((s << 7) | ((e + 7) << 3) | m);
}

// A random E2M1 code (all 16 codes are finite).
inline uint8_t random_e2m1(Rng& r) { return static_cast<uint8_t>(r.below(16)); }

// Statistics of a comparison against a host reference.
struct CheckStats {
  double max_abs_err = 0.0;
  double max_rel_err = 0.0;
  long long mismatches = 0;
  long long checked = 0;
  long long nonfinite = 0;
  double max_err_over_tol = 0.0;  // how close the worst value came to failing (> 1: mismatch)
  int printed = 0;
};

// Compares one value; prints the first `max_print` mismatches with their location.
inline bool check_value(CheckStats& st, double got, double ref, double tol, const char* where_fmt, int a, int b,
                        int c, int max_print = 8) {
  ++st.checked;
  double err = std::fabs(got - ref);
  bool finite = std::isfinite(got);
  if (!finite) ++st.nonfinite;
  if (finite) {
    if (err > st.max_abs_err) st.max_abs_err = err;
    double rel = err / std::fmax(std::fabs(ref), 1e-30);
    if (std::fabs(ref) > 0 && rel > st.max_rel_err) st.max_rel_err = rel;
    if (tol > 0 && err / tol > st.max_err_over_tol) st.max_err_over_tol = err / tol;
  }
  bool ok = finite && err <= tol;
  if (!ok) {
    ++st.mismatches;
    if (st.printed < max_print) {
      ++st.printed;
      char where[96];
      std::snprintf(where, sizeof(where), where_fmt, a, b, c);
      say("  mismatch at %s: got %.8g, expected %.8g (|err| %.3g > tol %.3g)\n", where, got, ref, err, tol);
    }
  }
  return ok;
}

inline void emit_check(const CheckStats& st, const std::string& tolerance_rule) {
  emit(event("check")
           .d("max_abs_err", st.max_abs_err)
           .d("max_rel_err", st.max_rel_err)
           .i("mismatches", st.mismatches)
           .i("checked", st.checked)
           .i("nonfinite", st.nonfinite)
           .d("max_err_over_tol", st.max_err_over_tol)
           .s("tolerance", tolerance_rule));
  say("check: %lld of %lld values mismatch (max |err| %.4g, non-finite %lld)\n", st.mismatches, st.checked,
      st.max_abs_err, st.nonfinite);
}

// ------------------------------------------------------------------------------------------------
// CUDA helpers (only in CUDA translation units)
// ------------------------------------------------------------------------------------------------
#ifdef REPRO_HAVE_CUDA

struct CudaErr {
  cudaError_t code = cudaSuccess;
  std::string name = "cudaSuccess";
  std::string text = "no error";
  bool ok() const { return code == cudaSuccess; }
  std::string brief() const { return ok() ? name : name + ": " + text; }
};

inline CudaErr cuda_err(cudaError_t e) {
  CudaErr r;
  r.code = e;
  const char* n = cudaGetErrorName(e);
  const char* t = cudaGetErrorString(e);
  r.name = n ? n : "cudaErrorUnknownName";
  r.text = t ? t : "";
  return r;
}

// cudaGetLastError() (which also clears the sticky-less error state) as a CudaErr.
inline CudaErr last_cuda_error() { return cuda_err(cudaGetLastError()); }

// One status record: the CUTLASS status of `stage` plus the CUDA error seen right after it.
inline void status(const std::string& stage, int cutlass_status, const std::string& status_string,
                   const CudaErr& after, Obj extra = Obj()) {
  Obj o = event("status");
  o.s("stage", stage).s("status", cutlass_status_name(cutlass_status)).s("status_string", status_string)
      .s("cuda_error", after.name).s("cuda_error_string", after.text);
  std::string e = extra.dump();
  if (e.size() > 2) o.raw("detail", e);
  emit(o);
  say("%-18s -> %s (%s); cudaGetLastError after: %s\n", stage.c_str(), cutlass_status_name(cutlass_status),
      status_string.c_str(), after.brief().c_str());
}

// RAII device allocation. Errors are returned, never thrown or aborted on.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_) { o.ptr_ = nullptr; o.n_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) { reset(); ptr_ = o.ptr_; n_ = o.n_; o.ptr_ = nullptr; o.n_ = 0; }
    return *this;
  }
  ~DeviceBuffer() { reset(); }

  cudaError_t alloc(size_t n) {
    reset();
    n_ = n;
    if (n == 0) return cudaSuccess;
    cudaError_t e = cudaMalloc(reinterpret_cast<void**>(&ptr_), n * sizeof(T));
    if (e != cudaSuccess) { ptr_ = nullptr; n_ = 0; }
    return e;
  }
  cudaError_t alloc_zeroed(size_t n) {
    cudaError_t e = alloc(n);
    if (e == cudaSuccess && n) e = cudaMemset(ptr_, 0, n * sizeof(T));
    return e;
  }
  cudaError_t upload(const std::vector<T>& h) {
    cudaError_t e = alloc(h.size());
    if (e == cudaSuccess && !h.empty()) e = cudaMemcpy(ptr_, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
    return e;
  }
  cudaError_t download(std::vector<T>& h) const {
    h.resize(n_);
    if (n_ == 0) return cudaSuccess;
    return cudaMemcpy(h.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
  }
  void reset() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    n_ = 0;
  }
  T* get() const { return ptr_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// Collects the first CUDA error of a setup sequence: `if (!g.ok(cudaMalloc(...), "what")) ...`.
struct CudaGuard {
  CudaErr first;
  std::string what;
  bool failed = false;
  bool ok(cudaError_t e, const char* step) {
    if (e != cudaSuccess && !failed) {
      failed = true;
      first = cuda_err(e);
      what = step;
      say("CUDA error in %s: %s\n", step, first.brief().c_str());
    }
    return e == cudaSuccess;
  }
  std::string reason() const { return what + ": " + first.brief(); }
};

// Emits the device record (GPU name, compute capability, opt-in shared memory, driver/runtime
// versions). Returns false (with `err` set) when no usable device is present.
inline bool device_info(int& cc_major, int& cc_minor, CudaErr& err, long long* smem_optin = nullptr) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  Obj o = event("device");
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  o.i("driver_version", drv).i("runtime_version", rt);
  if (e != cudaSuccess || count == 0) {
    err = e != cudaSuccess ? cuda_err(e) : cuda_err(cudaErrorNoDevice);
    cudaGetLastError();
    o.i("count", count).s("cuda_error", err.name).s("cuda_error_string", err.text);
    emit(o);
    say("no usable CUDA device: %s\n", err.brief().c_str());
    return false;
  }
  cudaDeviceProp p;
  e = cudaGetDeviceProperties(&p, 0);
  if (e != cudaSuccess) {
    err = cuda_err(e);
    o.i("count", count).s("cuda_error", err.name).s("cuda_error_string", err.text);
    emit(o);
    return false;
  }
  cc_major = p.major;
  cc_minor = p.minor;
  if (smem_optin) *smem_optin = static_cast<long long>(p.sharedMemPerBlockOptin);
  o.i("count", count).s("name", p.name).s("arch", "sm_" + std::to_string(p.major * 10 + p.minor))
      .i("sm_count", p.multiProcessorCount).i("smem_per_block_optin", static_cast<long long>(p.sharedMemPerBlockOptin))
      .s("cuda_error", "cudaSuccess");
  emit(o);
  say("device 0: %s (sm_%d%d, %d SMs, opt-in smem %zu B), driver %d, runtime %d\n", p.name, p.major, p.minor,
      p.multiProcessorCount, static_cast<size_t>(p.sharedMemPerBlockOptin), drv, rt);
  err = CudaErr();
  return true;
}

// Attributes of a __global__ function as the runtime sees them on device 0: tells whether the
// binary carries an image this device can load (binary/ptx versions) before CUTLASS touches it.
template <class Kernel>
Obj kernel_image_probe(Kernel* fn) {
  Obj o;
  cudaFuncAttributes a;
  std::memset(&a, 0, sizeof(a));
  cudaError_t e = cudaFuncGetAttributes(&a, reinterpret_cast<const void*>(fn));
  CudaErr ce = cuda_err(e);
  cudaGetLastError();
  o.s("cuda_error", ce.name).s("cuda_error_string", ce.text);
  if (e == cudaSuccess) {
    o.i("binary_version", a.binaryVersion).i("ptx_version", a.ptxVersion)
        .i("max_threads_per_block", a.maxThreadsPerBlock).i("static_smem_bytes", static_cast<long long>(a.sharedSizeBytes))
        .i("max_dynamic_smem_bytes", a.maxDynamicSharedSizeBytes).i("num_regs", a.numRegs);
  }
  return o;
}

#endif  // REPRO_HAVE_CUDA

}  // namespace repro
