// CUDA registrations of the flow-step ops: argument checks, device guard, current stream, workspace,
// then the torch-free launchers of csrc/kernels/flow_step_cuda.cu. Built only with WITH_CUDA (a CUDA
// build of torch and nvcc); a CPU-only build compiles this file to nothing.
#ifdef WITH_CUDA

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/flow_step_cuda.h"
#include "torch/flow_step_checks.h"

namespace mri_anomaly {
namespace {

void check_launch(cudaError_t err, const char* op, int64_t C) {
  TORCH_CHECK_VALUE(err != cudaErrorInvalidConfiguration, op, ": ", C,
                    " channels need more shared memory than this GPU has; use the CPU or fewer channels");
  TORCH_CHECK(err == cudaSuccess, op, " (CUDA): ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> flow_step_cuda(const at::Tensor& x_, const at::Tensor& log_scale_,
                                                  const at::Tensor& bias_, const at::Tensor& weight_,
                                                  const at::Tensor& weight_logabsdet_) {
  checks::check_forward(x_, log_scale_, bias_, weight_, weight_logabsdet_);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), log_scale = log_scale_.contiguous(), bias = bias_.contiguous(),
                   weight = weight_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), V = checks::voxels(x);
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "flow_step_cuda", [&] {
    check_launch(cuda::flow_step_forward<scalar_t>(x.const_data_ptr<scalar_t>(), log_scale.const_data_ptr<scalar_t>(),
                                                   bias.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                                   y.mutable_data_ptr<scalar_t>(), N, C, V, stream),
                 "flow_step", C);
  });
  return {y, checks::logdet_of(log_scale, weight_logabsdet_, N, V)};
}

at::Tensor flow_step_inverse_cuda(const at::Tensor& y_, const at::Tensor& log_scale_, const at::Tensor& bias_,
                                  const at::Tensor& weight_inverse_) {
  checks::check_inverse(y_, log_scale_, bias_, weight_inverse_);
  const c10::cuda::CUDAGuard guard(y_.device());
  const at::Tensor y = y_.contiguous(), log_scale = log_scale_.contiguous(), bias = bias_.contiguous(),
                   weight_inverse = weight_inverse_.contiguous();
  const int64_t N = y.size(0), C = y.size(1), V = checks::voxels(y);
  at::Tensor x = at::empty_like(y, at::MemoryFormat::Contiguous);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "flow_step_inverse_cuda", [&] {
    check_launch(cuda::flow_step_inverse<scalar_t>(y.const_data_ptr<scalar_t>(), log_scale.const_data_ptr<scalar_t>(),
                                                   bias.const_data_ptr<scalar_t>(),
                                                   weight_inverse.const_data_ptr<scalar_t>(),
                                                   x.mutable_data_ptr<scalar_t>(), N, C, V, stream),
                 "flow_step_inverse", C);
  });
  return x;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_y_, const at::Tensor& grad_logdet_, const at::Tensor& xy_, const at::Tensor& log_scale_,
    const at::Tensor& bias_, const at::Tensor& weight_, const at::Tensor* weight_inverse_, const char* xy_name) {
  checks::check_backward(grad_y_, grad_logdet_, xy_, xy_name, log_scale_, bias_, weight_, weight_inverse_);
  const c10::cuda::CUDAGuard guard(grad_y_.device());
  const at::Tensor grad_y = grad_y_.contiguous(), xy = xy_.contiguous(), log_scale = log_scale_.contiguous(),
                   bias = bias_.contiguous(), weight = weight_.contiguous();
  const at::Tensor weight_inverse = weight_inverse_ != nullptr ? weight_inverse_->contiguous() : at::Tensor();
  const int64_t N = grad_y.size(0), C = grad_y.size(1), V = checks::voxels(grad_y);
  at::Tensor x_out = weight_inverse.defined() ? at::empty_like(xy, at::MemoryFormat::Contiguous) : at::Tensor();
  at::Tensor grad_x = at::empty_like(grad_y, at::MemoryFormat::Contiguous);
  const auto f64 = grad_y.options().dtype(at::kDouble);
  at::Tensor workspace = at::empty({std::max<int64_t>(1, cuda::backward_workspace_size(N, C, V))}, f64);
  at::Tensor sums = at::empty({C * C + 2 * C}, f64);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "flow_step_backward_cuda", [&] {
    check_launch(
        cuda::flow_step_backward<scalar_t>(
            grad_y.const_data_ptr<scalar_t>(), xy.const_data_ptr<scalar_t>(), log_scale.const_data_ptr<scalar_t>(),
            bias.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
            weight_inverse.defined() ? weight_inverse.const_data_ptr<scalar_t>() : nullptr,
            x_out.defined() ? x_out.mutable_data_ptr<scalar_t>() : nullptr, grad_x.mutable_data_ptr<scalar_t>(),
            workspace.mutable_data_ptr<double>(), sums.mutable_data_ptr<double>(), N, C, V, stream),
        "flow_step_backward", C);
  });
  auto [grad_log_scale, grad_bias, grad_weight] =
      checks::param_grads_from_sums(sums, grad_logdet_, C, V, grad_y.scalar_type());
  return {x_out, grad_x, grad_log_scale, grad_bias, grad_weight};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> flow_step_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x, const at::Tensor& log_scale,
    const at::Tensor& bias, const at::Tensor& weight) {
  auto out = backward_cuda(grad_y, grad_logdet, x, log_scale, bias, weight, nullptr, "x");
  return {std::get<1>(out), std::get<2>(out), std::get<3>(out), std::get<4>(out)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> flow_step_backward_from_output_cuda(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& y, const at::Tensor& log_scale,
    const at::Tensor& bias, const at::Tensor& weight, const at::Tensor& weight_inverse) {
  return backward_cuda(grad_y, grad_logdet, y, log_scale, bias, weight, &weight_inverse, "y");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> channel_moments_cuda(const at::Tensor& x_) {
  checks::check_activation("x", x_);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), V = checks::voxels(x);
  const auto f64 = x.options().dtype(at::kDouble);
  at::Tensor workspace = at::empty({std::max<int64_t>(1, cuda::moments_workspace_size(N, C, V))}, f64);
  at::Tensor sums = at::empty({2 * C}, f64);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_moments_cuda", [&] {
    check_launch(cuda::channel_moments<scalar_t>(x.const_data_ptr<scalar_t>(), workspace.mutable_data_ptr<double>(),
                                                 sums.mutable_data_ptr<double>(), N, C, V, stream),
                 "channel_moments", C);
  });
  return {at::full({C}, double(N * V), f64), sums.slice(0, 0, C).clone(), sums.slice(0, C, 2 * C).clone()};
}

}  // namespace

TORCH_LIBRARY_IMPL(mri_anomaly, CUDA, m) {
  m.impl("flow_step", &flow_step_cuda);
  m.impl("flow_step_inverse", &flow_step_inverse_cuda);
  m.impl("flow_step_backward", &flow_step_backward_cuda);
  m.impl("flow_step_backward_from_output", &flow_step_backward_from_output_cuda);
  m.impl("channel_moments", &channel_moments_cuda);
}

}  // namespace mri_anomaly

#endif  // WITH_CUDA
