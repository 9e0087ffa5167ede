// ATen glue of the flow-step ops: schemas (TORCH_LIBRARY), argument checks, CPU registrations.
// The maths lives in the torch-free kernels (csrc/kernels/flow_step_cpu.h); CUDA registrations are in
// flow_step_cuda.cpp (built with WITH_CUDA only).
#include "torch/flow_step_checks.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <limits>

#include "kernels/flow_step_cpu.h"

// Fortran BLAS as exported by libtorch_cpu (MKL or OpenBLAS). Weak, so that a torch built without
// BLAS still loads the extension and the kernels fall back to LoopGemm.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
// MKL's per-thread thread count, C interface (returns the previous one; 0 = the global setting). mkl.h maps
// mkl_set_num_threads_local to it; the exported lowercase symbol is the Fortran one (int*). Weak: other BLAS lack it.
int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));
}

namespace mri_anomaly {
namespace {

template <typename T>
struct BlasGemm {
  void operator()(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                  int64_t ldb, T beta, T* c, int64_t ldc) const {
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    const int m_ = int(m), n_ = int(n), k_ = int(k), lda_ = int(lda), ldb_ = int(ldb), ldc_ = int(ldc);
    const T one = T(1);
    // One thread per GEMM: the kernels parallelise over chunks themselves and sum the chunks in a fixed order.
    // Left to itself, MKL splits a GEMM's reduction (grad_w sums over a tile's voxels) across its own threads
    // when it is called outside a parallel region (a single chunk runs inline), and grad_w then changed with
    // the thread count in the last bits (Intel Xeon, MKL 2024.2).
    const int previous = MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(1) : 0;
    if constexpr (std::is_same_v<T, float>) {
      sgemm_(&ta, &tb, &m_, &n_, &k_, &one, a, &lda_, b, &ldb_, &beta, c, &ldc_);
    } else {
      dgemm_(&ta, &tb, &m_, &n_, &k_, &one, a, &lda_, b, &ldb_, &beta, c, &ldc_);
    }
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous);
  }
};

struct AtenParallelFor {
  template <typename Fn>
  void operator()(int64_t begin, int64_t end, const Fn& fn) const {
    at::parallel_for(begin, end, 1, fn);
  }
};

// "blas" (default where the symbols exist) or "loops"; MRI_ANOMALY_CPU_GEMM overrides, for benchmarks.
bool use_blas(int64_t voxels) {
  static const bool blas_wanted = [] {
    const char* env = std::getenv("MRI_ANOMALY_CPU_GEMM");
    return !(env != nullptr && std::strcmp(env, "loops") == 0);
  }();
  // Fortran BLAS takes 32-bit ints: leading dimensions are up to V.
  return blas_wanted && sgemm_ != nullptr && dgemm_ != nullptr && voxels < std::numeric_limits<int>::max();
}

// --- forward and inverse of mid-sized inputs: the folded formulation through ATen's batched GEMM ---
//
// y = W' x + b' with W' = W diag(exp(log_scale)), b' = W (exp(log_scale) * bias): one at::baddbmm over the
// whole batch; the inverse likewise with diag(exp(-log_scale)) W^-1 and -bias. Used for inputs of at most
// cpu::kFoldedMaxSampleValues values and at least cpu::kFoldedMinVoxels voxels per sample, where it beat the
// tiled forward (csrc/kernels/flow_step_cpu.h; docs/benchmarks/flow_step-cpu-configs.md).
// MRI_ANOMALY_CPU_PATH=tiled|folded overrides the choice by size, for benchmarks and tests (read at each
// call, so that a test can switch it; a getenv is negligible next to the op).
bool use_folded(int64_t N, int64_t C, int64_t V) {
  const int64_t numel = N * C * V;
  if (numel == 0) return false;  // the tiled kernel handles empty inputs
  if (const char* env = std::getenv("MRI_ANOMALY_CPU_PATH")) {
    if (std::strcmp(env, "tiled") == 0) return false;
    if (std::strcmp(env, "folded") == 0) return true;
  }
  return C * V <= cpu::kFoldedMaxSampleValues && V >= cpu::kFoldedMinVoxels;  // per sample: batch-invariant
}

// x (N, C, *spatial) contiguous -> (N, C, V) view.
at::Tensor flat3(const at::Tensor& t) { return t.view({t.size(0), t.size(1), checks::voxels(t)}); }

at::Tensor forward_folded(const at::Tensor& x, const at::Tensor& log_scale, const at::Tensor& bias,
                          const at::Tensor& weight) {
  const at::Tensor x3 = flat3(x);
  const int64_t N = x3.size(0), C = x3.size(1), V = x3.size(2);
  const at::Tensor w = weight * log_scale.exp().unsqueeze(0);  // W diag(exp(s))
  const at::Tensor b = at::mv(w, bias);                         // W (exp(s) * bias)
  return at::baddbmm(b.view({1, C, 1}).expand({N, C, V}), w.expand({N, C, C}), x3).view(x.sizes());
}

at::Tensor inverse_folded(const at::Tensor& y, const at::Tensor& log_scale, const at::Tensor& bias,
                          const at::Tensor& weight_inverse) {
  const at::Tensor y3 = flat3(y);
  const int64_t N = y3.size(0), C = y3.size(1), V = y3.size(2);
  const at::Tensor w = weight_inverse * (-log_scale).exp().unsqueeze(1);  // diag(exp(-s)) W^-1
  return at::baddbmm((-bias).view({1, C, 1}).expand({N, C, V}), w.expand({N, C, C}), y3).view(y.sizes());
}

template <typename T, typename Fn>
void with_gemm(int64_t voxels, const Fn& fn) {
  if (use_blas(voxels)) {
    fn(BlasGemm<T>{});
  } else {
    fn(cpu::LoopGemm<T>{});
  }
}

std::tuple<at::Tensor, at::Tensor> flow_step_cpu(const at::Tensor& x_, const at::Tensor& log_scale_,
                                                 const at::Tensor& bias_, const at::Tensor& weight_,
                                                 const at::Tensor& weight_logabsdet_) {
  checks::check_forward(x_, log_scale_, bias_, weight_, weight_logabsdet_);
  const at::Tensor x = x_.contiguous(), log_scale = log_scale_.contiguous(), bias = bias_.contiguous(),
                   weight = weight_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), V = checks::voxels(x);
  if (use_folded(N, C, V)) {
    return {forward_folded(x, log_scale, bias, weight), checks::logdet_of(log_scale, weight_logabsdet_, N, V)};
  }
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "flow_step_cpu", [&] {
    with_gemm<scalar_t>(V, [&](const auto& gemm) {
      cpu::flow_step_forward<scalar_t>(x.const_data_ptr<scalar_t>(), log_scale.const_data_ptr<scalar_t>(),
                                       bias.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                       y.mutable_data_ptr<scalar_t>(), N, C, V, gemm, AtenParallelFor{});
    });
  });
  at::Tensor logdet = checks::logdet_of(log_scale, weight_logabsdet_, N, V);
  return {y, logdet};
}

at::Tensor flow_step_inverse_cpu(const at::Tensor& y_, const at::Tensor& log_scale_, const at::Tensor& bias_,
                                 const at::Tensor& weight_inverse_) {
  checks::check_inverse(y_, log_scale_, bias_, weight_inverse_);
  const at::Tensor y = y_.contiguous(), log_scale = log_scale_.contiguous(), bias = bias_.contiguous(),
                   weight_inverse = weight_inverse_.contiguous();
  const int64_t N = y.size(0), C = y.size(1), V = checks::voxels(y);
  if (use_folded(N, C, V)) return inverse_folded(y, log_scale, bias, weight_inverse);
  at::Tensor x = at::empty_like(y, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "flow_step_inverse_cpu", [&] {
    with_gemm<scalar_t>(V, [&](const auto& gemm) {
      cpu::flow_step_inverse<scalar_t>(y.const_data_ptr<scalar_t>(), log_scale.const_data_ptr<scalar_t>(),
                                       bias.const_data_ptr<scalar_t>(), weight_inverse.const_data_ptr<scalar_t>(),
                                       x.mutable_data_ptr<scalar_t>(), N, C, V, gemm, AtenParallelFor{});
    });
  });
  return x;
}

// Shared by both backward ops. `xy` is x (saved input) or y (from_output).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_y_, const at::Tensor& grad_logdet_, const at::Tensor& xy_, const at::Tensor& log_scale_,
    const at::Tensor& bias_, const at::Tensor& weight_, const at::Tensor* weight_inverse_, const char* xy_name) {
  checks::check_backward(grad_y_, grad_logdet_, xy_, xy_name, log_scale_, bias_, weight_, weight_inverse_);
  const int64_t C = grad_y_.size(1);
  const at::Tensor grad_y = grad_y_.contiguous(), xy = xy_.contiguous(), log_scale = log_scale_.contiguous(),
                   bias = bias_.contiguous(), weight = weight_.contiguous();
  const at::Tensor weight_inverse = weight_inverse_ != nullptr ? weight_inverse_->contiguous() : weight;
  const int64_t N = grad_y.size(0), V = checks::voxels(grad_y);
  const cpu::Plan plan(N, C, V);
  at::Tensor x_out = weight_inverse_ != nullptr ? at::empty_like(xy, at::MemoryFormat::Contiguous) : at::Tensor();
  at::Tensor grad_x = at::empty_like(grad_y, at::MemoryFormat::Contiguous);
  const auto f64 = grad_y.options().dtype(at::kDouble);
  at::Tensor partials = at::empty({plan.chunks, plan.partial_size()}, f64);
  at::Tensor sums = at::zeros({plan.partial_size()}, f64);
  AT_DISPATCH_FLOATING_TYPES(grad_y.scalar_type(), "flow_step_backward_cpu", [&] {
    with_gemm<scalar_t>(V, [&](const auto& gemm) {
      cpu::flow_step_backward_partials<scalar_t>(
          grad_y.const_data_ptr<scalar_t>(), xy.const_data_ptr<scalar_t>(), log_scale.const_data_ptr<scalar_t>(),
          bias.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
          weight_inverse.const_data_ptr<scalar_t>(), weight_inverse_ != nullptr,
          x_out.defined() ? x_out.mutable_data_ptr<scalar_t>() : nullptr, grad_x.mutable_data_ptr<scalar_t>(),
          partials.mutable_data_ptr<double>(), N, C, V, gemm, AtenParallelFor{});
    });
  });
  if (plan.chunks > 0) {
    cpu::sum_partials(partials.const_data_ptr<double>(), plan.chunks, plan.partial_size(),
                      sums.mutable_data_ptr<double>(), AtenParallelFor{});
  }
  auto [grad_log_scale, grad_bias, grad_weight] =
      checks::param_grads_from_sums(sums, grad_logdet_, C, V, grad_y.scalar_type());
  return {x_out, grad_x, grad_log_scale, grad_bias, grad_weight};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> flow_step_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x, const at::Tensor& log_scale,
    const at::Tensor& bias, const at::Tensor& weight) {
  auto out = backward_cpu(grad_y, grad_logdet, x, log_scale, bias, weight, nullptr, "x");
  return {std::get<1>(out), std::get<2>(out), std::get<3>(out), std::get<4>(out)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> flow_step_backward_from_output_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& y, const at::Tensor& log_scale,
    const at::Tensor& bias, const at::Tensor& weight, const at::Tensor& weight_inverse) {
  return backward_cpu(grad_y, grad_logdet, y, log_scale, bias, weight, &weight_inverse, "y");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> channel_moments_cpu(const at::Tensor& x_) {
  checks::check_activation("x", x_);
  const at::Tensor x = x_.contiguous();
  const int64_t N = x.size(0), C = x.size(1), V = checks::voxels(x);
  const cpu::Plan plan(N, C, V);
  const auto f64 = x.options().dtype(at::kDouble);
  at::Tensor partials = at::empty({plan.chunks, 2 * C}, f64);
  at::Tensor sums = at::zeros({2 * C}, f64);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_moments_cpu", [&] {
    cpu::channel_moments_partials<scalar_t>(x.const_data_ptr<scalar_t>(), partials.mutable_data_ptr<double>(), N,
                                            C, V, AtenParallelFor{});
  });
  if (plan.chunks > 0) {
    cpu::sum_partials(partials.const_data_ptr<double>(), plan.chunks, 2 * C, sums.mutable_data_ptr<double>(),
                      AtenParallelFor{});
  }
  at::Tensor count = at::full({C}, double(N * V), f64);
  return {count, sums.slice(0, 0, C).clone(), sums.slice(0, C, 2 * C).clone()};
}

// --- autograd of flow_step, in C++ for every device ---
//
// The backward is the fused flow_step_backward op from the saved input. A C++ autograd kernel costs a few
// microseconds per call where a Python one (torch.library.register_autograd) costs about a hundred, which
// dominated the small layers of the shipped configs (docs/benchmarks/flow_step-cpu-configs.md).
class FlowStepFunction : public torch::autograd::Function<FlowStepFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& log_scale, const at::Tensor& bias,
                                                const at::Tensor& weight, const at::Tensor& weight_logabsdet) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("mri_anomaly::flow_step", "")
                               .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                         const at::Tensor&, const at::Tensor&,
                                                                         const at::Tensor&)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, logdet] = op.call(x, log_scale, bias, weight, weight_logabsdet);
    ctx->save_for_backward({x, log_scale, bias, weight});
    return {y, logdet};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("mri_anomaly::flow_step_backward", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&)>();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &log_scale = saved[1], &bias = saved[2], &weight = saved[3];
    const at::Tensor grad_y = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(x);
    const at::Tensor grad_logdet = grads[1].defined() ? grads[1].contiguous() : x.new_zeros({x.size(0)});
    auto [grad_x, grad_log_scale, grad_bias, grad_weight] = op.call(grad_y, grad_logdet, x, log_scale, bias, weight);
    const at::Tensor grad_logabsdet = (grad_logdet.sum() * double(checks::voxels(x))).reshape({});
    return {grad_x, grad_log_scale, grad_bias, grad_weight, grad_logabsdet};
  }
};

std::tuple<at::Tensor, at::Tensor> flow_step_autograd(const at::Tensor& x, const at::Tensor& log_scale,
                                                      const at::Tensor& bias, const at::Tensor& weight,
                                                      const at::Tensor& weight_logabsdet) {
  auto out = FlowStepFunction::apply(x, log_scale, bias, weight, weight_logabsdet);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY(mri_anomaly, m) {
  m.def("flow_step(Tensor x, Tensor log_scale, Tensor bias, Tensor weight, Tensor weight_logabsdet) -> (Tensor, Tensor)");
  m.def("flow_step_inverse(Tensor y, Tensor log_scale, Tensor bias, Tensor weight_inverse) -> Tensor");
  m.def(
      "flow_step_backward(Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor log_scale, Tensor bias, "
      "Tensor weight) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "flow_step_backward_from_output(Tensor grad_y, Tensor grad_logdet, Tensor y, Tensor log_scale, "
      "Tensor bias, Tensor weight, Tensor weight_inverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("channel_moments(Tensor x) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mri_anomaly, CPU, m) {
  m.impl("flow_step", &flow_step_cpu);
  m.impl("flow_step_inverse", &flow_step_inverse_cpu);
  m.impl("flow_step_backward", &flow_step_backward_cpu);
  m.impl("flow_step_backward_from_output", &flow_step_backward_from_output_cpu);
  m.impl("channel_moments", &channel_moments_cpu);
}

TORCH_LIBRARY_IMPL(mri_anomaly, Autograd, m) { m.impl("flow_step", &flow_step_autograd); }

}  // namespace mri_anomaly
