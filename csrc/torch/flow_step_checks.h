// Argument checks shared by the CPU and CUDA glue: each error names the argument and the problem.
// Shape/value problems raise ValueError in Python, dtype problems TypeError (as the reference does).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
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

}  // namespace checks
}  // namespace mri_anomaly
