// Fused actnorm + invertible 1x1(x1) convolution on the CPU: torch-free kernels on raw pointers.
//
// Layout: x, y, grads are contiguous (N, C, V) (V = voxels per sample, spatial dims flattened).
// Per voxel: h = exp(log_scale) * (x + bias); y = W h.
// The work is cut into chunks of whole voxel tiles of one sample. Each chunk is independent; the
// caller runs chunks through `pfor(begin, end, fn)` (at::parallel_for in the ATen glue, a plain loop
// in the C++ tests). Parameter gradients and moments are written as per-chunk float64 partials and
// summed in chunk order afterwards, so results do not depend on the number of threads.
// The channel mixing of each tile is a small GEMM through the `Gemm` functor (column-major BLAS
// convention): BLAS in the extension, `LoopGemm` here.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace mri_anomaly {
namespace cpu {

// C = op(A) op(B) + beta C, column-major (BLAS convention), alpha = 1.
template <typename T>
struct LoopGemm {
  void operator()(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
                  const T* b, int64_t ldb, T beta, T* c, int64_t ldc) const {
    for (int64_t j = 0; j < n; ++j) {
      T* c_col = c + j * ldc;
      if (beta == T(0)) {
        for (int64_t i = 0; i < m; ++i) c_col[i] = T(0);
      } else if (beta != T(1)) {
        for (int64_t i = 0; i < m; ++i) c_col[i] *= beta;
      }
      if (!trans_a) {
        // Axpy form: the inner loop runs along a contiguous column and vectorises.
        for (int64_t l = 0; l < k; ++l) {
          const T b_lj = trans_b ? b[j + l * ldb] : b[l + j * ldb];
          const T* a_col = a + l * lda;
          for (int64_t i = 0; i < m; ++i) c_col[i] += a_col[i] * b_lj;
        }
      } else {
        // Dot form: op(A)[i, l] = a[l + i * lda].
        for (int64_t i = 0; i < m; ++i) {
          const T* a_col = a + i * lda;
          T acc = T(0);
          if (!trans_b) {
            const T* b_col = b + j * ldb;
#pragma omp simd reduction(+ : acc)
            for (int64_t l = 0; l < k; ++l) acc += a_col[l] * b_col[l];
          } else {
            for (int64_t l = 0; l < k; ++l) acc += a_col[l] * b[j + l * ldb];
          }
          c_col[i] += acc;
        }
      }
    }
  }
};

// Voxel tiles hold about kTileValues values (C x voxels), within [kMinTileVoxels, kMaxTileVoxels] voxels.
// 2^17 values per tile (512 KiB in fp32) by measurement: single-thread backward at (2, 16, 32^3) took
// 2.0-2.2 ms with 2^15, 1.65 ms with 2^17, 2.7+ ms with 2^19 (MKL's per-call cost vs cache size).
constexpr int64_t kTileValues = int64_t(1) << 17;
constexpr int64_t kMinTileVoxels = 256;
constexpr int64_t kMaxTileVoxels = 32768;

// The forward and inverse of inputs of at most kFoldedMaxSampleValues values per sample (C * V) with at least
// kFoldedMinVoxels voxels per sample are computed by the ATen glue as one folded batched GEMM
// (y = W diag(exp(log_scale)) x + W (exp(log_scale) * bias)) instead of these kernels. Measured on 2 cores
// (torch 2.13, MKL; N = 4, forward, tiled time / folded time): 1.02-1.52 at 4096-32768 voxels for C = 4-32
// and 1.03-1.15 for C = 64-128 up to 2^21 values; 1.06-1.13 at 1200 voxels for C = 16-128 but 0.86-0.95
// for C = 4-8; 0.72-0.96 at 120-480 voxels (the tiled kernel's lower call overhead); 0.87-0.99 above
// 4M values. The backward always runs these kernels (faster than a folded backward at every config shape).
// The bound is per sample (2^21 values at the measured N = 4), not per batch: a sample's path, and so its
// rounding, must not depend on the samples it is batched with (scores are batch-invariant, tests/test_score.py).
constexpr int64_t kFoldedMaxSampleValues = int64_t(1) << 19;
constexpr int64_t kFoldedMinVoxels = 1024;

// How the (N, C, V) data is cut: tiles of `tile` voxels (the GEMM size), chunks of
// `tiles_per_chunk` tiles of one sample (the unit of parallel work and of partial sums).
struct Plan {
  int64_t N, C, V, tile, tiles_per_sample, tiles_per_chunk, chunks_per_sample, chunks;

  Plan(int64_t n, int64_t c, int64_t v) : N(n), C(c), V(v) {
    tile = std::max(kMinTileVoxels, std::min(kMaxTileVoxels, kTileValues / std::max<int64_t>(c, 1)));
    tile = std::min(tile, std::max<int64_t>(v, 1));
    tiles_per_sample = (v + tile - 1) / tile;
    // Keep the (C*C + 2C) float64 partial of a chunk small next to the chunk's data (>= 8C voxels).
    tiles_per_chunk = std::max<int64_t>(1, (8 * c + tile - 1) / tile);
    tiles_per_chunk = std::min(tiles_per_chunk, std::max<int64_t>(tiles_per_sample, 1));
    chunks_per_sample = (tiles_per_sample + tiles_per_chunk - 1) / tiles_per_chunk;
    chunks = n * chunks_per_sample;
  }
  // Sample and voxel range [v_begin, v_end) of a chunk.
  void chunk_range(int64_t chunk, int64_t* n, int64_t* v_begin, int64_t* v_end) const {
    *n = chunk / chunks_per_sample;
    const int64_t first_tile = (chunk % chunks_per_sample) * tiles_per_chunk;
    *v_begin = first_tile * tile;
    *v_end = std::min(V, (first_tile + tiles_per_chunk) * tile);
  }
  int64_t partial_size() const { return C * C + 2 * C; }
};

template <typename T>
inline std::vector<T> exp_of(const T* log_scale, int64_t c, T sign) {
  std::vector<T> out(c);
  for (int64_t i = 0; i < c; ++i) out[i] = std::exp(sign * log_scale[i]);
  return out;
}

// y = W (exp(log_scale) * (x + bias)).
template <typename T, typename Gemm, typename ParallelFor>
void flow_step_forward(const T* x, const T* log_scale, const T* bias, const T* weight, T* y, int64_t N, int64_t C,
                       int64_t V, const Gemm& gemm, const ParallelFor& pfor) {
  const Plan plan(N, C, V);
  const std::vector<T> scale = exp_of(log_scale, C, T(1));
  pfor(0, plan.chunks, [&](int64_t begin, int64_t end) {
    std::vector<T> h(C * plan.tile);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      int64_t n, v0, v1;
      plan.chunk_range(chunk, &n, &v0, &v1);
      for (int64_t t0 = v0; t0 < v1; t0 += plan.tile) {
        const int64_t tv = std::min(plan.tile, v1 - t0);
        const T* xs = x + n * C * V + t0;
        for (int64_t c = 0; c < C; ++c) {
          const T s = scale[c], b = bias[c];
          const T* xc = xs + c * V;
          T* hc = h.data() + c * tv;
          for (int64_t t = 0; t < tv; ++t) hc[t] = s * (xc[t] + b);
        }
        gemm(false, false, tv, C, C, h.data(), tv, weight, C, T(0), y + n * C * V + t0, V);
      }
    }
  });
}

// x = exp(-log_scale) * (W^-1 y) - bias.
template <typename T, typename Gemm, typename ParallelFor>
void flow_step_inverse(const T* y, const T* log_scale, const T* bias, const T* weight_inverse, T* x, int64_t N,
                       int64_t C, int64_t V, const Gemm& gemm, const ParallelFor& pfor) {
  const Plan plan(N, C, V);
  const std::vector<T> inv_scale = exp_of(log_scale, C, T(-1));
  pfor(0, plan.chunks, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      int64_t n, v0, v1;
      plan.chunk_range(chunk, &n, &v0, &v1);
      for (int64_t t0 = v0; t0 < v1; t0 += plan.tile) {
        const int64_t tv = std::min(plan.tile, v1 - t0);
        T* xs = x + n * C * V + t0;
        gemm(false, false, tv, C, C, y + n * C * V + t0, V, weight_inverse, C, T(0), xs, V);
        for (int64_t c = 0; c < C; ++c) {
          const T s = inv_scale[c], b = bias[c];
          T* xc = xs + c * V;
          for (int64_t t = 0; t < tv; ++t) xc[t] = s * xc[t] - b;
        }
      }
    }
  });
}

// Sums the per-chunk partials [chunks, size] in chunk order into out[size] (deterministic).
template <typename ParallelFor>
void sum_partials(const double* partials, int64_t chunks, int64_t size, double* out, const ParallelFor& pfor) {
  pfor(0, size, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const double* p = partials + chunk * size;
      for (int64_t i = begin; i < end; ++i) out[i] += p[i];
    }
  });
}

// Backward of flow_step. With `from_output`, `xy` is y and x is rebuilt (written to x_out);
// otherwise `xy` is the saved x. Writes grad_x and, into partials [plan.chunks, C*C + 2C] (float64),
// per chunk: grad_weight (C*C, row-major), then sum(g_h * h) (C), then grad_bias (C).
// The logdet term of grad_log_scale (V * sum(grad_logdet)) is added by the caller.
template <typename T, typename Gemm, typename ParallelFor>
void flow_step_backward_partials(const T* grad_y, const T* xy, const T* log_scale, const T* bias, const T* weight,
                                 const T* weight_inverse, bool from_output, T* x_out, T* grad_x, double* partials,
                                 int64_t N, int64_t C, int64_t V, const Gemm& gemm, const ParallelFor& pfor) {
  const Plan plan(N, C, V);
  const std::vector<T> scale = exp_of(log_scale, C, T(1));
  const std::vector<T> inv_scale = exp_of(log_scale, C, T(-1));
  const int64_t psize = plan.partial_size();
  pfor(0, plan.chunks, [&](int64_t begin, int64_t end) {
    std::vector<T> h(C * plan.tile), grad_h(C * plan.tile), grad_w(C * C);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      int64_t n, v0, v1;
      plan.chunk_range(chunk, &n, &v0, &v1);
      double* part = partials + chunk * psize;
      for (int64_t i = 0; i < psize; ++i) part[i] = 0.0;
      for (int64_t t0 = v0; t0 < v1; t0 += plan.tile) {
        const int64_t tv = std::min(plan.tile, v1 - t0);
        const int64_t offset = n * C * V + t0;
        const T* gy = grad_y + offset;
        if (from_output) {
          // h = W^-1 y, then x = h / scale - bias.
          gemm(false, false, tv, C, C, xy + offset, V, weight_inverse, C, T(0), h.data(), tv);
          for (int64_t c = 0; c < C; ++c) {
            const T s = inv_scale[c], b = bias[c];
            const T* hc = h.data() + c * tv;
            T* xc = x_out + offset + c * V;
            for (int64_t t = 0; t < tv; ++t) xc[t] = s * hc[t] - b;
          }
        } else {
          for (int64_t c = 0; c < C; ++c) {
            const T s = scale[c], b = bias[c];
            const T* xc = xy + offset + c * V;
            T* hc = h.data() + c * tv;
            for (int64_t t = 0; t < tv; ++t) hc[t] = s * (xc[t] + b);
          }
        }
        // g_h = W^T g_y;  grad_W (row-major) = g_y h^T.
        gemm(false, true, tv, C, C, gy, V, weight, C, T(0), grad_h.data(), tv);
        gemm(true, false, C, C, tv, h.data(), tv, gy, V, T(0), grad_w.data(), C);
        for (int64_t i = 0; i < C * C; ++i) part[i] += double(grad_w[i]);
        for (int64_t c = 0; c < C; ++c) {
          const T s = scale[c];
          const T* ghc = grad_h.data() + c * tv;
          const T* hc = h.data() + c * tv;
          T* gxc = grad_x + offset + c * V;
          T acc_ls = T(0), acc_b = T(0);
#pragma omp simd reduction(+ : acc_ls, acc_b)
          for (int64_t t = 0; t < tv; ++t) {
            const T gx = s * ghc[t];
            gxc[t] = gx;
            acc_ls += ghc[t] * hc[t];
            acc_b += gx;
          }
          part[C * C + c] += double(acc_ls);
          part[C * C + C + c] += double(acc_b);
        }
      }
    }
  });
}

// Per-chunk float64 partials [plan.chunks, 2C]: sum (C) then sum of squares (C).
template <typename T, typename ParallelFor>
void channel_moments_partials(const T* x, double* partials, int64_t N, int64_t C, int64_t V,
                              const ParallelFor& pfor) {
  const Plan plan(N, C, V);
  pfor(0, plan.chunks, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      int64_t n, v0, v1;
      plan.chunk_range(chunk, &n, &v0, &v1);
      double* part = partials + chunk * 2 * C;
      for (int64_t c = 0; c < C; ++c) {
        const T* xc = x + (n * C + c) * V;
        double s = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s, s2)
        for (int64_t t = v0; t < v1; ++t) {
          const double v = double(xc[t]);
          s += v;
          s2 += v * v;
        }
        part[c] = s;
        part[C + c] = s2;
      }
    }
  });
}

// Runs fn(begin, end) once over the whole range: the serial ParallelFor.
struct SerialFor {
  template <typename Fn>
  void operator()(int64_t begin, int64_t end, const Fn& fn) const {
    if (begin < end) fn(begin, end);
  }
};

}  // namespace cpu
}  // namespace mri_anomaly
