// The Python module mri_anomaly._C. Loading it runs the TORCH_LIBRARY registrations of the ops
// (flow_step.cpp, flow_step_cuda.cpp), which are reached through torch.ops.mri_anomaly.*; the module
// itself only has build_info(): how this build was compiled (mri_anomaly.get_config() and
// `mri-anomaly info` show it).
#include <torch/extension.h>
#include <torch/version.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/flow_step_cpu.h"

// setup.py passes MRI_ANOMALY_VERSION (the package version) and, in CUDA builds, MRI_ANOMALY_CUDA_ARCHS
// (TORCH_CUDA_ARCH_LIST) as string literals.

namespace {

pybind11::dict build_info() {
  namespace py = pybind11;
  py::dict info;
#ifdef MRI_ANOMALY_VERSION
  info["version"] = MRI_ANOMALY_VERSION;
#else
  info["version"] = py::none();
#endif
  info["torch_version"] = TORCH_VERSION;
#if defined(__clang__)
  info["compiler"] = __VERSION__;  // e.g. "Clang 17.0.6 (...)"
#elif defined(__GNUC__)
  info["compiler"] = "GCC " __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
#ifdef WITH_CUDA
  info["with_cuda"] = true;
#else
  info["with_cuda"] = false;
#endif
#ifdef MRI_ANOMALY_CUDA_ARCHS
  info["cuda_archs"] = MRI_ANOMALY_CUDA_ARCHS;
#else
  info["cuda_archs"] = "";
#endif
#ifdef _OPENMP
  info["with_openmp"] = true;
  info["omp_max_threads"] = omp_get_max_threads();
#else
  info["with_openmp"] = false;
  info["omp_max_threads"] = py::none();
#endif
  info["cpu_tile_values"] = mri_anomaly::cpu::kTileValues;
  info["cpu_tile_min_voxels"] = mri_anomaly::cpu::kMinTileVoxels;
  info["cpu_tile_max_voxels"] = mri_anomaly::cpu::kMaxTileVoxels;
  info["cpu_folded_max_sample_values"] = mri_anomaly::cpu::kFoldedMaxSampleValues;
  info["cpu_folded_min_voxels"] = mri_anomaly::cpu::kFoldedMinVoxels;
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mri_anomaly fused flow-step ops (registered as torch.ops.mri_anomaly.*) and build_info()";
  m.def("build_info", &build_info,
        "Build facts of this extension: version, torch_version (compiled against), compiler, with_cuda, "
        "cuda_archs, with_openmp, omp_max_threads (now), cpu_tile_values and cpu_tile_min/max_voxels "
        "(the CPU kernel's voxel tiles), cpu_folded_max_sample_values and cpu_folded_min_voxels (the "
        "forward and inverse of samples of at most that many values and at least that many voxels "
        "run the folded batched GEMM instead).");
}
