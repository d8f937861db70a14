// Smallest program of the output protocol: host-side config/preflight records, then one kernel checked.
#include <cstdio>
#include <cstring>

__global__ void write_answer(int* out) { *out = 42; }

int main(int argc, char** argv) {
  std::printf("@@repro {\"event\":\"config\",\"step\":\"hello\",\"tile\":[1,1,1]}\n");
  std::printf("@@repro {\"event\":\"preflight\",\"shared_storage_bytes\":0,\"smem_capacity_bytes\":101376,\"fits\":true}\n");
  std::printf("@@repro {\"event\":\"layout\",\"name\":\"answer\",\"type\":\"int\",\"bytes_hex\":\"2a000000\"}\n");
  if (argc > 1 && std::strcmp(argv[1], "--preflight-only") == 0) return 0;
  int* device = nullptr;
  cudaError_t err = cudaMalloc(&device, sizeof(int));
  if (err == cudaSuccess) {
    write_answer<<<1, 1>>>(device);
    err = cudaDeviceSynchronize();
  }
  std::printf("@@repro {\"event\":\"status\",\"stage\":\"run\",\"status\":\"%s\",\"cuda_error\":\"%s\"}\n",
              err == cudaSuccess ? "kSuccess" : "kErrorInternal", cudaGetErrorName(err));
  if (err != cudaSuccess) return 3;
  int host = 0;
  cudaMemcpy(&host, device, sizeof(int), cudaMemcpyDeviceToHost);
  std::printf("@@repro {\"event\":\"check\",\"max_abs_err\":%d,\"mismatches\":%d,\"checked\":1}\n", host - 42, host != 42);
  std::printf("@@repro {\"event\":\"result\",\"outcome\":\"%s\"}\n", host == 42 ? "pass" : "mismatch");
  return host == 42 ? 0 : 1;
}
