// C++ test of the torch-free CUDA kernels against the CPU kernels (LoopGemm, serial): forward, inverse,
// both backward variants, moments, and bitwise run-to-run determinism. Exits 77 (ctest: skipped) when
// no CUDA device is usable, so it builds everywhere nvcc exists and runs where a GPU does.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "kernels/flow_step_cpu.h"
#include "kernels/flow_step_cuda.h"

namespace {

int failures = 0;

#define CHECK_CUDA(expr)                                                              \
  do {                                                                                \
    cudaError_t err_ = (expr);                                                        \
    if (err_ != cudaSuccess) {                                                        \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(err_), __FILE__, __LINE__); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

void expect_close(const char* what, double got, double want, double tol) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    if (failures < 20) std::printf("FAIL %s: got %.12g want %.12g\n", what, got, want);
    ++failures;
  }
}

template <typename T>
T* to_device(const std::vector<T>& host) {
  T* ptr = nullptr;
  CHECK_CUDA(cudaMalloc(&ptr, std::max<size_t>(1, host.size()) * sizeof(T)));
  CHECK_CUDA(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return ptr;
}

template <typename T>
std::vector<T> to_host(const T* ptr, size_t n) {
  std::vector<T> host(n);
  CHECK_CUDA(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

template <typename T>
void run_case(int64_t N, int64_t C, int64_t V, double tol) {
  const int64_t size = N * C * V;
  std::vector<T> x(size), gy(size), ls(C), b(C), w(C * C, T(0)), winv(C * C, T(0));
  uint64_t s = 12345 + size;
  auto rnd = [&s] {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return double(s >> 11) / double(1ULL << 53) * 2.0 - 1.0;
  };
  for (auto& v : x) v = T(rnd());
  for (auto& v : gy) v = T(rnd());
  for (auto& v : ls) v = T(0.3 * rnd());
  for (auto& v : b) v = T(0.5 * rnd());
  // W = diag(d) + strictly-lower part: W^-1 by forward substitution.
  std::vector<double> wd(C * C, 0.0), wid(C * C, 0.0);
  for (int64_t i = 0; i < C; ++i) {
    for (int64_t j = 0; j < i; ++j) wd[i * C + j] = 0.6 / std::sqrt(double(C)) * rnd();
    wd[i * C + i] = 1.0 + 0.5 * std::fabs(rnd());
  }
  for (int64_t col = 0; col < C; ++col)
    for (int64_t i = 0; i < C; ++i) {
      double acc = (i == col) ? 1.0 : 0.0;
      for (int64_t k = 0; k < i; ++k) acc -= wd[i * C + k] * wid[k * C + col];
      wid[i * C + col] = acc / wd[i * C + i];
    }
  for (int64_t i = 0; i < C * C; ++i) {
    w[i] = T(wd[i]);
    winv[i] = T(wid[i]);
  }

  using mri_anomaly::cpu::LoopGemm;
  using mri_anomaly::cpu::SerialFor;
  const mri_anomaly::cpu::Plan plan(N, C, V);
  std::vector<T> y_cpu(size), gx_cpu(size), xr_cpu(size);
  std::vector<double> part(plan.chunks * plan.partial_size()), sums_cpu(plan.partial_size());
  mri_anomaly::cpu::flow_step_forward<T>(x.data(), ls.data(), b.data(), w.data(), y_cpu.data(), N, C, V,
                                         LoopGemm<T>{}, SerialFor{});
  mri_anomaly::cpu::flow_step_backward_partials<T>(gy.data(), x.data(), ls.data(), b.data(), w.data(), nullptr,
                                                   false, nullptr, gx_cpu.data(), part.data(), N, C, V, LoopGemm<T>{},
                                                   SerialFor{});
  mri_anomaly::cpu::sum_partials(part.data(), plan.chunks, plan.partial_size(), sums_cpu.data(), SerialFor{});

  T *dx = to_device(x), *dgy = to_device(gy), *dls = to_device(ls), *db = to_device(b), *dw = to_device(w),
    *dwinv = to_device(winv);
  T *dy, *dgx, *dxr;
  double *dws, *dsums;
  CHECK_CUDA(cudaMalloc(&dy, size * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&dgx, size * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&dxr, size * sizeof(T)));
  const int64_t ws = std::max(mri_anomaly::cuda::backward_workspace_size(N, C, V),
                              mri_anomaly::cuda::moments_workspace_size(N, C, V));
  CHECK_CUDA(cudaMalloc(&dws, ws * sizeof(double)));
  CHECK_CUDA(cudaMalloc(&dsums, (C * C + 2 * C) * sizeof(double)));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));

  CHECK_CUDA(mri_anomaly::cuda::flow_step_forward<T>(dx, dls, db, dw, dy, N, C, V, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const auto y = to_host(dy, size);
  for (int64_t i = 0; i < size; ++i) expect_close("cuda forward", y[i], y_cpu[i], tol);

  CHECK_CUDA(mri_anomaly::cuda::flow_step_inverse<T>(dy, dls, db, dwinv, dxr, N, C, V, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const auto xr = to_host(dxr, size);
  for (int64_t i = 0; i < size; ++i) expect_close("cuda inverse", xr[i], x[i], 10 * tol);

  CHECK_CUDA(mri_anomaly::cuda::flow_step_backward<T>(dgy, dx, dls, db, dw, nullptr, nullptr, dgx, dws, dsums, N, C,
                                                      V, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const auto gx = to_host(dgx, size);
  const auto sums = to_host(dsums, C * C + 2 * C);
  for (int64_t i = 0; i < size; ++i) expect_close("cuda grad_x", gx[i], gx_cpu[i], tol);
  for (int64_t i = 0; i < C * C + 2 * C; ++i)
    expect_close("cuda parameter grads", sums[i], sums_cpu[i], tol * std::sqrt(double(N * V)));

  CHECK_CUDA(mri_anomaly::cuda::flow_step_backward<T>(dgy, dy, dls, db, dw, dwinv, dxr, dgx, dws, dsums, N, C, V,
                                                      stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const auto sums_from_y = to_host(dsums, C * C + 2 * C);
  const auto x_rebuilt = to_host(dxr, size);
  for (int64_t i = 0; i < size; ++i) expect_close("cuda rebuilt x", x_rebuilt[i], x[i], 10 * tol);
  for (int64_t i = 0; i < C * C + 2 * C; ++i)
    expect_close("cuda grads from output", sums_from_y[i], sums_cpu[i], 10 * tol * std::sqrt(double(N * V)));
  CHECK_CUDA(mri_anomaly::cuda::flow_step_backward<T>(dgy, dy, dls, db, dw, dwinv, dxr, dgx, dws, dsums, N, C, V,
                                                      stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const auto again = to_host(dsums, C * C + 2 * C);
  for (int64_t i = 0; i < C * C + 2 * C; ++i) {
    if (again[i] != sums_from_y[i]) {
      std::printf("FAIL run-to-run difference at %lld\n", (long long)i);
      ++failures;
      break;
    }
  }

  CHECK_CUDA(mri_anomaly::cuda::channel_moments<T>(dx, dws, dsums, N, C, V, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const auto moments = to_host(dsums, 2 * C);
  for (int64_t c = 0; c < C; ++c) {
    double sum = 0, sq = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t v = 0; v < V; ++v) {
        const double val = x[(n * C + c) * V + v];
        sum += val;
        sq += val * val;
      }
    expect_close("cuda moments sum", moments[c], sum, 1e-12);
    expect_close("cuda moments sum_sq", moments[C + c], sq, 1e-12);
  }
  for (void* p : {(void*)dx, (void*)dgy, (void*)dls, (void*)db, (void*)dw, (void*)dwinv, (void*)dy, (void*)dgx,
                  (void*)dxr, (void*)dws, (void*)dsums})
    cudaFree(p);
  cudaStreamDestroy(stream);
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  const int64_t cases[][3] = {{1, 1, 1}, {2, 3, 5}, {3, 7, 1001}, {2, 16, 20000}, {1, 64, 300}, {2, 256, 70}};
  for (const auto& c : cases) {
    run_case<double>(c[0], c[1], c[2], 1e-11);
    run_case<float>(c[0], c[1], c[2], 1e-4);
  }
  if (failures > 0) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all flow-step CUDA kernel checks passed\n");
  return 0;
}
