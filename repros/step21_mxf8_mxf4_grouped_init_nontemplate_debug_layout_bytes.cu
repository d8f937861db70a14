// step21_mxf8_mxf4_grouped_init_nontemplate_debug_layout_bytes.cu - like step14 (no template; passes
// on SM121), plus the same debug dumps and trivially-copyable asserts as step20, so the template and
// non-template variants' inputs can be compared byte for byte (`invoke layout.diff step20 step21`).
//
// A: mx_float8_t<e4m3>  (M x K, row-major), ue8m0 scale per 32 consecutive K elements
// B: mx_float4_t<e2m1>  (K x N column-major = N x K row-major, two values per byte, low nibble
//    first), ue8m0 scale per 32 consecutive K elements
// D: bf16 (M x N, row-major), no C operand (beta = 0), fp32 accumulation.
// Builder schedule: KernelPtrArrayTmaWarpSpecializedPingpong (generic ptr-array tag; the builder
//   resolves it to its SM120 block-scaled ptr-array schedule, printed in the config record).
// Problem shape: GroupProblemShape<Shape<int64_t,int64_t,int64_t>>, no host copy of the shapes.
// Scale-factor layouts: cutlass::detail::Sm1xxBlockScaledConfig<SFVectorSize>, where SFVectorSize is
// a local constexpr of the non-template run_grouped() (32 here). TN only; K % 128 == 0 (FP4 B).
//
// Prints, before any CUDA call: config (resolved schedule, tile, stages, SF vector size, problem-
// shape index type) and preflight (sizeof(GemmKernel::SharedStorage) vs the SM120 capacity,
// 101,376 bytes). Then the status of can_implement, get_workspace_size, initialize and run, each
// with the cudaGetLastError() that follows, and a check against a host reference computed from the
// dequantized MX inputs.
//
// Numerics: A values +-(1+m/8)*2^e, e in [-1,1]; B all e2m1 values; scales 2^[-1,1]. Every partial
// sum is a multiple of 2^-7 below 2^16, exact in fp32; tolerance |ref|*2^-7 (bf16 output) +
// sum|terms|*2^-12 (room for tensor-core accumulation below fp32 precision) + 1e-6.
//
// Run: ./step01 [--preflight-only]

#include <array>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/sm100_blockscaled_layout.hpp"
#include "cutlass/device_kernel.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "repro.h"

using namespace cute;

static const char* kStepId = "step21";

// Groups (M, N, K): tiny, mixed; K % 128 == 0 for the FP4 operand.
static const std::vector<std::array<int64_t, 3>> kShapes = {{128, 128, 128}, {64, 256, 256}, {200, 128, 384}};
static const uint64_t kSeed = 0x5eed0001ull;


int run_grouped(const repro::Args& args) {
  constexpr int SFVectorSize = 32;  // upstream-test style: no template parameter
  // ---- kernel configuration ------------------------------------------------------------------
  using ShapeIndex = int64_t;
  using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<ShapeIndex, ShapeIndex, ShapeIndex>>;

  using ElementAPair = cutlass::mx_float8_t<cutlass::float_e4m3_t>;
  using LayoutA = cutlass::layout::RowMajor;
  constexpr int AlignmentA = 16;  // 16 bytes of e4m3
  using ElementBPair = cutlass::mx_float4_t<cutlass::float_e2m1_t>;
  using LayoutB = cutlass::layout::ColumnMajor;
  constexpr int kBitsB = cutlass::sizeof_bits<typename ElementBPair::DataType>::value;  // 4: e2m1, 8: e4m3
  constexpr int AlignmentB = kBitsB == 4 ? 128 : 16;  // 64 bytes for the e2m1 TMA format, else 16 bytes
  using ElementD = cutlass::bfloat16_t;
  using LayoutD = cutlass::layout::RowMajor;
  constexpr int AlignmentD = 8;
  using ElementAccumulator = float;

  using TileShape = Shape<_128, _128, _128>;
  using ClusterShape = Shape<_1, _1, _1>;
  using BuilderSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm120, cutlass::arch::OpClassBlockScaledTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAccumulator, ElementAccumulator, void, LayoutD*,
      AlignmentD, ElementD, LayoutD*, AlignmentD, cutlass::epilogue::collective::EpilogueScheduleAuto>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm120, cutlass::arch::OpClassBlockScaledTensorOp, ElementAPair, LayoutA*, AlignmentA,
      ElementBPair, LayoutB*, AlignmentB, ElementAccumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      BuilderSchedule>::CollectiveOp;

  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

  using ElementA = typename CollectiveMainloop::ElementA;
  using ElementB = typename CollectiveMainloop::ElementB;
  using ElementSF = typename CollectiveMainloop::ElementSF;
  using StrideA = typename GemmKernel::InternalStrideA;
  using StrideB = typename GemmKernel::InternalStrideB;
  using StrideD = typename GemmKernel::InternalStrideD;
  using LayoutSFA = typename CollectiveMainloop::InternalLayoutSFA;
  using LayoutSFB = typename CollectiveMainloop::InternalLayoutSFB;
  using Sm1xxBlkScaledConfig = cutlass::detail::Sm1xxBlockScaledConfig<SFVectorSize>;
  using UnderlyingShape = typename ProblemShape::UnderlyingProblemShape;

  // ---- config + preflight (host only) --------------------------------------------------------
  std::vector<std::string> shape_strs;
  for (auto& s : kShapes) {
    shape_strs.push_back(std::to_string(s[0]) + "x" + std::to_string(s[1]) + "x" + std::to_string(s[2]));
  }
  repro::emit(repro::event("config")
                  .s("step", kStepId)
                  .s("schedule", repro::type_name<typename CollectiveMainloop::DispatchPolicy::Schedule>())
                  .s("builder_schedule", repro::type_name<BuilderSchedule>())
                  .s("epilogue_schedule", repro::type_name<typename CollectiveEpilogue::DispatchPolicy>())
                  .ints("tile", {size<0>(TileShape{}), size<1>(TileShape{}), size<2>(TileShape{})})
                  .ints("cluster", {size<0>(ClusterShape{}), size<1>(ClusterShape{}), size<2>(ClusterShape{})})
                  .s("problem_shape_index", repro::index_type_name<ShapeIndex>())
                  .i("sf_vector_size", SFVectorSize)
                  .i("kernel_sf_vector_size", CollectiveMainloop::SFVecSize)
                  .i("stages", CollectiveMainloop::DispatchPolicy::Stages)
                  .s("element_a", repro::type_name<ElementAPair>())
                  .s("element_b", repro::type_name<ElementBPair>())
                  .s("element_sf", repro::type_name<ElementSF>())
                  .s("element_d", repro::type_name<ElementD>())
                  .s("layout", "TN")
                  .b("host_problem_shapes", false)
                  .i("groups", static_cast<long long>(kShapes.size()))
                  .strs("shapes_mnk", shape_strs)
                  .u("seed", kSeed));
  repro::preflight("sm_120", sizeof(typename GemmKernel::SharedStorage), cutlass::arch::sm120_smem_capacity_bytes,
                   repro::Obj()
                       .i("shared_storage_size_constant", GemmKernel::SharedStorageSize)
                       .i("mainloop_shared_storage_bytes", sizeof(typename CollectiveMainloop::SharedStorage))
                       .i("epilogue_shared_storage_bytes", sizeof(typename CollectiveEpilogue::SharedStorage))
                       .i("max_threads_per_block", GemmKernel::MaxThreadsPerBlock)
                       .strs("applies_to", {"sm_120", "sm_121"}));
  // ---- layout dumps (host only, before any CUDA call) ----------------------------------------
  // The per-group values initialize() consumes, byte by byte: compare the template variant (step20)
  // with the non-template one (step21) with `invoke layout.diff step20 step21`.
  static_assert(std::is_trivially_copyable_v<LayoutSFA>, "LayoutSFA is copied to the device as bytes");
  static_assert(std::is_trivially_copyable_v<LayoutSFB>, "LayoutSFB is copied to the device as bytes");
  static_assert(std::is_trivially_copyable_v<StrideA>, "StrideA is copied to the device as bytes");
  static_assert(std::is_trivially_copyable_v<StrideB>, "StrideB is copied to the device as bytes");
  static_assert(std::is_trivially_copyable_v<StrideD>, "StrideD is copied to the device as bytes");
  static_assert(std::is_trivially_copyable_v<UnderlyingShape>, "problem shapes are copied to the device as bytes");
  auto printed = [](const auto& v) { std::ostringstream os; os << v; return os.str(); };
  for (size_t g = 0; g < kShapes.size(); ++g) {
    auto [M, N, K] = kShapes[g];
    auto problem = make_shape(static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), 1);
    const std::string at = "[" + std::to_string(g) + "]";
    LayoutSFA sfa = Sm1xxBlkScaledConfig::tile_atom_to_shape_SFA(problem);
    LayoutSFB sfb = Sm1xxBlkScaledConfig::tile_atom_to_shape_SFB(problem);
    StrideA sa = cutlass::make_cute_packed_stride(StrideA{}, {static_cast<int>(M), static_cast<int>(K), 1});
    StrideB sb = cutlass::make_cute_packed_stride(StrideB{}, {static_cast<int>(N), static_cast<int>(K), 1});
    StrideD sd = cutlass::make_cute_packed_stride(StrideD{}, {static_cast<int>(M), static_cast<int>(N), 1});
    UnderlyingShape shape = make_shape(ShapeIndex(M), ShapeIndex(N), ShapeIndex(K));
    repro::layout("layout_sfa" + at, sfa, printed(sfa), size(filter_zeros(sfa)));
    repro::layout("layout_sfb" + at, sfb, printed(sfb), size(filter_zeros(sfb)));
    repro::layout("stride_a" + at, sa, printed(sa));
    repro::layout("stride_b" + at, sb, printed(sb));
    repro::layout("stride_d" + at, sd, printed(sd));
    repro::layout("problem_shape" + at, shape, printed(shape), size(shape));
  }
  if (args.preflight_only) {
    repro::say("--preflight-only: stopping before the first CUDA call\n");
    return 0;
  }

  // ---- host data -----------------------------------------------------------------------------
  const int G = static_cast<int>(kShapes.size());
  repro::Rng rng(kSeed);
  std::vector<size_t> offA(G), offB(G), offD(G), offSFA(G), offSFB(G);
  std::vector<LayoutSFA> hLayoutSFA;
  std::vector<LayoutSFB> hLayoutSFB;
  size_t totA = 0, totB = 0, totD = 0, totSFA = 0, totSFB = 0;
  for (int g = 0; g < G; ++g) {
    auto [M, N, K] = kShapes[g];
    auto problem = make_shape(static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), 1);
    hLayoutSFA.push_back(Sm1xxBlkScaledConfig::tile_atom_to_shape_SFA(problem));
    hLayoutSFB.push_back(Sm1xxBlkScaledConfig::tile_atom_to_shape_SFB(problem));
    offA[g] = totA;     totA = repro::round_up(totA + size_t(M * K), 256);          // bytes
    offB[g] = totB;     totB = repro::round_up(totB + size_t(N * K * kBitsB / 8), 256);  // bytes
    offD[g] = totD;     totD = repro::round_up(totD + size_t(M * N), 128);          // bf16 elements
    offSFA[g] = totSFA; totSFA = repro::round_up(totSFA + size(filter_zeros(hLayoutSFA[g])), 256);
    offSFB[g] = totSFB; totSFB = repro::round_up(totSFB + size(filter_zeros(hLayoutSFB[g])), 256);
  }
  std::vector<uint8_t> hA(totA, 0), hB(totB, 0), hSFA(totSFA, 127), hSFB(totSFB, 127);
  for (int g = 0; g < G; ++g) {
    auto [M, N, K] = kShapes[g];
    for (int64_t k = 0; k < M * K; ++k) hA[offA[g] + k] = repro::random_e4m3(rng, -1, 1);
    for (int64_t k = 0; k < N * K * kBitsB / 8; ++k)
      hB[offB[g] + k] = kBitsB == 4 ? uint8_t(repro::random_e2m1(rng) | (repro::random_e2m1(rng) << 4))
                                    : repro::random_e4m3(rng, -1, 1);
    for (size_t k = 0; k < size_t(size(filter_zeros(hLayoutSFA[g]))); ++k) hSFA[offSFA[g] + k] = repro::ue8m0_from_exp(rng.range(-1, 1));
    for (size_t k = 0; k < size_t(size(filter_zeros(hLayoutSFB[g]))); ++k) hSFB[offSFB[g] + k] = repro::ue8m0_from_exp(rng.range(-1, 1));
  }

  // ---- device --------------------------------------------------------------------------------
  int cc_major = 0, cc_minor = 0;
  repro::CudaErr derr;
  if (!repro::device_info(cc_major, cc_minor, derr)) {
    return repro::result("runtime_error", "no usable CUDA device: " + derr.brief());
  }
  repro::emit(repro::event("kernel_image").obj("probe", repro::kernel_image_probe(cutlass::device_kernel<GemmKernel>)));

  repro::CudaGuard cg;
  repro::DeviceBuffer<uint8_t> dA, dB, dSFA, dSFB;
  repro::DeviceBuffer<uint16_t> dD;
  cg.ok(dA.upload(hA), "upload A") && cg.ok(dB.upload(hB), "upload B") && cg.ok(dSFA.upload(hSFA), "upload SFA") &&
      cg.ok(dSFB.upload(hSFB), "upload SFB") && cg.ok(dD.alloc_zeroed(totD), "alloc D");
  if (cg.failed) return repro::result("runtime_error", cg.reason());

  std::vector<UnderlyingShape> hShapes;
  std::vector<const ElementA*> hPtrA;
  std::vector<const ElementB*> hPtrB;
  std::vector<const ElementSF*> hPtrSFA, hPtrSFB;
  std::vector<ElementD*> hPtrD;
  std::vector<StrideA> hStrideA;
  std::vector<StrideB> hStrideB;
  std::vector<StrideD> hStrideD;
  for (int g = 0; g < G; ++g) {
    auto [M, N, K] = kShapes[g];
    hShapes.push_back(make_shape(ShapeIndex(M), ShapeIndex(N), ShapeIndex(K)));
    hPtrA.push_back(reinterpret_cast<const ElementA*>(dA.get() + offA[g]));
    hPtrB.push_back(reinterpret_cast<const ElementB*>(dB.get() + offB[g]));
    hPtrSFA.push_back(reinterpret_cast<const ElementSF*>(dSFA.get() + offSFA[g]));
    hPtrSFB.push_back(reinterpret_cast<const ElementSF*>(dSFB.get() + offSFB[g]));
    hPtrD.push_back(reinterpret_cast<ElementD*>(dD.get() + offD[g]));
    hStrideA.push_back(cutlass::make_cute_packed_stride(StrideA{}, {static_cast<int>(M), static_cast<int>(K), 1}));
    hStrideB.push_back(cutlass::make_cute_packed_stride(StrideB{}, {static_cast<int>(N), static_cast<int>(K), 1}));
    hStrideD.push_back(cutlass::make_cute_packed_stride(StrideD{}, {static_cast<int>(M), static_cast<int>(N), 1}));
  }
  repro::DeviceBuffer<UnderlyingShape> dShapes;
  repro::DeviceBuffer<const ElementA*> dPtrA;
  repro::DeviceBuffer<const ElementB*> dPtrB;
  repro::DeviceBuffer<const ElementSF*> dPtrSFA, dPtrSFB;
  repro::DeviceBuffer<ElementD*> dPtrD;
  repro::DeviceBuffer<StrideA> dStrideA;
  repro::DeviceBuffer<StrideB> dStrideB;
  repro::DeviceBuffer<StrideD> dStrideD;
  repro::DeviceBuffer<LayoutSFA> dLayoutSFA;
  repro::DeviceBuffer<LayoutSFB> dLayoutSFB;
  cg.ok(dShapes.upload(hShapes), "upload problem shapes") && cg.ok(dPtrA.upload(hPtrA), "upload ptr A") &&
      cg.ok(dPtrB.upload(hPtrB), "upload ptr B") && cg.ok(dPtrSFA.upload(hPtrSFA), "upload ptr SFA") &&
      cg.ok(dPtrSFB.upload(hPtrSFB), "upload ptr SFB") && cg.ok(dPtrD.upload(hPtrD), "upload ptr D") &&
      cg.ok(dStrideA.upload(hStrideA), "upload stride A") && cg.ok(dStrideB.upload(hStrideB), "upload stride B") &&
      cg.ok(dStrideD.upload(hStrideD), "upload stride D") && cg.ok(dLayoutSFA.upload(hLayoutSFA), "upload layout SFA") &&
      cg.ok(dLayoutSFB.upload(hLayoutSFB), "upload layout SFB");
  if (cg.failed) return repro::result("runtime_error", cg.reason());

  cutlass::KernelHardwareInfo hw_info;
  hw_info.device_id = 0;
  hw_info.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(hw_info.device_id);

  typename Gemm::Arguments arguments{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {G, dShapes.get(), nullptr},
      {dPtrA.get(), dStrideA.get(), dPtrB.get(), dStrideB.get(), dPtrSFA.get(), dLayoutSFA.get(), dPtrSFB.get(),
       dLayoutSFB.get()},
      {{}, nullptr, nullptr, dPtrD.get(), dStrideD.get()},
      hw_info};
  arguments.epilogue.thread.alpha = 1.0f;
  arguments.epilogue.thread.beta = 0.0f;

  // ---- CUTLASS stages ------------------------------------------------------------------------
  Gemm gemm;
  cutlass::Status st = gemm.can_implement(arguments);
  repro::status("can_implement", int(st), cutlassGetStatusString(st), repro::last_cuda_error());
  if (st != cutlass::Status::kSuccess) {
    return repro::result("can_implement_error", std::string("can_implement: ") + cutlassGetStatusString(st));
  }

  size_t workspace_bytes = Gemm::get_workspace_size(arguments);
  repro::status("get_workspace_size", int(cutlass::Status::kSuccess), "Success", repro::last_cuda_error(),
                repro::Obj().u("workspace_bytes", workspace_bytes));
  repro::DeviceBuffer<uint8_t> workspace;
  if (!cg.ok(workspace.alloc(workspace_bytes), "alloc workspace")) return repro::result("runtime_error", cg.reason());

  st = gemm.initialize(arguments, workspace.get());
  repro::CudaErr after_init = repro::last_cuda_error();
  repro::Obj init_detail;
  if (st != cutlass::Status::kSuccess) {
    // initialize() = GemmKernel::initialize_workspace + params + cudaFuncSetAttribute(max dynamic
    // smem); CUTLASS clears the CUDA error of the last one. Repeat the two fallible parts.
    cutlass::Status ws = GemmKernel::initialize_workspace(arguments, workspace.get());
    repro::CudaErr after_ws = repro::last_cuda_error();
    repro::CudaErr probe = repro::cuda_err(cudaFuncSetAttribute(
        cutlass::device_kernel<GemmKernel>, cudaFuncAttributeMaxDynamicSharedMemorySize, GemmKernel::SharedStorageSize));
    cudaGetLastError();
    init_detail.s("probe_initialize_workspace", repro::cutlass_status_name(int(ws)))
        .s("probe_initialize_workspace_cuda_error", after_ws.brief())
        .s("probe_func_set_attribute", probe.brief())
        .i("requested_dynamic_smem_bytes", GemmKernel::SharedStorageSize);
  }
  repro::status("initialize", int(st), cutlassGetStatusString(st), after_init, init_detail);
  if (st != cutlass::Status::kSuccess) {
    return repro::result("init_error", std::string("initialize: ") + cutlassGetStatusString(st));
  }

  st = gemm.run();
  repro::CudaErr after_run = repro::last_cuda_error();
  repro::CudaErr sync = repro::cuda_err(cudaDeviceSynchronize());
  repro::status("run", int(st), cutlassGetStatusString(st), after_run,
                repro::Obj().s("sync_error", sync.name).s("sync_error_string", sync.text));
  if (st != cutlass::Status::kSuccess) {
    return repro::result("runtime_error", std::string("run: ") + cutlassGetStatusString(st) + "; " + after_run.brief());
  }
  if (!sync.ok()) return repro::result("runtime_error", "cudaDeviceSynchronize after run: " + sync.brief());

  // ---- check against the dequantized MX inputs ----------------------------------------------
  std::vector<uint16_t> hD;
  if (!cg.ok(dD.download(hD), "download D")) return repro::result("runtime_error", cg.reason());
  repro::CheckStats stats;
  for (int g = 0; g < G; ++g) {
    auto [M, N, K] = kShapes[g];
    // Dequantize: value * 2^scale for every element, scale looked up through the SF layouts.
    std::vector<double> a(size_t(M * K)), b(size_t(N * K));
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k)
        a[m * K + k] = double(repro::e4m3_to_float(hA[offA[g] + m * K + k])) *
                       double(repro::ue8m0_to_float(hSFA[offSFA[g] + hLayoutSFA[g](int(m), int(k), 0)]));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        // e2m1: two values per byte, element k in the low nibble when k is even.
        double v = kBitsB == 4 ? repro::e2m1_to_float(hB[offB[g] + (n * K + k) / 2] >> (4 * (k & 1)))
                               : repro::e4m3_to_float(hB[offB[g] + n * K + k]);
        b[n * K + k] = v * double(repro::ue8m0_to_float(hSFB[offSFB[g] + hLayoutSFB[g](int(n), int(k), 0)]));
      }
    long long before = stats.mismatches;
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) {
        double ref = 0.0, sum_abs = 0.0;
        for (int64_t k = 0; k < K; ++k) {
          double p = a[m * K + k] * b[n * K + k];
          ref += p;
          sum_abs += std::fabs(p);
        }
        double got = repro::bf16_to_float(hD[offD[g] + m * N + n]);
        double tol = std::fabs(ref) * 0x1p-7 + sum_abs * 0x1p-12 + 1e-6;
        repro::check_value(stats, got, ref, tol, "group %d (m=%d, n=%d)", g, int(m), int(n));
      }
    }
    repro::say("group %d (%lldx%lldx%lld): %lld mismatches\n", g, (long long)M, (long long)N, (long long)K,
               stats.mismatches - before);
  }
  repro::emit_check(stats, "|d-ref| <= |ref|*2^-7 + sum|terms|*2^-12 + 1e-6");
  if (stats.mismatches) {
    return repro::result("mismatch", std::to_string(stats.mismatches) + " of " + std::to_string(stats.checked) +
                                         " outputs differ from the host reference");
  }
  return repro::result("pass", "all " + std::to_string(stats.checked) + " outputs match the host reference");
}

int main(int argc, char** argv) {
  repro::Args args = repro::parse_args(argc, argv);
  return run_grouped(args);
}
