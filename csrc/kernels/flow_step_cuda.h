// Fused actnorm + invertible 1x1(x1) convolution on CUDA: torch-free launchers on raw device pointers.
//
// Layout: contiguous (N, C, V) activations (V = voxels per sample), (C,) and (C, C) row-major parameters,
// all on the device. Every launcher runs on the given stream and returns the launch status.
// Parameter gradients and moments are reduced through per-block float64 partials in a workspace and a
// fixed-order second stage, so results are bitwise reproducible run to run.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace mri_anomaly {
namespace cuda {

// float64 workspace elements `flow_step_backward` and `channel_moments` need.
int64_t backward_workspace_size(int64_t N, int64_t C, int64_t V);
int64_t moments_workspace_size(int64_t N, int64_t C, int64_t V);

// y = W (exp(log_scale) * (x + bias)).
template <typename T>
cudaError_t flow_step_forward(const T* x, const T* log_scale, const T* bias, const T* weight, T* y, int64_t N,
                              int64_t C, int64_t V, cudaStream_t stream);

// x = exp(-log_scale) * (W^-1 y) - bias.
template <typename T>
cudaError_t flow_step_inverse(const T* y, const T* log_scale, const T* bias, const T* weight_inverse, T* x,
                              int64_t N, int64_t C, int64_t V, cudaStream_t stream);

// Backward from the saved input (weight_inverse == nullptr, xy = x) or from the output (xy = y; x is
// rebuilt into x_out). Writes grad_x and sums[C*C + 2C] (float64): grad_weight (row-major C x C), then
// sum(g_h * h) per channel, then grad_bias. The caller adds V * sum(grad_logdet) to the middle block.
template <typename T>
cudaError_t flow_step_backward(const T* grad_y, const T* xy, const T* log_scale, const T* bias, const T* weight,
                               const T* weight_inverse, T* x_out, T* grad_x, double* workspace, double* sums,
                               int64_t N, int64_t C, int64_t V, cudaStream_t stream);

// sums[2C] (float64): per-channel sum, then sum of squares.
template <typename T>
cudaError_t channel_moments(const T* x, double* workspace, double* sums, int64_t N, int64_t C, int64_t V,
                            cudaStream_t stream);

}  // namespace cuda
}  // namespace mri_anomaly
