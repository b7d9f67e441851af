"""A lean C launch for the replays of launch plans (kernelgen/plans.py), on CUDA with Triton 3.6.

Triton's launcher for a compiled kernel is a C function that parses its 13 leading arguments and the kernel
metadata with PyArg_ParseTuple, runs launch hooks, releases the GIL and calls cuLaunchKernelEx. A replay
already knows everything but the pointers: the grid, the stream, the function handle, the block size, the
shared memory and the type of every kernel parameter. `launch(gx, gy, gz, stream, function, threads,
shared, types, *params)` here is one METH_FASTCALL function that packs the parameters by their type code
(`types`, one byte per parameter, from the kernel's Triton signature) and calls cuLaunchKernel, without
releasing the GIL for the few microseconds the driver takes.

It is used only for kernels it covers: one CTA per program (no clusters), no cooperative grid or PDL, no
scratch memory, parameters of plain pointer, integer and float types (no tensor descriptors, no tuples).
The module is built once per machine with Triton's own build helper and cached by Triton; when it cannot be
built (no compiler, another Triton), replays keep Triton's C launch. KERNELGEN_LEAN_LAUNCH=0 turns it off.
"""

from __future__ import annotations

import os

# Type codes: what the C side packs for a Triton parameter type (constexpr parameters are not passed).
_CODES = {"i1": "c", "i8": "c", "i16": "s", "i32": "i", "i64": "l", "u1": "B", "u8": "B", "u16": "S",
          "u32": "I", "u64": "L", "fp16": "h", "bf16": "b", "fp32": "f", "f32": "f", "fp64": "d"}

# The driver entry points both C launchers use (this one and kernelgen/lean_replay.py's C++), opened with
# dlopen rather than linked, so the module builds and imports without libcuda at link time.
DRIVER = r"""
typedef CUresult (*launch_t)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             CUstream, void**, void**);
typedef CUresult (*ctx_get_t)(CUcontext*);
typedef CUresult (*error_string_t)(CUresult, const char**);
static launch_t launch_kernel = NULL;
static ctx_get_t ctx_get_current = NULL;
static error_string_t error_string = NULL;

static int load_driver(void) {
  if (launch_kernel) return 1;
  void* lib = dlopen("libcuda.so.1", RTLD_LAZY);
  if (!lib) { PyErr_SetString(PyExc_RuntimeError, "kernelgen: cannot open libcuda.so.1"); return 0; }
  launch_kernel = (launch_t)dlsym(lib, "cuLaunchKernel");
  ctx_get_current = (ctx_get_t)dlsym(lib, "cuCtxGetCurrent");
  error_string = (error_string_t)dlsym(lib, "cuGetErrorString");
  if (!launch_kernel || !ctx_get_current || !error_string) {
    launch_kernel = NULL;
    PyErr_SetString(PyExc_RuntimeError, "kernelgen: libcuda lacks cuLaunchKernel");
    return 0;
  }
  return 1;
}
"""

_SOURCE = r"""
#include "cuda.h"
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define MAX_PARAMS 96
""" + DRIVER + r"""
static uint16_t to_bf16(double f) { float x = (float)f; uint32_t u; memcpy(&u, &x, 4); return (uint16_t)(u >> 16); }

static PyObject* launch(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 8) { PyErr_SetString(PyExc_TypeError, "launch: too few arguments"); return NULL; }
  unsigned gx = (unsigned)PyLong_AsUnsignedLong(args[0]);
  unsigned gy = (unsigned)PyLong_AsUnsignedLong(args[1]);
  unsigned gz = (unsigned)PyLong_AsUnsignedLong(args[2]);
  CUstream stream = (CUstream)(uintptr_t)PyLong_AsUnsignedLongLong(args[3]);
  CUfunction function = (CUfunction)(uintptr_t)PyLong_AsUnsignedLongLong(args[4]);
  unsigned threads = (unsigned)PyLong_AsUnsignedLong(args[5]);
  unsigned shared = (unsigned)PyLong_AsUnsignedLong(args[6]);
  if (PyErr_Occurred()) return NULL;
  if (!PyBytes_Check(args[7])) { PyErr_SetString(PyExc_TypeError, "launch: types must be bytes"); return NULL; }
  const char* types = PyBytes_AS_STRING(args[7]);
  Py_ssize_t n = PyBytes_GET_SIZE(args[7]);
  if (n != nargs - 8 || n + 2 > MAX_PARAMS) {
    PyErr_SetString(PyExc_TypeError, "launch: the parameters do not match their types");
    return NULL;
  }
  uint64_t storage[MAX_PARAMS];
  void* params[MAX_PARAMS];
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* a = args[8 + i];
    void* slot = &storage[i];
    switch (types[i]) {
      case 'P': *(uint64_t*)slot = PyLong_AsUnsignedLongLong(a); break;
      case 'c': *(int8_t*)slot = (int8_t)PyLong_AsLong(a); break;
      case 's': *(int16_t*)slot = (int16_t)PyLong_AsLong(a); break;
      case 'i': *(int32_t*)slot = (int32_t)PyLong_AsLong(a); break;
      case 'l': *(int64_t*)slot = (int64_t)PyLong_AsLongLong(a); break;
      case 'B': *(uint8_t*)slot = (uint8_t)PyLong_AsUnsignedLong(a); break;
      case 'S': *(uint16_t*)slot = (uint16_t)PyLong_AsUnsignedLong(a); break;
      case 'I': *(uint32_t*)slot = (uint32_t)PyLong_AsUnsignedLong(a); break;
      case 'L': *(uint64_t*)slot = (uint64_t)PyLong_AsUnsignedLongLong(a); break;
      case 'f': { float x = (float)PyFloat_AsDouble(a); memcpy(slot, &x, 4); break; }
      case 'd': { double x = PyFloat_AsDouble(a); memcpy(slot, &x, 8); break; }
      case 'h': { uint16_t x; PyFloat_Pack2(PyFloat_AsDouble(a), (unsigned char*)&x, 1); memcpy(slot, &x, 2); break; }
      case 'b': { uint16_t x = to_bf16(PyFloat_AsDouble(a)); memcpy(slot, &x, 2); break; }
      default: PyErr_SetString(PyExc_TypeError, "launch: unknown type code"); return NULL;
    }
    params[i] = slot;
  }
  if (PyErr_Occurred()) return NULL;
  storage[n] = 0; storage[n + 1] = 0;  // Triton's global and profile scratch pointers: none
  params[n] = &storage[n]; params[n + 1] = &storage[n + 1];
  if (gx * gy * gz == 0) Py_RETURN_NONE;
  CUcontext ctx = NULL;
  if (ctx_get_current(&ctx) != CUDA_SUCCESS || ctx == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "kernelgen lean launch: no current CUDA context");
    return NULL;
  }
  CUresult err = launch_kernel(function, gx, gy, gz, threads, 1, 1, shared, stream, params, NULL);
  if (err != CUDA_SUCCESS) {
    const char* text = "unknown error";
    error_string(err, &text);
    PyErr_Format(PyExc_RuntimeError, "kernelgen lean launch: %s", text);
    return NULL;
  }
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
  {"launch", (PyCFunction)(void(*)(void))launch, METH_FASTCALL, "launch a compiled kernel"},
  {NULL, NULL, 0, NULL}
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kernelgen_lean_launch", NULL, -1, methods};
PyMODINIT_FUNC PyInit_kernelgen_lean_launch(void) {
  if (!load_driver()) return NULL;
  return PyModule_Create(&module);
}
"""

_built: dict = {}  # "launch": the C function, or None when it cannot be had here


def launcher():
    """The C `launch`, built on first use; None when off, not on Triton 3.6's CUDA driver, or not buildable."""
    if "launch" in _built:
        return _built["launch"]
    _built["launch"] = None
    if os.environ.get("KERNELGEN_LEAN_LAUNCH", "1") == "0":
        return None
    try:
        import triton

        if not triton.__version__.startswith("3.6."):
            return None
        from triton.backends.nvidia import driver
        from triton.runtime.build import compile_module_from_src

        # cuda.h from Triton's bundled headers; libcuda is opened at import (dlopen), not linked
        mod = compile_module_from_src(src=_SOURCE, name="kernelgen_lean_launch", library_dirs=[],
                                      include_dirs=driver.include_dirs, libraries=[])
        _built["launch"] = mod.launch
    except Exception:  # noqa: BLE001 - no compiler, no CUDA headers, another layout: Triton's launch stays
        _built["launch"] = None
    return _built["launch"]


def plan(kernel, n_args: int):
    """(types, positions of the non-constexpr arguments, threads, shared bytes) for launching `kernel` (a Triton
    CompiledKernel) with n_args arguments (launch arguments and defaults, in parameter order), or None when
    the lean launch does not cover it."""
    src = getattr(kernel, "src", None)
    signature = getattr(src, "signature", None)
    metadata = getattr(kernel, "packed_metadata", None)
    if not isinstance(signature, dict) or len(signature) != n_args or not isinstance(metadata, tuple):
        return None
    # (num_warps, num_ctas, shared memory[, cluster dims]): Triton's launcher uses the cluster dims only when
    # num_ctas != 1, which is cuLaunchKernelEx's business
    if len(metadata) not in (3, 6) or metadata[1] != 1:
        return None
    codes, positions = [], []
    for i, ty in enumerate(signature.values()):
        if ty == "constexpr":
            continue
        if not isinstance(ty, str):
            return None  # a tuple of parameters
        code = "P" if ty.startswith("*") else _CODES.get(ty)
        if code is None:
            return None  # a tensor descriptor or an unknown type
        codes.append(code)
        positions.append(i)
    return "".join(codes).encode(), tuple(positions), 32 * int(metadata[0]), int(metadata[2])
