// sm90_control.cu - control for the SM12x chain: an SM90 FP8 grouped GEMM that is expected to
// pass on Hopper (H100/H200).
//
// CUTLASS 3.x ptr-array grouped GEMM, e4m3 (A, row-major M x K) x e4m3 (B, column-major K x N)
// -> bf16 (D, row-major M x N), fp32 accumulation, KernelPtrArrayTmaWarpSpecializedCooperative
// (the non-fast-accumulation FP8 schedule), GroupProblemShape<Shape<int,int,int>>. Each group is
// compared with a host reference computed in double precision.
//
// Numerics: inputs are e4m3 values +-(1+m/8)*2^e with e in [-1,1] (or 0), so every product is a
// multiple of 2^-8 below 2^4 and the exact sum of K <= 512 products is representable in fp32. The
// Hopper FP8 tensor-core instruction itself accumulates with less than fp32 precision (CUTLASS's
// non-fast-accum schedule promotes into fp32 registers every few k-blocks), and D is rounded to bf16
// (<= 2^-8 relative). Tolerance: |ref|*2^-7 + sum|a*b|*2^-12 + 1e-6; the check record reports how
// close the worst element came (max_err_over_tol). A wrong operand, stride or group mapping
// produces errors of the order of |ref| and is caught.
//
// Build (as the gpurepro engine does):
//   nvcc -std=c++17 -O2 --expt-relaxed-constexpr --expt-extended-lambda -arch=sm_90a -I common \
//        -I $FI/include -I $FI/3rdparty/cutlass/include -I $FI/3rdparty/cutlass/tools/util/include \
//        -o sm90_control sm90_control.cu -L$CUDA_HOME/lib -L$CUDA_HOME/lib64 -lcudart
// Run: ./sm90_control [--preflight-only]

#include <array>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
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

static const char* kStepId = "sm90_control";

// ------------------------------------------------------------------------------------------------
// Kernel configuration
// ------------------------------------------------------------------------------------------------
using ShapeIndex = int;
using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<ShapeIndex, ShapeIndex, ShapeIndex>>;

using ElementA = cutlass::float_e4m3_t;
using LayoutA = cutlass::layout::RowMajor;
constexpr int AlignmentA = 16;  // elements: 16 bytes for TMA
using ElementB = cutlass::float_e4m3_t;
using LayoutB = cutlass::layout::ColumnMajor;
constexpr int AlignmentB = 16;
using ElementC = void;  // no source operand (beta = 0)
using ElementD = cutlass::bfloat16_t;
using LayoutD = cutlass::layout::RowMajor;
constexpr int AlignmentD = 8;  // 16 bytes of bf16
using ElementAccumulator = float;
using ElementCompute = float;

using TileShape = Shape<_128, _128, _128>;
using ClusterShape = Shape<_1, _1, _1>;
using BuilderSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;

using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, ElementAccumulator, ElementCompute,
    ElementC, LayoutD*, AlignmentD, ElementD, LayoutD*, AlignmentD, EpilogueSchedule>::CollectiveOp;

using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA*, AlignmentA, ElementB,
    LayoutB*, AlignmentB, ElementAccumulator, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
        sizeof(typename CollectiveEpilogue::SharedStorage))>,
    BuilderSchedule>::CollectiveOp;

using GemmKernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

using StrideA = typename GemmKernel::InternalStrideA;
using StrideB = typename GemmKernel::InternalStrideB;
using StrideD = typename GemmKernel::InternalStrideD;
using UnderlyingShape = typename ProblemShape::UnderlyingProblemShape;

constexpr int kSmemCapacity = cutlass::gemm::collective::detail::sm90_smem_capacity_bytes;

// Groups (M, N, K): small, mixed, with a partial M tile and N narrower than a tile.
static const std::vector<std::array<int, 3>> kShapes = {
    {128, 128, 128}, {64, 256, 256}, {200, 128, 384}, {256, 64, 128}};
static const uint64_t kSeed = 0x5eed0090ull;

static void print_config() {
  std::vector<std::string> shapes;
  for (auto& s : kShapes) shapes.push_back(std::to_string(s[0]) + "x" + std::to_string(s[1]) + "x" + std::to_string(s[2]));
  repro::emit(repro::event("config")
                  .s("step", kStepId)
                  .s("schedule", repro::type_name<typename CollectiveMainloop::DispatchPolicy::Schedule>())
                  .s("builder_schedule", repro::type_name<BuilderSchedule>())
                  .s("epilogue_schedule", repro::type_name<EpilogueSchedule>())
                  .ints("tile", {size<0>(TileShape{}), size<1>(TileShape{}), size<2>(TileShape{})})
                  .ints("cluster", {size<0>(ClusterShape{}), size<1>(ClusterShape{}), size<2>(ClusterShape{})})
                  .s("problem_shape_index", repro::index_type_name<ShapeIndex>())
                  .null("sf_vector_size")
                  .i("stages", CollectiveMainloop::DispatchPolicy::Stages)
                  .s("element_a", repro::type_name<ElementA>())
                  .s("element_b", repro::type_name<ElementB>())
                  .s("element_d", repro::type_name<ElementD>())
                  .s("layout", "TN")
                  .i("groups", static_cast<long long>(kShapes.size()))
                  .strs("shapes_mnk", shapes)
                  .u("seed", kSeed));
  repro::say("%s: SM90 FP8 grouped GEMM, %zu groups, schedule %s, %d stages\n", kStepId, kShapes.size(),
             repro::type_name<typename CollectiveMainloop::DispatchPolicy::Schedule>().c_str(),
             int(CollectiveMainloop::DispatchPolicy::Stages));
}

static void print_preflight() {
  repro::Obj detail;
  detail.i("shared_storage_size_constant", GemmKernel::SharedStorageSize)
      .i("mainloop_shared_storage_bytes", sizeof(typename CollectiveMainloop::SharedStorage))
      .i("epilogue_shared_storage_bytes", sizeof(typename CollectiveEpilogue::SharedStorage))
      .i("max_threads_per_block", GemmKernel::MaxThreadsPerBlock);
  repro::preflight("sm_90", sizeof(typename GemmKernel::SharedStorage), kSmemCapacity, detail);
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
  const int G = static_cast<int>(kShapes.size());
  repro::Rng rng(kSeed);
  std::vector<size_t> offA(G), offB(G), offD(G);
  size_t totA = 0, totB = 0, totD = 0;
  for (int g = 0; g < G; ++g) {
    auto [M, N, K] = kShapes[g];
    offA[g] = totA; totA = repro::round_up(totA + size_t(M) * K, 256);
    offB[g] = totB; totB = repro::round_up(totB + size_t(N) * K, 256);
    offD[g] = totD; totD = repro::round_up(totD + size_t(M) * N, 128);
  }
  std::vector<uint8_t> hA(totA, 0), hB(totB, 0);
  for (int g = 0; g < G; ++g) {
    auto [M, N, K] = kShapes[g];
    for (size_t k = 0; k < size_t(M) * K; ++k) hA[offA[g] + k] = repro::random_e4m3(rng, -1, 1);
    for (size_t k = 0; k < size_t(N) * K; ++k) hB[offB[g] + k] = repro::random_e4m3(rng, -1, 1);
  }

  // ---- device ----------------------------------------------------------------------------------
  int cc_major = 0, cc_minor = 0;
  repro::CudaErr derr;
  if (!repro::device_info(cc_major, cc_minor, derr)) {
    return repro::result("runtime_error", "no usable CUDA device: " + derr.brief());
  }
  repro::emit(repro::event("kernel_image").obj("probe", repro::kernel_image_probe(cutlass::device_kernel<GemmKernel>)));

  repro::CudaGuard cg;
  repro::DeviceBuffer<uint8_t> dA, dB;
  repro::DeviceBuffer<uint16_t> dD;
  repro::DeviceBuffer<UnderlyingShape> dShapes;
  repro::DeviceBuffer<const ElementA*> dPtrA;
  repro::DeviceBuffer<const ElementB*> dPtrB;
  repro::DeviceBuffer<ElementD*> dPtrD;
  repro::DeviceBuffer<StrideA> dStrideA;
  repro::DeviceBuffer<StrideB> dStrideB;
  repro::DeviceBuffer<StrideD> dStrideD;

  cg.ok(dA.upload(hA), "upload A") && cg.ok(dB.upload(hB), "upload B") && cg.ok(dD.alloc_zeroed(totD), "alloc D");
  if (cg.failed) return repro::result("runtime_error", cg.reason());

  std::vector<UnderlyingShape> hShapes;
  std::vector<const ElementA*> hPtrA;
  std::vector<const ElementB*> hPtrB;
  std::vector<ElementD*> hPtrD;
  std::vector<StrideA> hStrideA;
  std::vector<StrideB> hStrideB;
  std::vector<StrideD> hStrideD;
  for (int g = 0; g < G; ++g) {
    auto [M, N, K] = kShapes[g];
    hShapes.push_back(make_shape(M, N, K));
    hPtrA.push_back(reinterpret_cast<const ElementA*>(dA.get() + offA[g]));
    hPtrB.push_back(reinterpret_cast<const ElementB*>(dB.get() + offB[g]));
    hPtrD.push_back(reinterpret_cast<ElementD*>(dD.get() + offD[g]));
    hStrideA.push_back(cutlass::make_cute_packed_stride(StrideA{}, {M, K, 1}));
    hStrideB.push_back(cutlass::make_cute_packed_stride(StrideB{}, {N, K, 1}));
    hStrideD.push_back(cutlass::make_cute_packed_stride(StrideD{}, {M, N, 1}));
  }
  cg.ok(dShapes.upload(hShapes), "upload problem shapes") && cg.ok(dPtrA.upload(hPtrA), "upload ptr A") &&
      cg.ok(dPtrB.upload(hPtrB), "upload ptr B") && cg.ok(dPtrD.upload(hPtrD), "upload ptr D") &&
      cg.ok(dStrideA.upload(hStrideA), "upload stride A") && cg.ok(dStrideB.upload(hStrideB), "upload stride B") &&
      cg.ok(dStrideD.upload(hStrideD), "upload stride D");
  if (cg.failed) return repro::result("runtime_error", cg.reason());

  cutlass::KernelHardwareInfo hw_info;
  hw_info.device_id = 0;
  hw_info.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(hw_info.device_id);

  typename Gemm::Arguments arguments{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {G, dShapes.get(), hShapes.data()},
      {dPtrA.get(), dStrideA.get(), dPtrB.get(), dStrideB.get()},
      {{}, nullptr, nullptr, dPtrD.get(), dStrideD.get()},
      hw_info};
  arguments.epilogue.thread.alpha = 1.0f;
  arguments.epilogue.thread.beta = 0.0f;

  // ---- CUTLASS stages ----------------------------------------------------------------------------
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
    // CUTLASS clears the CUDA error of a failed cudaFuncSetAttribute; repeat that call to see it.
    repro::CudaErr probe = repro::cuda_err(cudaFuncSetAttribute(
        cutlass::device_kernel<GemmKernel>, cudaFuncAttributeMaxDynamicSharedMemorySize, GemmKernel::SharedStorageSize));
    cudaGetLastError();
    init_detail.s("probe_func_set_attribute", probe.brief());
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

  // ---- check -------------------------------------------------------------------------------------
  std::vector<uint16_t> hD;
  if (!cg.ok(dD.download(hD), "download D")) return repro::result("runtime_error", cg.reason());

  repro::CheckStats stats;
  for (int g = 0; g < G; ++g) {
    auto [M, N, K] = kShapes[g];
    std::vector<float> a(size_t(M) * K), b(size_t(N) * K);
    for (size_t k = 0; k < a.size(); ++k) a[k] = repro::e4m3_to_float(hA[offA[g] + k]);
    for (size_t k = 0; k < b.size(); ++k) b[k] = repro::e4m3_to_float(hB[offB[g] + k]);
    long long before = stats.mismatches;
    for (int m = 0; m < M; ++m) {
      for (int n = 0; n < N; ++n) {
        double ref = 0.0, sum_abs = 0.0;
        for (int k = 0; k < K; ++k) {
          double p = double(a[size_t(m) * K + k]) * double(b[size_t(n) * K + k]);
          ref += p;
          sum_abs += std::fabs(p);
        }
        double got = repro::bf16_to_float(hD[offD[g] + size_t(m) * N + n]);
        double tol = std::fabs(ref) * 0x1p-7 + sum_abs * 0x1p-12 + 1e-6;
        repro::check_value(stats, got, ref, tol, "group %d (m=%d, n=%d)", g, m, n);
      }
    }
    repro::say("group %d (%dx%dx%d): %lld mismatches\n", g, M, N, K, stats.mismatches - before);
  }
  repro::emit_check(stats, "|d-ref| <= |ref|*2^-7 + sum|a*b|*2^-12 + 1e-6");
  if (stats.mismatches) {
    return repro::result("mismatch", std::to_string(stats.mismatches) + " of " + std::to_string(stats.checked) +
                                         " outputs differ from the host reference");
  }
  return repro::result("pass", "all " + std::to_string(stats.checked) + " outputs match the host reference");
}
