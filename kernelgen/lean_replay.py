"""A whole plan replay in one C++ call, for launch plans (kernelgen/plans.py) on CUDA with Triton 3.6.

A replay in Python allocates its outputs with `torch.empty_like` (about 2 us of host time on a server CPU:
argument parsing, the dispatcher, wrapping the result) and then calls the lean C launch once per kernel
with every pointer read through `data_ptr()`. Here a recorded plan becomes one C++ object: `run(plan,
stream, t0, t1, ...)` allocates the buffers with ATen directly, reads the pointers from the tensors, packs
every parameter from what was recorded and calls cuLaunchKernel for each launch, then hands back the one
buffer the call returns (or all of them, for Python to build the result from).

A plan that returns one buffer is also filed under the call's signature in bytes, computed in C++ (the same
properties as plans.py's key: each tensor's dtype, shape, strides, device and 16-byte alignment, and the
value of each None, bool, int or float argument and of each tuple or list of ints; any other argument has
no such signature). `fast(table, device, stream, *args)` computes that signature, looks it up and replays,
all in one C++ call, so a planned call's Python is its replay conditions and this call.

It covers the plans whose every launch the lean C launch covers (kernelgen/lean_launch.py: one CTA per
program, no cooperative grid, PDL or scratch, plain parameter types) and whose pointers all lie in arguments
or allocations. The module is compiled once per machine against the installed torch (a C++ compiler and
torch's headers; about 15 s, started in the background by enable() and patch() on CUDA) and cached; where
it cannot be built, replays stay in Python. KERNELGEN_LEAN_REPLAY=0 turns it off (KERNELGEN_LEAN_LAUNCH=0
too).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

from kernelgen.lean_launch import DRIVER

_SOURCE = r"""
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/Dtype.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include "cuda.h"
#include <dlfcn.h>
#include <cstdint>
#include <cstring>
#include <vector>

#define MAX_PARAMS 96  // a launch's parameters, checked when a plan is made (lean_launch.py's bound too)

""" + DRIVER + r"""
struct Alloc { int like; std::vector<int64_t> shape, stride; at::ScalarType dtype; bool zeroed; };
struct Param { int tensor; int64_t offset; uint64_t bits; };  // tensor -1: a scalar, its bytes in bits
struct Launch { unsigned gx, gy, gz, threads, shared; CUfunction function; std::vector<Param> params; };
struct Plan { int n_inputs, device, out; std::vector<Alloc> allocs; std::vector<Launch> launches; };

static void free_plan(PyObject* capsule) { delete (Plan*)PyCapsule_GetPointer(capsule, "kernelgen.plan"); }

static bool int_vector(PyObject* seq, std::vector<int64_t>& out) {
  Py_ssize_t n = PyTuple_Size(seq);
  if (n < 0) return false;
  for (Py_ssize_t i = 0; i < n; i++) {
    out.push_back(PyLong_AsLongLong(PyTuple_GET_ITEM(seq, i)));
    if (PyErr_Occurred()) return false;
  }
  return true;
}

// make(n_inputs, device, out, allocs, launches): allocs ((like, shape, stride, dtype, zeroed), ...), launches
// ((gx, gy, gz, function, threads, shared, ((tensor, offset, bits), ...)), ...)
static PyObject* make(PyObject*, PyObject* args) {
  int n_inputs, device, out;
  PyObject *allocs, *launches;
  if (!PyArg_ParseTuple(args, "iiiO!O!", &n_inputs, &device, &out, &PyTuple_Type, &allocs, &PyTuple_Type, &launches))
    return nullptr;
  Plan* plan = new Plan{n_inputs, device, out, {}, {}};
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(allocs); i++) {
    Alloc a;
    PyObject *shape, *stride, *dtype;
    int zeroed;
    if (!PyArg_ParseTuple(PyTuple_GET_ITEM(allocs, i), "iO!O!Op", &a.like, &PyTuple_Type, &shape, &PyTuple_Type,
                          &stride, &dtype, &zeroed) || !THPDtype_Check(dtype)
        || !int_vector(shape, a.shape) || !int_vector(stride, a.stride)) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "make: bad allocation");
      delete plan;
      return nullptr;
    }
    a.dtype = ((THPDtype*)dtype)->scalar_type;
    a.zeroed = zeroed;
    plan->allocs.push_back(std::move(a));
  }
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(launches); i++) {
    Launch l;
    unsigned long long function;
    PyObject* params;
    if (!PyArg_ParseTuple(PyTuple_GET_ITEM(launches, i), "IIIKIIO!", &l.gx, &l.gy, &l.gz, &function, &l.threads,
                          &l.shared, &PyTuple_Type, &params)) {
      delete plan;
      return nullptr;
    }
    l.function = (CUfunction)(uintptr_t)function;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(params); j++) {
      Param p;
      unsigned long long bits;
      long long offset;
      if (!PyArg_ParseTuple(PyTuple_GET_ITEM(params, j), "iLK", &p.tensor, &offset, &bits)) {
        delete plan;
        return nullptr;
      }
      p.offset = offset;
      p.bits = bits;
      if (p.tensor >= n_inputs + (int)plan->allocs.size()) {
        PyErr_SetString(PyExc_ValueError, "make: a parameter names no tensor");
        delete plan;
        return nullptr;
      }
      l.params.push_back(p);
    }
    if (l.params.size() > MAX_PARAMS) {
      PyErr_SetString(PyExc_ValueError, "make: a launch has too many parameters");
      delete plan;
      return nullptr;
    }
    plan->launches.push_back(std::move(l));
  }
  if (out >= (int)plan->allocs.size()) {
    PyErr_SetString(PyExc_ValueError, "make: the output names no allocation");
    delete plan;
    return nullptr;
  }
  return PyCapsule_New(plan, "kernelgen.plan", free_plan);
}

// Allocate, launch and return (see run) for these tensor arguments
static PyObject* replay(Plan* plan, CUstream stream, PyObject* const* inputs, Py_ssize_t n) {
  if (n != plan->n_inputs) { PyErr_SetString(PyExc_TypeError, "run: wrong number of tensors"); return nullptr; }
  if (!plan->launches.empty() && !load_driver()) return nullptr;
  try {
    std::vector<at::Tensor> tensors;
    tensors.reserve(plan->n_inputs + plan->allocs.size());
    for (int i = 0; i < plan->n_inputs; i++) {
      if (!THPVariable_Check(inputs[i])) {
        PyErr_SetString(PyExc_TypeError, "run: a tensor was expected");
        return nullptr;
      }
      tensors.push_back(THPVariable_Unpack(inputs[i]));
    }
    for (const Alloc& a : plan->allocs) {
      at::Tensor b = a.like >= 0
          ? at::empty_like(tensors[a.like])
          : at::empty_strided(a.shape, a.stride, at::TensorOptions().dtype(a.dtype).device(at::kCUDA, plan->device));
      if (a.zeroed) b.zero_();
      tensors.push_back(std::move(b));
    }
    bool context_checked = false;  // once per call, before the first launch that runs
    uint64_t storage[MAX_PARAMS + 2];
    void* params[MAX_PARAMS + 2];
    for (const Launch& l : plan->launches) {
      size_t n_params = l.params.size();
      for (size_t j = 0; j < n_params; j++) {
        const Param& p = l.params[j];
        storage[j] = p.tensor < 0 ? p.bits : (uint64_t)(uintptr_t)tensors[p.tensor].data_ptr() + (uint64_t)p.offset;
        params[j] = &storage[j];
      }
      storage[n_params] = storage[n_params + 1] = 0;  // Triton's global and profile scratch pointers: none
      params[n_params] = &storage[n_params];
      params[n_params + 1] = &storage[n_params + 1];
      if ((uint64_t)l.gx * l.gy * l.gz == 0) continue;
      if (!context_checked) {
        CUcontext ctx = nullptr;
        if (ctx_get_current(&ctx) != CUDA_SUCCESS || ctx == nullptr) {
          PyErr_SetString(PyExc_RuntimeError, "kernelgen lean replay: no current CUDA context");
          return nullptr;
        }
        context_checked = true;
      }
      CUresult err = launch_kernel(l.function, l.gx, l.gy, l.gz, l.threads, 1, 1, l.shared, stream, params, nullptr);
      if (err != CUDA_SUCCESS) {
        const char* text = "unknown error";
        error_string(err, &text);
        PyErr_Format(PyExc_RuntimeError, "kernelgen lean replay: %s", text);
        return nullptr;
      }
    }
    if (plan->out >= 0) return THPVariable_Wrap(tensors[plan->n_inputs + plan->out]);
    PyObject* all = PyTuple_New(plan->allocs.size());
    if (!all) return nullptr;
    for (size_t j = 0; j < plan->allocs.size(); j++) {
      PyObject* b = THPVariable_Wrap(tensors[plan->n_inputs + j]);
      if (!b) { Py_DECREF(all); return nullptr; }
      PyTuple_SET_ITEM(all, j, b);
    }
    return all;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

// run(plan, stream, t0, t1, ...): the buffer `out`, or a tuple of every buffer when out is -1
static PyObject* run(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 2) { PyErr_SetString(PyExc_TypeError, "run: too few arguments"); return nullptr; }
  Plan* plan = (Plan*)PyCapsule_GetPointer(args[0], "kernelgen.plan");
  if (!plan) return nullptr;
  CUstream stream = (CUstream)(uintptr_t)PyLong_AsUnsignedLongLong(args[1]);
  if (PyErr_Occurred()) return nullptr;
  return replay(plan, stream, args + 2, nargs - 2);
}

// The signature of a call in bytes (what plans.py's key holds, for the argument types covered here: plain
// tensors on a device, None, bool, int, float, tuples and lists of ints): 1 and the bytes appended, 0 when an
// argument is not covered.
static PyObject* tensor_type = nullptr;
static PyObject* parameter_type = nullptr;
static PyObject* miss = nullptr;

template <typename T> static void put(std::string& key, T v) { key.append((const char*)&v, sizeof(T)); }

static int key_part(PyObject* a, std::string& key, PyObject** tensors, Py_ssize_t& n_tensors) {
  PyObject* type = (PyObject*)Py_TYPE(a);
  if (type == tensor_type || type == parameter_type) {
    const at::Tensor& x = THPVariable_Unpack(a);
    int64_t device = x.get_device();
    if (device < 0) return 0;  // a CPU tensor: no plan
    key += 'T';
    put<int8_t>(key, (int8_t)x.scalar_type());
    put<int64_t>(key, device);
    put<int64_t>(key, x.dim());
    for (int64_t v : x.sizes()) put<int64_t>(key, v);
    for (int64_t v : x.strides()) put<int64_t>(key, v);
    put<int8_t>(key, ((uintptr_t)x.data_ptr() & 15) == 0);
    tensors[n_tensors++] = a;
  } else if (a == Py_None) {
    key += 'N';
  } else if (PyBool_Check(a)) {
    key += a == Py_True ? 'B' : 'b';
  } else if (PyLong_CheckExact(a)) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(a, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) { PyErr_Clear(); return 0; }
    key += 'I';
    put<int64_t>(key, v);
  } else if (PyFloat_CheckExact(a)) {
    key += 'F';
    put<double>(key, PyFloat_AS_DOUBLE(a));
  } else if (PyTuple_CheckExact(a) || PyList_CheckExact(a)) {  // of ints only (a normalized_shape, a dim list)
    Py_ssize_t n = PySequence_Fast_GET_SIZE(a);
    key += PyTuple_CheckExact(a) ? 'U' : 'L';
    put<int64_t>(key, n);
    PyObject** items = PySequence_Fast_ITEMS(a);
    for (Py_ssize_t i = 0; i < n; i++) {
      if (!PyLong_CheckExact(items[i])) return 0;
      int overflow = 0;
      long long v = PyLong_AsLongLongAndOverflow(items[i], &overflow);
      if (overflow || (v == -1 && PyErr_Occurred())) { PyErr_Clear(); return 0; }
      put<int64_t>(key, v);
    }
  } else {
    return 0;
  }
  return 1;
}

static PyObject* key_of(PyObject* device, PyObject* const* args, Py_ssize_t n, PyObject** tensors,
                        Py_ssize_t& n_tensors) {
  if (!tensor_type) { PyErr_SetString(PyExc_RuntimeError, "configure() first"); return nullptr; }
  std::string key;
  key.reserve(128);
  long long d = PyLong_AsLongLong(device);
  if (d == -1 && PyErr_Occurred()) return nullptr;
  put<int64_t>(key, d);
  for (Py_ssize_t i = 0; i < n; i++) {
    if (!key_part(args[i], key, tensors, n_tensors)) Py_RETURN_NONE;
  }
  return PyBytes_FromStringAndSize(key.data(), key.size());
}

#define MAX_ARGS 64

// signature(device, *args): the bytes key of a call, or None when an argument is not covered
static PyObject* signature(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 1 || nargs - 1 > MAX_ARGS) {
    PyErr_SetString(PyExc_TypeError, "signature: bad arguments");
    return nullptr;
  }
  PyObject* tensors[MAX_ARGS];
  Py_ssize_t n_tensors = 0;
  return key_of(args[0], args + 1, nargs - 1, tensors, n_tensors);
}

// fast(table, device, stream, *args): the replay of table[signature(device, *args)] for these arguments, or the
// `miss` object when the table holds no plan for that signature
static PyObject* fast(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 3 || nargs - 3 > MAX_ARGS || !PyDict_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "fast: bad arguments");
    return nullptr;
  }
  PyObject* tensors[MAX_ARGS];
  Py_ssize_t n_tensors = 0;
  PyObject* key = key_of(args[1], args + 3, nargs - 3, tensors, n_tensors);
  if (!key) return nullptr;
  PyObject* found = key == Py_None ? nullptr : PyDict_GetItemWithError(args[0], key);  // borrowed
  Py_DECREF(key);
  if (!found) {
    if (PyErr_Occurred()) return nullptr;
    Py_INCREF(miss);
    return miss;
  }
  Plan* plan = (Plan*)PyCapsule_GetPointer(found, "kernelgen.plan");
  if (!plan) return nullptr;
  CUstream stream = (CUstream)(uintptr_t)PyLong_AsUnsignedLongLong(args[2]);
  if (PyErr_Occurred()) return nullptr;
  return replay(plan, stream, tensors, n_tensors);
}

// configure(tensor type, parameter type, miss): the exact types a plain tensor has, and fast()'s miss object
static PyObject* configure(PyObject*, PyObject* args) {
  PyObject *t, *p, *m;
  if (!PyArg_ParseTuple(args, "OOO", &t, &p, &m)) return nullptr;
  Py_INCREF(t); Py_INCREF(p); Py_INCREF(m);
  Py_XDECREF(tensor_type); Py_XDECREF(parameter_type); Py_XDECREF(miss);
  tensor_type = t; parameter_type = p; miss = m;
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
  {"make", (PyCFunction)make, METH_VARARGS, "a plan object from its recorded description"},
  {"run", (PyCFunction)(void(*)(void))run, METH_FASTCALL, "replay a plan"},
  {"signature", (PyCFunction)(void(*)(void))signature, METH_FASTCALL, "the bytes key of a call"},
  {"fast", (PyCFunction)(void(*)(void))fast, METH_FASTCALL, "look a call's plan up and replay it"},
  {"configure", (PyCFunction)configure, METH_VARARGS, "the plain tensor types and the miss object"},
  {nullptr, nullptr, 0, nullptr}
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "kernelgen_lean_replay", nullptr, -1, methods};
PyMODINIT_FUNC PyInit_kernelgen_lean_replay(void) { return PyModule_Create(&module); }
"""

_built: dict = {}  # "module": the compiled module, or None when it cannot be had here
MISS = object()  # what the module's fast() returns when its table has no plan for a call
fast = None  # the module's fast(), once built (generated code calls it only for plans the module made)


def _build_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) for a module against the installed torch and Python."""
    import torch
    from torch.utils.cpp_extension import include_paths

    lib = str(Path(torch.__file__).parent / "lib")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)  # std::string and friends as torch's libraries lay them out
    compile_flags = ["-O2", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                     f"-I{sysconfig.get_paths()['include']}", *(f"-I{p}" for p in include_paths())]
    link_flags = [f"-L{lib}", "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python", f"-Wl,-rpath,{lib}"]
    return compile_flags, link_flags


def _cache_dir() -> Path:
    root = os.environ.get("KERNELGEN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kernelgen")
    return Path(root) / "lean_replay"


def build(cuda_include_dirs: list[str]):
    """Compile the module (or load it from the cache); the module, or None when it cannot be built."""
    import importlib.machinery
    import importlib.util

    import torch

    compile_flags, link_flags = _build_flags()
    compile_flags += [f"-I{d}" for d in cuda_include_dirs]
    compiler = os.environ.get("CXX", "g++")
    found = shutil.which(compiler)
    # the compiler is part of the key, so that a failure remembered for one is not held against another
    identity = f"{found}:{os.stat(found).st_mtime_ns}" if found else compiler
    tag = hashlib.sha256("\n".join([_SOURCE, torch.__version__, sys.version, identity, *compile_flags]).encode())
    tag = tag.hexdigest()[:16]
    target = _cache_dir() / tag / f"kernelgen_lean_replay{sysconfig.get_config_var('EXT_SUFFIX')}"
    failed = target.parent / "build-failed.txt"  # a failed build is not tried again by every later process
    if not target.exists() and failed.exists():
        _built["error"] = failed.read_text()
        return None
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src = Path(tmp) / "lean_replay.cpp"
            src.write_text(_SOURCE)
            out = Path(tmp) / target.name
            for std in ("-std=c++20", "-std=c++17"):
                cmd = [compiler, std, *compile_flags, str(src), "-o", str(out), *link_flags]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                if proc.returncode == 0:
                    break
            else:
                _built["error"] = proc.stderr[-2000:]  # what the last try said, for whoever asks why
                failed.write_text(_built["error"])
                return None
            os.replace(out, target)  # atomic: a concurrent build finds a whole file or none
    loader = importlib.machinery.ExtensionFileLoader("kernelgen_lean_replay", str(target))
    spec = importlib.util.spec_from_file_location("kernelgen_lean_replay", str(target), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    module.configure(torch.Tensor, torch.nn.Parameter, MISS)
    return module


_lock = threading.Lock()  # one build at a time; a caller waits for one in progress (prefetch's)


def module():
    """The compiled module, built on first use (or waited for, when `prefetch` started the build); None when
    off, not on Triton 3.6's CUDA driver, or not buildable here."""
    if "module" in _built:
        return _built["module"]
    with _lock:
        if "module" not in _built:
            _built["module"] = _load()
    return _built["module"]


def _load():
    global fast
    if os.environ.get("KERNELGEN_LEAN_REPLAY", "1") == "0" or os.environ.get("KERNELGEN_LEAN_LAUNCH", "1") == "0":
        return None
    try:
        import torch
        import triton

        if not triton.__version__.startswith("3.6.") or not torch.cuda.is_available():
            return None
        from triton.backends.nvidia import driver

        built = build(driver.include_dirs)
    except Exception as e:  # noqa: BLE001 - no compiler, no headers, another layout: replays stay in Python
        _built["error"] = f"{type(e).__name__}: {e}"
        return None
    if built is not None:
        fast = built.fast
    return built


def prefetch(device: str) -> None:
    """For a CUDA backend (enable(), patch()): start building (or loading) the module in a background thread,
    so that the first plan recorded (typically in a model's second forward) waits for less of the one-time
    build, if any. The compiler runs in a subprocess: the thread holds no GIL while it waits."""
    if device == "cuda" and "module" not in _built and not _lock.locked():
        threading.Thread(target=module, name="kernelgen-lean-replay-build", daemon=True).start()


# struct formats of the scalar type codes of kernelgen/lean_launch.py (bf16 apart: float32's upper half)
_FORMATS = {"c": "<b", "s": "<h", "i": "<i", "l": "<q", "B": "<B", "S": "<H", "I": "<I", "L": "<Q", "f": "<f",
            "d": "<d", "h": "<e"}


def scalar_bits(code: str, value) -> int:
    """The 8 bytes a scalar parameter is passed in, as an integer (little-endian, zero-padded); raises
    struct.error or TypeError for a value that the type cannot hold."""
    if code == "b":
        raw = struct.pack("<f", value)[2:]  # as the lean C launch packs bf16: float32's upper 16 bits
    elif code == "P":
        if value is not None:
            raise TypeError("a pointer parameter that is not a tensor")
        raw = b""
    else:
        raw = struct.pack(_FORMATS[code], value)
    return int.from_bytes(raw.ljust(8, b"\0"), "little")
