// Makes `import mri_anomaly._C` work: loading the shared library runs the TORCH_LIBRARY registrations
// (the ops are reached through torch.ops.mri_anomaly.*, not through this module).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "mri_anomaly fused flow-step ops", -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}
