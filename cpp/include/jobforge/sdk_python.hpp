// The Python side of the SDK: wraps a processor in a PyCapsule named "jobforge.processor.v1",
// for engine.register_native(type, capsule). Include it from a CPython or pybind11 module;
// it needs Python.h and nothing of jobforge's compiled code.
#pragma once

#include <Python.h>

#include "jobforge/sdk.hpp"

namespace jobforge::sdk {

namespace detail {
inline void capsule_destructor(PyObject* capsule) noexcept {
  destroy_export(PyCapsule_GetPointer(capsule, capsule_name));
}
}  // namespace detail

// A new reference to a capsule that owns a share of `processor` (nullptr with a Python error
// set on failure). With pybind11: py::reinterpret_steal<py::object>(processor_capsule(p)).
inline PyObject* processor_capsule(std::shared_ptr<Processor> processor) {
  ProcessorExport* e = nullptr;
  try {
    e = make_export(std::move(processor));
  } catch (const std::exception& err) {
    PyErr_SetString(PyExc_ValueError, err.what());
    return nullptr;
  }
  PyObject* capsule = PyCapsule_New(e, capsule_name, &detail::capsule_destructor);
  if (!capsule) destroy_export(e);
  return capsule;
}

}  // namespace jobforge::sdk
