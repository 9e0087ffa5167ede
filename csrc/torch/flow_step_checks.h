// Argument checks shared by the CPU and CUDA glue: each error names the argument and the problem.
// Shape/value problems raise ValueError in Python, dtype problems TypeError (as the reference does).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

namespace mri_anomaly {
namespace checks {

inline void check_activation(const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), name, " must be a defined tensor");
  TORCH_CHECK_VALUE(t.dim() >= 3 && t.dim() <= 5, name,
                    " must have shape (N, C, *spatial) with 1-3 spatial dims, got shape ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same_activation(const char* name, const at::Tensor& t, const char* ref_name,
                                  const at::Tensor& ref) {
  check_activation(name, t);
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), name, " must have the shape of ", ref_name, " ", ref.sizes(),
                    ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", ref_name,
                   " has dtype ", ref.scalar_type(), "; they must match");
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device(), "; they must be on one device");
}

// `ref` is the first activation argument (named "x", "y" or "grad_y" in messages through ref_name()).
inline void check_param(const char* name, const at::Tensor& t, const at::Tensor& ref, at::IntArrayRef expected) {
  TORCH_CHECK_VALUE(t.defined(), name, " must be a defined tensor");
  TORCH_CHECK_VALUE(t.sizes() == expected, name, " must have shape ", expected, " for ", ref.size(1),
                    " channels, got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(),
                   " but the activations have dtype ", ref.scalar_type(), "; they must match");
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but the activations are on ",
                    ref.device(), "; they must be on one device");
}

// Non-finite parameters make every output NaN; report them by name. CPU only: on CUDA this would
// be a host sync per call.
inline void check_finite(const std::vector<std::pair<const char*, at::Tensor>>& params) {
  for (const auto& [name, t] : params) {
    if (!t.device().is_cpu()) continue;
    const at::Tensor c = t.contiguous();
    bool finite = true;
    AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "check_finite", [&] {
      const scalar_t* p = c.const_data_ptr<scalar_t>();
      for (int64_t i = 0; i < c.numel(); ++i) finite = finite && std::isfinite(p[i]);
    });
    TORCH_CHECK_VALUE(finite, name, " has non-finite values (NaN or inf)");
  }
}

// Voxels per sample: the product of the spatial sizes (valid for N == 0 too).
inline int64_t voxels(const at::Tensor& t) {
  int64_t v = 1;
  for (int64_t d = 2; d < t.dim(); ++d) v *= t.size(d);
  return v;
}

// Full argument checks of each op (shared by the CPU and CUDA registrations).
inline void check_forward(const at::Tensor& x, const at::Tensor& log_scale, const at::Tensor& bias,
                          const at::Tensor& weight, const at::Tensor& weight_logabsdet) {
  check_activation("x", x);
  const int64_t C = x.size(1);
  check_param("log_scale", log_scale, x, {C});
  check_param("bias", bias, x, {C});
  check_param("weight", weight, x, {C, C});
  check_param("weight_logabsdet", weight_logabsdet, x, {});
  check_finite({{"log_scale", log_scale}, {"bias", bias}, {"weight", weight}, {"weight_logabsdet", weight_logabsdet}});
}

inline void check_inverse(const at::Tensor& y, const at::Tensor& log_scale, const at::Tensor& bias,
                          const at::Tensor& weight_inverse) {
  check_activation("y", y);
  const int64_t C = y.size(1);
  check_param("log_scale", log_scale, y, {C});
  check_param("bias", bias, y, {C});
  check_param("weight_inverse", weight_inverse, y, {C, C});
  check_finite({{"log_scale", log_scale}, {"bias", bias}, {"weight_inverse", weight_inverse}});
}

// weight_inverse == nullptr for the saved-input backward (xy = x), else xy = y.
inline void check_backward(const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& xy,
                           const char* xy_name, const at::Tensor& log_scale, const at::Tensor& bias,
                           const at::Tensor& weight, const at::Tensor* weight_inverse) {
  check_activation("grad_y", grad_y);
  check_same_activation(xy_name, xy, "grad_y", grad_y);
  const int64_t C = grad_y.size(1);
  check_param("grad_logdet", grad_logdet, grad_y, {grad_y.size(0)});
  check_param("log_scale", log_scale, grad_y, {C});
  check_param("bias", bias, grad_y, {C});
  check_param("weight", weight, grad_y, {C, C});
  std::vector<std::pair<const char*, at::Tensor>> params = {{"log_scale", log_scale}, {"bias", bias}, {"weight", weight}};
  if (weight_inverse != nullptr) {
    check_param("weight_inverse", *weight_inverse, grad_y, {C, C});
    params.push_back({"weight_inverse", *weight_inverse});
  }
  check_finite(params);
}

// logdet (N,) = V * (sum(log_scale) + weight_logabsdet), on the device, without a host sync.
inline at::Tensor logdet_of(const at::Tensor& log_scale, const at::Tensor& weight_logabsdet, int64_t N, int64_t V) {
  return ((log_scale.sum() + weight_logabsdet) * double(V)).expand({N}).contiguous();
}

// Splits the float64 sums [grad_weight (C*C) | sum(g_h*h) (C) | grad_bias (C)] of a backward kernel into
// (grad_log_scale, grad_bias, grad_weight) of `dtype`, adding the logdet term V * sum(grad_logdet).
// copy=true: the outputs must not alias one buffer (the schema promises fresh tensors).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> param_grads_from_sums(const at::Tensor& sums,
                                                                            const at::Tensor& grad_logdet, int64_t C,
                                                                            int64_t V, at::ScalarType dtype) {
  at::Tensor grad_weight = sums.slice(0, 0, C * C).view({C, C}).to(dtype, false, true);
  at::Tensor grad_log_scale =
      (sums.slice(0, C * C, C * C + C) + grad_logdet.to(at::kDouble).sum() * double(V)).to(dtype, false, true);
  at::Tensor grad_bias = sums.slice(0, C * C + C, C * C + 2 * C).to(dtype, false, true);
  return {grad_log_scale, grad_bias, grad_weight};
}

}  // namespace checks
}  // namespace mri_anomaly
