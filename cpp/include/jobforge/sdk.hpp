// The jobforge C++ SDK: what a separately built module needs to hand a native processor to a
// running engine (engine.register_native in Python). Header-only; with processor.hpp and
// errors.hpp it is the whole contract. Invariant: an engine accepts a processor only from a
// module built with the same SDK ABI version and the same C++ standard library ABI.
//
//   #include <jobforge/sdk_python.hpp>
//   class Upper : public jobforge::Processor { std::string run(jobforge::Context&, ...) ... };
//   m.def("processor", [] { return jobforge::sdk::processor_capsule(std::make_shared<Upper>()); });
//
// docs/native-processors.md explains the ABI rules.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "jobforge/errors.hpp"
#include "jobforge/processor.hpp"

// Bumped whenever Processor, Context, ExecutionGate, the error classes or ProcessorExport change
// in a way that breaks a module built against the previous headers.
#define JOBFORGE_SDK_ABI_VERSION 1

namespace jobforge::sdk {

inline constexpr uint32_t abi_version = JOBFORGE_SDK_ABI_VERSION;
// The PyCapsule name a module's processor travels under; it carries the ABI version too.
inline constexpr const char* capsule_name = "jobforge.processor.v1";

// The C++ standard library a translation unit is built against. Engine and module exchange
// std::string, std::shared_ptr and exceptions by value, so these must agree.
inline const char* stdlib_abi_tag() noexcept {
#if defined(_LIBCPP_VERSION)
  return "libc++";
#elif defined(__GLIBCXX__)
#if defined(_GLIBCXX_USE_CXX11_ABI) && _GLIBCXX_USE_CXX11_ABI
  return "libstdc++/cxx11";
#else
  return "libstdc++/pre-cxx11";
#endif
#elif defined(_MSC_VER)
  return "msvc";
#else
  return "unknown";
#endif
}

// What a capsule holds: the processor plus what the engine checks before it trusts the layout.
// The fields up to `stdlib` keep their place in every version, so an engine can read an export
// of another version far enough to reject it by name.
struct ProcessorExport {
  uint32_t abi_version = sdk::abi_version;
  uint32_t size = sizeof(ProcessorExport);
  const char* stdlib = stdlib_abi_tag();
  std::shared_ptr<Processor> processor;
};

// A new heap export of `processor`, owned by the capsule (or whatever holds it) until
// destroy_export(). Throws ValidationError for a null processor.
inline ProcessorExport* make_export(std::shared_ptr<Processor> processor) {
  if (!processor) throw ValidationError("processor", "processor must not be null");
  auto* e = new ProcessorExport;
  e->processor = std::move(processor);
  return e;
}

inline void destroy_export(void* pointer) noexcept {
  delete static_cast<ProcessorExport*>(pointer);
}

// Run by the engine on an export it received: empty when it can be used, else why not. Only the
// first three fields are read before they are checked.
inline std::string check_export(const ProcessorExport* e) {
  if (!e) return "the capsule holds no processor";
  if (e->abi_version != abi_version)
    return "the module was built with jobforge SDK ABI version " + std::to_string(e->abi_version) +
           ", this engine needs version " + std::to_string(abi_version) +
           ": rebuild it against this jobforge's headers (jobforge.get_include())";
  if (e->size != sizeof(ProcessorExport))
    return "the module's ProcessorExport is " + std::to_string(e->size) + " bytes, this engine's " +
           std::to_string(sizeof(ProcessorExport)) + ": rebuild it with the same compiler family";
  if (!e->stdlib || std::strcmp(e->stdlib, stdlib_abi_tag()) != 0)
    return std::string("the module uses the C++ library ABI '") + (e->stdlib ? e->stdlib : "?") +
           "', this engine '" + stdlib_abi_tag() + "': build it with the same standard library";
  if (!e->processor) return "the capsule's processor is null";
  return {};
}

}  // namespace jobforge::sdk
