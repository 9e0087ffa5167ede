// CUDA kernels of the fused flow step (see flow_step_cuda.h). Torch-free: raw pointers + cudaStream_t.
//
// Voxel kernels stage a tile of `tile_v` voxels x C channels in shared memory (coalesced loads along V)
// and let a block of 128 threads compute channel mixes for (channel, voxel) items; W / W^-1 are read
// through the read-only cache (a warp reads one element at a time: a broadcast). The weight gradient
// is a split-K reduction over all N*V voxels in 16x16 output tiles; every block writes its own float64
// partial and a second kernel sums partials in a fixed order (deterministic, no atomics).
#include "kernels/flow_step_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>

namespace mri_anomaly {
namespace cuda {
namespace {

constexpr int kThreads = 128;  // 4 warps; a multiple of 32 (warp reductions need whole warps)
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBlocksPerSample = 256;  // voxel-kernel blocks per sample (fixed: deterministic partials)
constexpr int kWgradTile = 16;            // 16x16 outputs of grad_weight per block
constexpr int kWgradK = 32;               // voxels staged per step
constexpr int64_t kWgradVoxelsPerSplit = 8192;
constexpr int64_t kWgradMaxWorkspace = int64_t(1) << 22;  // float64 elements (32 MiB)
constexpr int64_t kMomentsChunk = 8192;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Shared bytes of a voxel kernel: `arrays` tiles of C x tile_v values, per-channel scales, and for the
// backward the per-warp float64 accumulators.
template <typename T>
size_t voxel_smem_bytes(int64_t C, int tile_v, int arrays, bool warp_acc) {
  size_t bytes = size_t(arrays) * C * tile_v * sizeof(T) + 2 * C * sizeof(T);
  if (warp_acc) bytes += size_t(kWarps) * 2 * C * sizeof(double);
  return bytes;
}

// Largest tile (128, 64 or 32 voxels) whose shared memory fits the default 48 KiB, else 32 voxels with
// the opt-in limit. Returns 0 when even that does not fit (C too large for these kernels).
template <typename T>
int choose_tile(int64_t C, int arrays, bool warp_acc, size_t* bytes_out) {
  for (int tile_v : {128, 64, 32}) {
    const size_t bytes = voxel_smem_bytes<T>(C, tile_v, arrays, warp_acc);
    if (bytes <= 48 * 1024) {
      *bytes_out = bytes;
      return tile_v;
    }
  }
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    return 0;
  }
  const size_t bytes = voxel_smem_bytes<T>(C, 32, arrays, warp_acc);
  if (bytes > size_t(optin)) return 0;
  *bytes_out = bytes;
  return 32;
}

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Shared layout of the voxel kernels: [warp accumulators (double)] [scale C] [inv_scale C] [tiles...].
template <typename T>
struct VoxelSmem {
  double* warp_acc;
  T* scale;
  T* inv_scale;
  T* tile0;
  T* tile1;
  __device__ VoxelSmem(unsigned char* raw, int64_t C, int tile_v, bool with_acc) {
    warp_acc = reinterpret_cast<double*>(raw);
    T* p = reinterpret_cast<T*>(raw + (with_acc ? size_t(kWarps) * 2 * C * sizeof(double) : 0));
    scale = p;
    inv_scale = p + C;
    tile0 = p + 2 * C;
    tile1 = tile0 + C * tile_v;
  }
};

template <typename T>
__device__ void load_scales(const T* __restrict__ log_scale, T* scale, T* inv_scale, int64_t C) {
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const T ls = log_scale[c];
    scale[c] = exp(ls);
    inv_scale[c] = exp(-ls);
  }
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ log_scale, const T* __restrict__ bias,
                               const T* __restrict__ weight, T* __restrict__ y, int64_t C, int64_t V,
                               int64_t tiles_per_sample, int tile_v) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  VoxelSmem<T> sm(smem_raw, C, tile_v, false);
  load_scales(log_scale, sm.scale, sm.inv_scale, C);
  const int64_t sample = int64_t(blockIdx.y) * C * V;
  const int64_t items = C * tile_v;
  for (int64_t tile = blockIdx.x; tile < tiles_per_sample; tile += gridDim.x) {
    const int64_t v0 = tile * tile_v;
    const int64_t tv = min(int64_t(tile_v), V - v0);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
      const int64_t c = i / tile_v, t = i % tile_v;
      sm.tile0[i] = t < tv ? sm.scale[c] * (x[sample + c * V + v0 + t] + __ldg(&bias[c])) : T(0);
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
      const int64_t o = i / tile_v, t = i % tile_v;
      if (t >= tv) continue;
      const T* w_row = weight + o * C;
      T acc = T(0);
      for (int64_t c = 0; c < C; ++c) acc += __ldg(&w_row[c]) * sm.tile0[c * tile_v + t];
      y[sample + o * V + v0 + t] = acc;
    }
  }
}

template <typename T>
__global__ void inverse_kernel(const T* __restrict__ y, const T* __restrict__ log_scale, const T* __restrict__ bias,
                               const T* __restrict__ weight_inverse, T* __restrict__ x, int64_t C, int64_t V,
                               int64_t tiles_per_sample, int tile_v) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  VoxelSmem<T> sm(smem_raw, C, tile_v, false);
  load_scales(log_scale, sm.scale, sm.inv_scale, C);
  const int64_t sample = int64_t(blockIdx.y) * C * V;
  const int64_t items = C * tile_v;
  for (int64_t tile = blockIdx.x; tile < tiles_per_sample; tile += gridDim.x) {
    const int64_t v0 = tile * tile_v;
    const int64_t tv = min(int64_t(tile_v), V - v0);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
      const int64_t c = i / tile_v, t = i % tile_v;
      sm.tile0[i] = t < tv ? y[sample + c * V + v0 + t] : T(0);
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
      const int64_t c = i / tile_v, t = i % tile_v;
      if (t >= tv) continue;
      const T* w_row = weight_inverse + c * C;
      T acc = T(0);
      for (int64_t o = 0; o < C; ++o) acc += __ldg(&w_row[o]) * sm.tile0[o * tile_v + t];
      x[sample + c * V + v0 + t] = sm.inv_scale[c] * acc - __ldg(&bias[c]);
    }
  }
}

// Per voxel: (rebuild x,) g_h = W^T g_y, grad_x = scale * g_h; per-block float64 partials of
// sum(g_h * h) and sum(grad_x) per channel -> partials[(n * gridDim.x + blockIdx.x) * 2C + ...].
template <typename T>
__global__ void backward_voxel_kernel(const T* __restrict__ grad_y, const T* __restrict__ xy,
                                      const T* __restrict__ log_scale, const T* __restrict__ bias,
                                      const T* __restrict__ weight, const T* __restrict__ weight_inverse,
                                      T* __restrict__ x_out, T* __restrict__ grad_x, double* __restrict__ partials,
                                      int64_t C, int64_t V, int64_t tiles_per_sample, int tile_v) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  VoxelSmem<T> sm(smem_raw, C, tile_v, true);
  load_scales(log_scale, sm.scale, sm.inv_scale, C);
  for (int64_t i = threadIdx.x; i < kWarps * 2 * C; i += blockDim.x) sm.warp_acc[i] = 0.0;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t sample = int64_t(blockIdx.y) * C * V;
  const int64_t items = C * tile_v;  // a multiple of 32: each warp works on one channel row at a time
  T* buf = sm.tile0;                 // y, then g_y
  T* h = sm.tile1;
  for (int64_t tile = blockIdx.x; tile < tiles_per_sample; tile += gridDim.x) {
    const int64_t v0 = tile * tile_v;
    const int64_t tv = min(int64_t(tile_v), V - v0);
    __syncthreads();
    if (weight_inverse != nullptr) {
      for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
        const int64_t c = i / tile_v, t = i % tile_v;
        buf[i] = t < tv ? xy[sample + c * V + v0 + t] : T(0);
      }
      __syncthreads();
      for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
        const int64_t c = i / tile_v, t = i % tile_v;
        const T* w_row = weight_inverse + c * C;
        T acc = T(0);
        for (int64_t o = 0; o < C; ++o) acc += __ldg(&w_row[o]) * buf[o * tile_v + t];
        h[i] = acc;
        if (t < tv) x_out[sample + c * V + v0 + t] = sm.inv_scale[c] * acc - __ldg(&bias[c]);
      }
      __syncthreads();
    } else {
      for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
        const int64_t c = i / tile_v, t = i % tile_v;
        h[i] = t < tv ? sm.scale[c] * (xy[sample + c * V + v0 + t] + __ldg(&bias[c])) : T(0);
      }
    }
    for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
      const int64_t c = i / tile_v, t = i % tile_v;
      buf[i] = t < tv ? grad_y[sample + c * V + v0 + t] : T(0);
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
      const int64_t c = i / tile_v, t = i % tile_v;
      T g_h = T(0);
      for (int64_t o = 0; o < C; ++o) g_h += __ldg(&weight[o * C + c]) * buf[o * tile_v + t];
      const T g_x = sm.scale[c] * g_h;  // zero beyond the tile end (g_y staged as 0 there)
      if (t < tv) grad_x[sample + c * V + v0 + t] = g_x;
      const T sum_ls = warp_sum(g_h * h[i]);
      const T sum_b = warp_sum(g_x);
      if (lane == 0) {
        sm.warp_acc[warp * 2 * C + c] += double(sum_ls);
        sm.warp_acc[warp * 2 * C + C + c] += double(sum_b);
      }
    }
  }
  __syncthreads();
  double* out = partials + (int64_t(blockIdx.y) * gridDim.x + blockIdx.x) * 2 * C;
  for (int64_t j = threadIdx.x; j < 2 * C; j += blockDim.x) {
    double s = 0.0;
    for (int w = 0; w < kWarps; ++w) s += sm.warp_acc[w * 2 * C + j];
    out[j] = s;
  }
}

// grad_weight[o][c] = sum over all voxels of g_y[o] * h[c], h = scale * (x + bias), for one 16x16 tile
// of (o, c) and one split of the N*V voxels -> partials[split][o][c].
template <typename T>
__global__ void wgrad_kernel(const T* __restrict__ grad_y, const T* __restrict__ x, const T* __restrict__ log_scale,
                             const T* __restrict__ bias, double* __restrict__ partials, int64_t C, int64_t V,
                             int64_t total_voxels, int64_t voxels_per_split) {
  __shared__ T gy_s[kWgradTile][kWgradK + 1];
  __shared__ T h_s[kWgradTile][kWgradK + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;  // tx -> c, ty -> o
  const int tid = ty * kWgradTile + tx;
  const int64_t o0 = int64_t(blockIdx.y) * kWgradTile, c0 = int64_t(blockIdx.x) * kWgradTile;
  const int64_t k_begin = int64_t(blockIdx.z) * voxels_per_split;
  const int64_t k_end = min(total_voxels, k_begin + voxels_per_split);
  double acc = 0.0;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kWgradK) {
    // 256 threads stage 16 x 32 values of each operand: two per thread.
    for (int e = tid; e < kWgradTile * kWgradK; e += kWgradTile * kWgradTile) {
      const int row = e / kWgradK, kk = e % kWgradK;
      const int64_t g = k0 + kk;
      T gy = T(0), hv = T(0);
      if (g < k_end) {
        const int64_t n = g / V, v = g % V;
        if (o0 + row < C) gy = grad_y[(n * C + o0 + row) * V + v];
        if (c0 + row < C) {
          const int64_t c = c0 + row;
          hv = exp(__ldg(&log_scale[c])) * (x[(n * C + c) * V + v] + __ldg(&bias[c]));
        }
      }
      gy_s[row][kk] = gy;
      h_s[row][kk] = hv;
    }
    __syncthreads();
    T part = T(0);
#pragma unroll 8
    for (int kk = 0; kk < kWgradK; ++kk) part += gy_s[ty][kk] * h_s[tx][kk];
    acc += double(part);
    __syncthreads();
  }
  const int64_t o = o0 + ty, c = c0 + tx;
  if (o < C && c < C) partials[int64_t(blockIdx.z) * C * C + o * C + c] = acc;
}

// out[i] = sum_s partials[s * stride + i] for i < count, in order of s (deterministic).
__global__ void sum_partials_kernel(const double* __restrict__ partials, int64_t parts, int64_t stride,
                                    int64_t count, double* __restrict__ out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  double s = 0.0;
  for (int64_t p = 0; p < parts; ++p) s += partials[p * stride + i];
  out[i] = s;
}

// One block per (chunk, n * C + c): float64 sum and sum of squares of one chunk of one channel row.
template <typename T>
__global__ void moments_kernel(const T* __restrict__ x, double* __restrict__ partials, int64_t C, int64_t V,
                               int64_t chunks) {
  __shared__ double s_sum[kThreads];
  __shared__ double s_sq[kThreads];
  const int64_t row = blockIdx.y;  // n * C + c
  const int64_t v0 = int64_t(blockIdx.x) * kMomentsChunk, v1 = min(V, v0 + kMomentsChunk);
  double s = 0.0, s2 = 0.0;
  for (int64_t v = v0 + threadIdx.x; v < v1; v += blockDim.x) {
    const double val = double(x[row * V + v]);
    s += val;
    s2 += val * val;
  }
  s_sum[threadIdx.x] = s;
  s_sq[threadIdx.x] = s2;
  __syncthreads();
  for (int step = kThreads / 2; step > 0; step >>= 1) {
    if (threadIdx.x < step) {
      s_sum[threadIdx.x] += s_sum[threadIdx.x + step];
      s_sq[threadIdx.x] += s_sq[threadIdx.x + step];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    // Layout [n][chunk][2C]: per (n, chunk) a slot with sums then squares, so the final reduction is
    // sum_partials over N * chunks slots.
    const int64_t n = row / C, c = row % C;
    double* slot = partials + (n * chunks + blockIdx.x) * 2 * C;
    slot[c] = s_sum[0];
    slot[C + c] = s_sq[0];
  }
}

struct WgradPlan {
  int64_t splits, voxels_per_split;
  WgradPlan(int64_t N, int64_t C, int64_t V) {
    const int64_t total = N * V;
    const int64_t max_splits = std::max<int64_t>(1, kWgradMaxWorkspace / std::max<int64_t>(C * C, 1));
    splits = std::max<int64_t>(1, std::min(ceil_div(total, kWgradVoxelsPerSplit), max_splits));
    voxels_per_split = std::max<int64_t>(1, ceil_div(total, splits));
    voxels_per_split = ceil_div(voxels_per_split, kWgradK) * kWgradK;
    splits = std::max<int64_t>(1, ceil_div(total, voxels_per_split));
  }
};

int64_t voxel_blocks(int64_t V, int tile_v) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(V, tile_v), kMaxBlocksPerSample));
}

}  // namespace

int64_t backward_workspace_size(int64_t N, int64_t C, int64_t V) {
  const WgradPlan plan(N, C, V);
  // Voxel partials: N * kMaxBlocksPerSample slots at most.
  return plan.splits * C * C + N * kMaxBlocksPerSample * 2 * C;
}

int64_t moments_workspace_size(int64_t N, int64_t C, int64_t V) {
  return N * std::max<int64_t>(1, ceil_div(V, kMomentsChunk)) * 2 * C;
}

template <typename T>
cudaError_t flow_step_forward(const T* x, const T* log_scale, const T* bias, const T* weight, T* y, int64_t N,
                              int64_t C, int64_t V, cudaStream_t stream) {
  if (N == 0 || C == 0 || V == 0) return cudaSuccess;
  size_t bytes = 0;
  const int tile_v = choose_tile<T>(C, 1, false, &bytes);
  if (tile_v == 0) return cudaErrorInvalidConfiguration;
  cudaError_t err = allow_smem(forward_kernel<T>, bytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned(voxel_blocks(V, tile_v)), unsigned(N));
  forward_kernel<T><<<grid, kThreads, bytes, stream>>>(x, log_scale, bias, weight, y, C, V, ceil_div(V, tile_v),
                                                       tile_v);
  return cudaGetLastError();
}

template <typename T>
cudaError_t flow_step_inverse(const T* y, const T* log_scale, const T* bias, const T* weight_inverse, T* x,
                              int64_t N, int64_t C, int64_t V, cudaStream_t stream) {
  if (N == 0 || C == 0 || V == 0) return cudaSuccess;
  size_t bytes = 0;
  const int tile_v = choose_tile<T>(C, 1, false, &bytes);
  if (tile_v == 0) return cudaErrorInvalidConfiguration;
  cudaError_t err = allow_smem(inverse_kernel<T>, bytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned(voxel_blocks(V, tile_v)), unsigned(N));
  inverse_kernel<T><<<grid, kThreads, bytes, stream>>>(y, log_scale, bias, weight_inverse, x, C, V,
                                                       ceil_div(V, tile_v), tile_v);
  return cudaGetLastError();
}

template <typename T>
cudaError_t flow_step_backward(const T* grad_y, const T* xy, const T* log_scale, const T* bias, const T* weight,
                               const T* weight_inverse, T* x_out, T* grad_x, double* workspace, double* sums,
                               int64_t N, int64_t C, int64_t V, cudaStream_t stream) {
  const int64_t total = C * C + 2 * C;
  if (N == 0 || C == 0 || V == 0) return cudaMemsetAsync(sums, 0, total * sizeof(double), stream);
  size_t bytes = 0;
  const int tile_v = choose_tile<T>(C, 2, true, &bytes);
  if (tile_v == 0) return cudaErrorInvalidConfiguration;
  cudaError_t err = allow_smem(backward_voxel_kernel<T>, bytes);
  if (err != cudaSuccess) return err;
  const WgradPlan plan(N, C, V);
  double* wgrad_partials = workspace;
  double* voxel_partials = workspace + plan.splits * C * C;
  const int64_t blocks = voxel_blocks(V, tile_v);
  backward_voxel_kernel<T><<<dim3(unsigned(blocks), unsigned(N)), kThreads, bytes, stream>>>(
      grad_y, xy, log_scale, bias, weight, weight_inverse, x_out, grad_x, voxel_partials, C, V, ceil_div(V, tile_v),
      tile_v);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  // The weight gradient reads the input: the saved x, or the x just rebuilt (same stream: ordered).
  const T* x = weight_inverse != nullptr ? x_out : xy;
  const dim3 wgrid(unsigned(ceil_div(C, kWgradTile)), unsigned(ceil_div(C, kWgradTile)), unsigned(plan.splits));
  wgrad_kernel<T><<<wgrid, dim3(kWgradTile, kWgradTile), 0, stream>>>(grad_y, x, log_scale, bias, wgrad_partials, C,
                                                                      V, N * V, plan.voxels_per_split);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  sum_partials_kernel<<<unsigned(ceil_div(C * C, 256)), 256, 0, stream>>>(wgrad_partials, plan.splits, C * C, C * C,
                                                                          sums);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  sum_partials_kernel<<<unsigned(ceil_div(2 * C, 256)), 256, 0, stream>>>(voxel_partials, N * blocks, 2 * C, 2 * C,
                                                                          sums + C * C);
  return cudaGetLastError();
}

template <typename T>
cudaError_t channel_moments(const T* x, double* workspace, double* sums, int64_t N, int64_t C, int64_t V,
                            cudaStream_t stream) {
  if (N == 0 || C == 0 || V == 0) return cudaMemsetAsync(sums, 0, 2 * C * sizeof(double), stream);
  if (N * C > 65535) return cudaErrorInvalidConfiguration;  // grid.y limit
  const int64_t chunks = std::max<int64_t>(1, ceil_div(V, kMomentsChunk));
  moments_kernel<T><<<dim3(unsigned(chunks), unsigned(N * C)), kThreads, 0, stream>>>(x, workspace, C, V, chunks);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  sum_partials_kernel<<<unsigned(ceil_div(2 * C, 256)), 256, 0, stream>>>(workspace, N * chunks, 2 * C, 2 * C, sums);
  return cudaGetLastError();
}

#define MRI_ANOMALY_INSTANTIATE(T)                                                                                 \
  template cudaError_t flow_step_forward<T>(const T*, const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, \
                                            cudaStream_t);                                                         \
  template cudaError_t flow_step_inverse<T>(const T*, const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, \
                                            cudaStream_t);                                                         \
  template cudaError_t flow_step_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, T*, T*,   \
                                             double*, double*, int64_t, int64_t, int64_t, cudaStream_t);           \
  template cudaError_t channel_moments<T>(const T*, double*, double*, int64_t, int64_t, int64_t, cudaStream_t);

MRI_ANOMALY_INSTANTIATE(float)
MRI_ANOMALY_INSTANTIATE(double)

}  // namespace cuda
}  // namespace mri_anomaly
