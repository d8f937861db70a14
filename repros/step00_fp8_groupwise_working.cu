// step00_fp8_groupwise_working.cu - baseline of the SM12x chain: FlashInfer's known-working SM120
// grouped GEMM, flashinfer/gemm/group_gemm_fp8_groupwise_sm120.cuh, called the way FlashInfer's
// own binding calls it.
//
// Problem: G groups stacked along M (m_indptr), FP8 e4m3 A (M_total x K, row-major), e4m3 B
// (G x N x K, i.e. column-major K x N per group), float32 groupwise scales with granularity
// (M, N, K) = (1, 128, 128), K-major scale layout: SFA is M_total x K/128 and SFB is
// G x N/128 x K/128, both row-major. D = bf16 (M_total x N, row-major).
// D[m,n] = sum_kb SFA[m,kb] * SFB[n/128,kb] * sum_{k in kb} A[m,k] * B[n,k].
//
// The FlashInfer entry point runs can_implement / initialize / run itself and throws
// flashinfer::Error naming the failing call and its cutlass status. The statuses printed here are
// read from that evidence: stages before the failing one returned kSuccess (FlashInfer checks each),
// later stages were not reached.
//
// For the host-side preflight this program instantiates the same kernel type as the header (same
// builder arguments, see namespace fi_config), so sizeof(GemmKernel::SharedStorage) is the size of
// the kernel FlashInfer launches, and the cudaFuncSetAttribute probe after a failed initialize()
// targets the same __global__ function.
//
// Numerics: e4m3 inputs +-(1+m/8)*2^e, e in [-1,1]; scales are powers of two 2^[-2,2]. The exact
// sums are representable in fp32; tolerance |ref|*2^-7 (bf16 output rounding) + sum|terms|*2^-12
// (room for tensor-core accumulation below fp32 precision) + 1e-6.
//
// Run: ./step00 [--preflight-only]

#include <array>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "cutlass/device_kernel.h"
#include "flashinfer/gemm/group_gemm_fp8_groupwise_sm120.cuh"

#include "repro.h"

using namespace cute;

static const char* kStepId = "step00";

// ------------------------------------------------------------------------------------------------
// The instantiation of FlashInfer's entry point used here
// ------------------------------------------------------------------------------------------------
constexpr int kScaleGranM = 1;
constexpr int kScaleGranN = 128;
constexpr int kScaleGranK = 128;
constexpr bool kScaleMajorK = true;
using DTypeIn = cutlass::float_e4m3_t;
using DTypeOut = cutlass::bfloat16_t;

// Mirror of the kernel type that CutlassFP8GroupwiseScaledGroupGEMMSM120<1,128,128,true,e4m3,bf16>
// builds internally (same template arguments -> same types), for the host-side preflight only.
namespace fi_config {
using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;
using LayoutA = cutlass::layout::RowMajor;
using LayoutB = cutlass::layout::ColumnMajor;
using LayoutD = cutlass::layout::RowMajor;
constexpr int AlignmentA = 128 / cutlass::sizeof_bits<DTypeIn>::value;
constexpr int AlignmentB = 128 / cutlass::sizeof_bits<DTypeIn>::value;
constexpr int AlignmentD = 128 / cutlass::sizeof_bits<DTypeOut>::value;
using TileShape = Shape<_128, _128, _128>;
using ClusterShape = Shape<_1, _1, _1>;
using ScaleConfig = cutlass::detail::Sm120BlockwiseScaleConfig<kScaleGranM, kScaleGranN, kScaleGranK,
                                                               UMMA::Major::K, UMMA::Major::K>;
using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());
using BuilderSchedule = cutlass::gemm::KernelScheduleSm120Blockwise;
using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm120, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, void*, 0, DTypeOut, LayoutD*,
    AlignmentD, cutlass::epilogue::collective::EpilogueScheduleAuto>::CollectiveOp;
using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm120, cutlass::arch::OpClassTensorOp, DTypeIn, cute::tuple<LayoutA*, LayoutSFA*>, AlignmentA,
    DTypeIn, cute::tuple<LayoutB*, LayoutSFB*>, AlignmentB, float, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
        sizeof(typename CollectiveEpilogue::SharedStorage))>,
    BuilderSchedule>::CollectiveOp;
using GemmKernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue, void>;
}  // namespace fi_config

// Groups: rows per group (stacked along M); N and K are shared, as in a MoE layer.
static const std::vector<int> kGroupM = {64, 128, 200};
static const int kN = 256;
static const int kK = 256;
static const uint64_t kSeed = 0x5eed0000ull;

static void print_config() {
  using namespace fi_config;
  std::vector<std::string> shapes;
  for (int m : kGroupM) shapes.push_back(std::to_string(m) + "x" + std::to_string(kN) + "x" + std::to_string(kK));
  repro::emit(repro::event("config")
                  .s("step", kStepId)
                  .s("entry_point", "flashinfer::group_gemm::CutlassFP8GroupwiseScaledGroupGEMMSM120<1,128,128,true>")
                  .s("schedule", repro::type_name<typename CollectiveMainloop::DispatchPolicy::Schedule>())
                  .s("builder_schedule", repro::type_name<BuilderSchedule>())
                  .ints("tile", {size<0>(TileShape{}), size<1>(TileShape{}), size<2>(TileShape{})})
                  .ints("cluster", {size<0>(ClusterShape{}), size<1>(ClusterShape{}), size<2>(ClusterShape{})})
                  .s("problem_shape_index", "int")
                  .null("sf_vector_size")
                  .ints("scale_granularity_mnk", {kScaleGranM, kScaleGranN, kScaleGranK})
                  .s("scale_major", kScaleMajorK ? "K" : "MN")
                  .i("stages", CollectiveMainloop::DispatchPolicy::Stages)
                  .s("element_a", repro::type_name<DTypeIn>())
                  .s("element_b", repro::type_name<DTypeIn>())
                  .s("element_d", repro::type_name<DTypeOut>())
                  .s("element_sf", "float")
                  .s("layout", "TN")
                  .i("groups", static_cast<long long>(kGroupM.size()))
                  .strs("shapes_mnk", shapes)
                  .u("seed", kSeed));
}

static void print_preflight() {
  using namespace fi_config;
  repro::Obj detail;
  detail.i("shared_storage_size_constant", GemmKernel::SharedStorageSize)
      .i("mainloop_shared_storage_bytes", sizeof(typename CollectiveMainloop::SharedStorage))
      .i("epilogue_shared_storage_bytes", sizeof(typename CollectiveEpilogue::SharedStorage))
      .i("max_threads_per_block", GemmKernel::MaxThreadsPerBlock);
  repro::preflight("sm_120", sizeof(typename GemmKernel::SharedStorage), cutlass::arch::sm120_smem_capacity_bytes,
                   detail);
}

// Maps a cutlassGetStatusString() text back to its cutlass::Status value (-1 if unknown).
static int status_from_string(const std::string& s) {
  for (int v = 0; v <= int(cutlass::Status::kInvalid); ++v) {
    if (s == cutlassGetStatusString(static_cast<cutlass::Status>(v))) return v;
  }
  return -1;
}

int main(int argc, char** argv) {
  repro::Args args = repro::parse_args(argc, argv);
  print_config();
  print_preflight();
  if (args.preflight_only) {
    repro::say("--preflight-only: stopping before the first CUDA call\n");
    return 0;
  }

  // ---- host data -------------------------------------------------------------------------------
  const int G = static_cast<int>(kGroupM.size());
  const int sf_n = kN / kScaleGranN, sf_k = kK / kScaleGranK;
  std::vector<int> m_indptr(G + 1, 0);
  for (int g = 0; g < G; ++g) m_indptr[g + 1] = m_indptr[g] + kGroupM[g];
  const int M_total = m_indptr[G];

  repro::Rng rng(kSeed);
  std::vector<uint8_t> hA(size_t(M_total) * kK), hB(size_t(G) * kN * kK);
  std::vector<float> hSFA(size_t(M_total) * sf_k), hSFB(size_t(G) * sf_n * sf_k);
  for (auto& v : hA) v = repro::random_e4m3(rng, -1, 1);
  for (auto& v : hB) v = repro::random_e4m3(rng, -1, 1);
  for (auto& v : hSFA) v = std::ldexp(1.0f, rng.range(-2, 2));
  for (auto& v : hSFB) v = std::ldexp(1.0f, rng.range(-2, 2));

  // ---- device ----------------------------------------------------------------------------------
  int cc_major = 0, cc_minor = 0;
  repro::CudaErr derr;
  if (!repro::device_info(cc_major, cc_minor, derr)) {
    return repro::result("runtime_error", "no usable CUDA device: " + derr.brief());
  }
  repro::emit(repro::event("kernel_image")
                  .obj("probe", repro::kernel_image_probe(cutlass::device_kernel<fi_config::GemmKernel>)));

  repro::CudaGuard cg;
  repro::DeviceBuffer<uint8_t> dA, dB, dIntWs, dFloatWs;
  repro::DeviceBuffer<float> dSFA, dSFB;
  repro::DeviceBuffer<uint16_t> dD;
  repro::DeviceBuffer<int> dIndptr;
  const size_t int_ws_bytes = size_t(1) << 20, float_ws_bytes = size_t(32) << 20;
  cg.ok(dA.upload(hA), "upload A") && cg.ok(dB.upload(hB), "upload B") && cg.ok(dSFA.upload(hSFA), "upload SFA") &&
      cg.ok(dSFB.upload(hSFB), "upload SFB") && cg.ok(dIndptr.upload(m_indptr), "upload m_indptr") &&
      cg.ok(dD.alloc_zeroed(size_t(M_total) * kN), "alloc D") &&
      cg.ok(dIntWs.alloc_zeroed(int_ws_bytes), "alloc int workspace") &&
      cg.ok(dFloatWs.alloc_zeroed(float_ws_bytes), "alloc float workspace");
  if (cg.failed) return repro::result("runtime_error", cg.reason());

  // ---- the FlashInfer call -----------------------------------------------------------------------
  cudaError_t call_err = cudaSuccess;
  std::string exc;
  try {
    call_err = flashinfer::group_gemm::CutlassFP8GroupwiseScaledGroupGEMMSM120<kScaleGranM, kScaleGranN, kScaleGranK,
                                                                                kScaleMajorK, DTypeIn, DTypeOut>(
        dIntWs.get(), int_ws_bytes, dFloatWs.get(), float_ws_bytes, reinterpret_cast<DTypeIn*>(dA.get()),
        reinterpret_cast<DTypeIn*>(dB.get()), dSFA.get(), dSFB.get(), reinterpret_cast<DTypeOut*>(dD.get()),
        dIndptr.get(), M_total, kN, kK, G, /*stream=*/nullptr);
  } catch (const std::exception& e) {
    exc = e.what();
  }
  repro::CudaErr after_call = repro::last_cuda_error();
  repro::CudaErr sync = repro::cuda_err(cudaDeviceSynchronize());
  repro::say("FlashInfer call returned %s%s%s\n", repro::cuda_err(call_err).name.c_str(), exc.empty() ? "" : ", threw: ",
             exc.c_str());

  // Which CUTLASS call failed, from FlashInfer's CUTLASS_CHECK message.
  static const char* kStages[] = {"can_implement", "initialize", "run"};
  int failed_stage = -1, failed_status = -1;
  std::string failed_status_string;
  if (!exc.empty()) {
    for (int s = 0; s < 3; ++s) {
      if (exc.find(std::string("gemm.") + kStages[s] + "(") != std::string::npos) failed_stage = s;
    }
    size_t p = exc.find("failed: ");
    if (p != std::string::npos) {
      failed_status_string = exc.substr(p + 8);
      failed_status = status_from_string(failed_status_string);
    }
  }
  const repro::Obj via = repro::Obj().s("observed_via", "flashinfer CUTLASS_CHECK");
  repro::CudaErr unobserved;
  unobserved.name = "unobserved";
  unobserved.text = "inside the FlashInfer call";

  if (!exc.empty() && failed_stage < 0) {
    // Not a CUTLASS status failure (e.g. workspace AlignedAllocator overflow).
    return repro::result("runtime_error", "FlashInfer threw before the CUTLASS calls: " + exc);
  }
  if (exc.empty() && call_err != cudaSuccess) {
    // FLASHINFER_CUDA_CALL returned early: the argument-preparation kernel failed to launch.
    return repro::result("runtime_error",
                         "FlashInfer returned " + repro::cuda_err(call_err).brief() + " before the CUTLASS calls");
  }
  const int last_stage = exc.empty() ? 2 : failed_stage;
  for (int s = 0; s <= last_stage; ++s) {
    bool failed = (s == failed_stage);
    repro::Obj d = via;
    if (s == 0) {
      repro::status("get_workspace_size", 0, "Success", unobserved, repro::Obj(via).s("note", "called before can_implement"));
    }
    if (failed && s == 1) {
      // CUTLASS clears the CUDA error of a failed cudaFuncSetAttribute; repeat that call to see it.
      repro::CudaErr probe = repro::cuda_err(
          cudaFuncSetAttribute(cutlass::device_kernel<fi_config::GemmKernel>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, fi_config::GemmKernel::SharedStorageSize));
      cudaGetLastError();
      d.s("probe_func_set_attribute", probe.brief());
    }
    if (s == 2) d.s("sync_error", sync.name).s("sync_error_string", sync.text);
    bool last = (s == last_stage);
    repro::status(kStages[s], failed ? failed_status : 0, failed ? failed_status_string : "Success",
                  last ? after_call : unobserved, d);
  }
  if (failed_stage == 0) return repro::result("can_implement_error", "can_implement: " + failed_status_string);
  if (failed_stage == 1) return repro::result("init_error", "initialize: " + failed_status_string);
  if (failed_stage == 2) {
    return repro::result("runtime_error", "run: " + failed_status_string + "; " + after_call.brief());
  }
  if (!sync.ok()) return repro::result("runtime_error", "cudaDeviceSynchronize after run: " + sync.brief());

  // ---- check -------------------------------------------------------------------------------------
  std::vector<uint16_t> hD;
  if (!cg.ok(dD.download(hD), "download D")) return repro::result("runtime_error", cg.reason());
  repro::CheckStats stats;
  for (int g = 0; g < G; ++g) {
    long long before = stats.mismatches;
    for (int m = m_indptr[g]; m < m_indptr[g + 1]; ++m) {
      for (int n = 0; n < kN; ++n) {
        double ref = 0.0, sum_abs = 0.0;
        for (int kb = 0; kb < sf_k; ++kb) {
          double part = 0.0, part_abs = 0.0;
          for (int k = kb * kScaleGranK; k < (kb + 1) * kScaleGranK; ++k) {
            double p = double(repro::e4m3_to_float(hA[size_t(m) * kK + k])) *
                       double(repro::e4m3_to_float(hB[(size_t(g) * kN + n) * kK + k]));
            part += p;
            part_abs += std::fabs(p);
          }
          double scale = double(hSFA[size_t(m) * sf_k + kb]) * double(hSFB[(size_t(g) * sf_n + n / kScaleGranN) * sf_k + kb]);
          ref += scale * part;
          sum_abs += scale * part_abs;
        }
        double got = repro::bf16_to_float(hD[size_t(m) * kN + n]);
        double tol = std::fabs(ref) * 0x1p-7 + sum_abs * 0x1p-12 + 1e-6;
        repro::check_value(stats, got, ref, tol, "group %d (row %d, n=%d)", g, m - m_indptr[g], n);
      }
    }
    repro::say("group %d (%dx%dx%d): %lld mismatches\n", g, kGroupM[g], kN, kK, stats.mismatches - before);
  }
  repro::emit_check(stats, "|d-ref| <= |ref|*2^-7 + sum|terms|*2^-12 + 1e-6");
  if (stats.mismatches) {
    return repro::result("mismatch", std::to_string(stats.mismatches) + " of " + std::to_string(stats.checked) +
                                         " outputs differ from the host reference");
  }
  return repro::result("pass", "all " + std::to_string(stats.checked) + " outputs match the host reference");
}
