// C++ tests of the torch-free CPU kernels (csrc/kernels/flow_step_cpu.h) against a naive per-voxel
// reference: forward, inverse round trip, backward from the saved input and from the output, moments,
// and bitwise equality of the reductions between serial and multi-threaded runs. No torch needed.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "kernels/flow_step_cpu.h"

using mri_anomaly::cpu::LoopGemm;
using mri_anomaly::cpu::Plan;
using mri_anomaly::cpu::SerialFor;

namespace {

int failures = 0;

void expect_close(const char* what, double got, double want, double tol) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    if (failures < 20) std::printf("FAIL %s: got %.12g want %.12g\n", what, got, want);
    ++failures;
  }
}

struct Rng {
  uint64_t state;
  double next() {  // uniform in [-1, 1)
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return double(state >> 11) / double(1ULL << 53) * 2.0 - 1.0;
  }
};

// Splits [begin, end) over 3 threads: the result must not depend on it.
struct ThreadFor {
  template <typename Fn>
  void operator()(int64_t begin, int64_t end, const Fn& fn) const {
    const int64_t parts = 3, len = end - begin;
    std::vector<std::thread> threads;
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t b = begin + len * p / parts, e = begin + len * (p + 1) / parts;
      if (b < e) threads.emplace_back([&fn, b, e] { fn(b, e); });
    }
    for (auto& t : threads) t.join();
  }
};

template <typename T>
void run_case(int64_t N, int64_t C, int64_t V, double tol) {
  Rng rng{uint64_t(N * 1000003 + C * 1009 + V)};
  const int64_t size = N * C * V;
  std::vector<T> x(size), gy(size), ls(C), b(C), w(C * C), winv(C * C, T(0));
  for (auto& v : x) v = T(rng.next());
  for (auto& v : gy) v = T(rng.next());
  for (auto& v : ls) v = T(0.3 * rng.next());
  for (auto& v : b) v = T(0.5 * rng.next());
  // W = lower-unit-triangular L times upper U: invertible, and W^-1 computed exactly by substitution.
  std::vector<double> L(C * C, 0.0), U(C * C, 0.0);
  for (int64_t i = 0; i < C; ++i) {
    for (int64_t j = 0; j < C; ++j) {
      if (i > j) L[i * C + j] = 0.6 / std::sqrt(double(C)) * rng.next();  // keeps W well conditioned
      if (i < j) U[i * C + j] = 0.6 / std::sqrt(double(C)) * rng.next();
    }
    L[i * C + i] = 1.0;
    U[i * C + i] = 1.0 + 0.5 * std::fabs(rng.next());
  }
  std::vector<double> wd(C * C, 0.0), wid(C * C, 0.0);
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = 0; j < C; ++j)
      for (int64_t k = 0; k < C; ++k) wd[i * C + j] += L[i * C + k] * U[k * C + j];
  // Solve W X = I column by column (forward then back substitution).
  for (int64_t col = 0; col < C; ++col) {
    std::vector<double> z(C), s(C);
    for (int64_t i = 0; i < C; ++i) {
      double acc = (i == col) ? 1.0 : 0.0;
      for (int64_t k = 0; k < i; ++k) acc -= L[i * C + k] * z[k];
      z[i] = acc;
    }
    for (int64_t i = C - 1; i >= 0; --i) {
      double acc = z[i];
      for (int64_t k = i + 1; k < C; ++k) acc -= U[i * C + k] * s[k];
      s[i] = acc / U[i * C + i];
    }
    for (int64_t i = 0; i < C; ++i) wid[i * C + col] = s[i];
  }
  for (int64_t i = 0; i < C * C; ++i) {
    w[i] = T(wd[i]);
    winv[i] = T(wid[i]);
  }

  // Naive reference, in double, voxel by voxel.
  std::vector<double> y_ref(size), gx_ref(size), gw_ref(C * C, 0.0), gls_ref(C, 0.0), gb_ref(C, 0.0);
  std::vector<double> sum_ref(C, 0.0), sq_ref(C, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t v = 0; v < V; ++v) {
      std::vector<double> h(C), gh(C, 0.0);
      for (int64_t c = 0; c < C; ++c) {
        const double xv = x[(n * C + c) * V + v];
        h[c] = std::exp(double(ls[c])) * (xv + double(b[c]));
        sum_ref[c] += xv;
        sq_ref[c] += xv * xv;
      }
      for (int64_t o = 0; o < C; ++o) {
        double acc = 0.0;
        for (int64_t c = 0; c < C; ++c) acc += double(w[o * C + c]) * h[c];
        y_ref[(n * C + o) * V + v] = acc;
        const double g = gy[(n * C + o) * V + v];
        for (int64_t c = 0; c < C; ++c) {
          gh[c] += double(w[o * C + c]) * g;
          gw_ref[o * C + c] += g * h[c];
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        const double gx = std::exp(double(ls[c])) * gh[c];
        gx_ref[(n * C + c) * V + v] = gx;
        gls_ref[c] += gh[c] * h[c];
        gb_ref[c] += gx;
      }
    }
  }

  const LoopGemm<T> gemm;
  std::vector<T> y(size), x_back(size);
  mri_anomaly::cpu::flow_step_forward<T>(x.data(), ls.data(), b.data(), w.data(), y.data(), N, C, V, gemm, SerialFor{});
  for (int64_t i = 0; i < size; ++i) expect_close("forward y", y[i], y_ref[i], tol);
  mri_anomaly::cpu::flow_step_inverse<T>(y.data(), ls.data(), b.data(), winv.data(), x_back.data(), N, C, V, gemm,
                                         ThreadFor{});
  for (int64_t i = 0; i < size; ++i) expect_close("inverse round trip", x_back[i], x[i], 10 * tol);

  const Plan plan(N, C, V);
  const int64_t psize = plan.partial_size();
  std::vector<double> partials(plan.chunks * psize), sums(psize), sums_threaded(psize), sums_from_y(psize);
  std::vector<T> gx(size), gx_from_y(size), x_rebuilt(size);
  mri_anomaly::cpu::flow_step_backward_partials<T>(gy.data(), x.data(), ls.data(), b.data(), w.data(), nullptr, false,
                                                   nullptr, gx.data(), partials.data(), N, C, V, gemm, SerialFor{});
  mri_anomaly::cpu::sum_partials(partials.data(), plan.chunks, psize, sums.data(), SerialFor{});
  for (int64_t i = 0; i < size; ++i) expect_close("backward grad_x", gx[i], gx_ref[i], tol);
  for (int64_t i = 0; i < C * C; ++i) expect_close("backward grad_weight", sums[i], gw_ref[i], tol * std::sqrt(double(N * V)));
  for (int64_t c = 0; c < C; ++c) {
    expect_close("backward sum(g_h h)", sums[C * C + c], gls_ref[c], tol * std::sqrt(double(N * V)));
    expect_close("backward grad_bias", sums[C * C + C + c], gb_ref[c], tol * std::sqrt(double(N * V)));
  }

  // Same reductions on 3 threads: bitwise equal (fixed chunking and fixed-order sums).
  mri_anomaly::cpu::flow_step_backward_partials<T>(gy.data(), x.data(), ls.data(), b.data(), w.data(), nullptr, false,
                                                   nullptr, gx.data(), partials.data(), N, C, V, gemm, ThreadFor{});
  mri_anomaly::cpu::sum_partials(partials.data(), plan.chunks, psize, sums_threaded.data(), ThreadFor{});
  for (int64_t i = 0; i < psize; ++i) {
    if (sums_threaded[i] != sums[i]) {
      if (failures < 20) std::printf("FAIL threaded reduction differs at %lld\n", (long long)i);
      ++failures;
    }
  }

  // From the output: rebuilt x and the same gradients.
  mri_anomaly::cpu::flow_step_backward_partials<T>(gy.data(), y.data(), ls.data(), b.data(), w.data(), winv.data(),
                                                   true, x_rebuilt.data(), gx_from_y.data(), partials.data(), N, C, V,
                                                   gemm, ThreadFor{});
  mri_anomaly::cpu::sum_partials(partials.data(), plan.chunks, psize, sums_from_y.data(), SerialFor{});
  for (int64_t i = 0; i < size; ++i) {
    expect_close("from output: x", x_rebuilt[i], x[i], 10 * tol);
    expect_close("from output: grad_x", gx_from_y[i], gx_ref[i], 10 * tol);
  }
  for (int64_t i = 0; i < psize; ++i)
    expect_close("from output: parameter grads", sums_from_y[i], sums[i], 10 * tol * std::sqrt(double(N * V)));

  std::vector<double> mpart(plan.chunks * 2 * C), msum(2 * C);
  mri_anomaly::cpu::channel_moments_partials<T>(x.data(), mpart.data(), N, C, V, ThreadFor{});
  mri_anomaly::cpu::sum_partials(mpart.data(), plan.chunks, 2 * C, msum.data(), SerialFor{});
  for (int64_t c = 0; c < C; ++c) {
    expect_close("moments sum", msum[c], sum_ref[c], 1e-12);
    expect_close("moments sum_sq", msum[C + c], sq_ref[c], 1e-12);
  }
}

}  // namespace

int main() {
  // (N, C, V): tiny, odd, several tiles and chunks, one-voxel samples, wide C.
  // With 2^17 values per tile: (1, 64, 5000) has 3 tiles (the last partial); (2, 256, 3000) has 512-voxel
  // tiles, 4 tiles per chunk and a partial last chunk.
  const int64_t cases[][3] = {{1, 1, 1},     {2, 3, 5},      {2, 4, 15},      {3, 7, 1001}, {1, 5, 4099},
                              {2, 16, 2500}, {1, 64, 300},   {2, 2, 1},       {1, 64, 5000}, {2, 256, 3000}};
  for (const auto& c : cases) {
    run_case<double>(c[0], c[1], c[2], 1e-11);
    run_case<float>(c[0], c[1], c[2], 2e-5);
  }
  if (failures > 0) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all flow-step CPU kernel checks passed\n");
  return 0;
}
