// jobforge._core: the pybind11 binding of the C++ engine. Thin by design: it converts types,
// releases the GIL around every call that can block, and takes it for every call into Python.
// Behaviour lives in cpp/ and python/jobforge/.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "jobforge/cron.hpp"
#include "jobforge/engine.hpp"
#include "jobforge/sdk.hpp"

namespace py = pybind11;
using namespace jobforge;

namespace {

// A number argument of a hot call (int, float, or anything with __float__/__index__ such as
// NumPy scalars; bool is refused), read without pybind11's casters. Raises TypeError naming the
// argument.
// An int argument as int64: one that does not fit is a ValidationError naming it, not
// pybind11's signature dump.
int64_t int64_arg(py::handle value, const char* name) {
  PyObject* o = value.ptr();
  if (!PyLong_Check(o) || PyBool_Check(o))
    throw py::type_error(std::string(name) + " must be an int, got " +
                         std::string(py::str(py::type::handle_of(value).attr("__name__"))));
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
  if (overflow != 0)
    throw ValidationError(name, std::string(name) + " must be between -2**63 and 2**63-1, got " +
                                    std::string(py::str(value)));
  if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
  return v;
}

double number_arg(py::handle value, const char* name) {
  PyObject* o = value.ptr();
  if (PyFloat_CheckExact(o)) return PyFloat_AS_DOUBLE(o);
  if (PyLong_CheckExact(o)) {
    const double d = PyLong_AsDouble(o);
    if (d == -1.0 && PyErr_Occurred()) throw py::error_already_set();  // OverflowError
    return d;
  }
  if (!PyBool_Check(o) && !PyUnicode_Check(o) && !PyBytes_Check(o)) {
    const double d = PyFloat_AsDouble(o);
    if (!(d == -1.0 && PyErr_Occurred())) return d;
    if (!PyErr_ExceptionMatches(PyExc_TypeError)) throw py::error_already_set();
    PyErr_Clear();
  }
  throw py::type_error(std::string(name) + " must be a number, got " +
                       std::string(py::str(py::type::handle_of(value).attr("__name__"))));
}

// A str argument of a hot call, viewed in place (valid while the caller holds the object).
std::string_view text_arg(py::handle value, const char* name) {
  Py_ssize_t size = 0;
  if (!PyUnicode_Check(value.ptr()))
    throw py::type_error(std::string(name) + " must be a str or None, got " +
                         std::string(py::str(py::type::handle_of(value).attr("__name__"))));
  const char* data = PyUnicode_AsUTF8AndSize(value.ptr(), &size);
  if (!data) throw py::error_already_set();
  return {data, static_cast<size_t>(size)};
}

// ---- The GIL at the edges of the interpreter's life ----------------------------------------
//
// A thread that waits for the GIL while the interpreter finalizes is ended by CPython (before
// 3.14) with pthread_exit: a forced unwind that std::terminate()s the process ("terminate called
// without an active exception", SIGABRT) as soon as it meets a noexcept frame such as
// pybind11's ~gil_scoped_release, an std::function or a catch (...). So every place where the
// GIL is taken again here goes through the guards below:
//   - ReleaseGil (every blocking call from Python): its re-acquire parks the thread for ever
//     once the interpreter is exiting, as CPython 3.14 itself does, instead of being killed in
//     the middle of C++ (its destructor lets a forced unwind through, for the last race);
//   - EnterPython (threads of the engine calling Python: event delivery, releasing a
//     reference, interrupting a job, run_now's progress): it declines once the interpreter is
//     exiting, and the caller skips its call into Python;
//   - the worker threads' PythonGate declines too, and the job does not run.
// exit_hook() runs at interpreter exit (registered with atexit when jobforge._core is imported,
// so after jobforge's own handler has stopped the engines, and before finalization): from then
// on the guards decline; it waits, with the GIL released, for threads already on their way in
// to come out.
std::atomic<bool> g_exiting{false};
std::atomic<int> g_inside{0};                 // threads taking, or holding, the GIL through here
std::atomic<unsigned long> g_exit_thread{0};  // the thread that finalizes (never parked)

bool interpreter_exiting() noexcept {
  if (g_exiting.load()) return true;
  if (!Py_IsInitialized()) return true;
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

bool on_exit_thread() noexcept {
  return PyThread_get_thread_ident() == g_exit_thread.load();
}

[[noreturn]] void park_forever() noexcept {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(24));
}

// Counts a thread in g_inside while it takes the GIL (and, for EnterPython, while it holds it).
struct Inside {
  Inside() noexcept { g_inside.fetch_add(1); }
  ~Inside() { g_inside.fetch_sub(1); }
  Inside(const Inside&) = delete;
  Inside& operator=(const Inside&) = delete;
};

// Takes the GIL again in a thread that released it (a Python thread in a blocking call).
void restore_thread(PyThreadState* state) noexcept(false) {
  std::optional<Inside> inside(std::in_place);
  if (interpreter_exiting() && !on_exit_thread()) {
    inside.reset();
    park_forever();
  }
  PyEval_RestoreThread(state);  // a forced unwind (the last race) passes through: not noexcept
}

// The GIL released for a blocking call of a Python thread; used for every release here
// (directly and as py::call_guard<ReleaseGil>).
class ReleaseGil {
 public:
  ReleaseGil() : state_(PyEval_SaveThread()) {}
  ~ReleaseGil() noexcept(false) { restore_thread(state_); }
  ReleaseGil(const ReleaseGil&) = delete;
  ReleaseGil& operator=(const ReleaseGil&) = delete;

 private:
  PyThreadState* state_;
};

// The GIL taken by any thread (usually one of the engine's), unless the interpreter is exiting:
// then `ok()` is false and the caller must not touch Python.
class EnterPython {
 public:
  EnterPython() {
    if (interpreter_exiting() && !on_exit_thread()) return;
    inside_.emplace();
    if (interpreter_exiting() && !on_exit_thread()) {  // exit_hook() began in between
      inside_.reset();
      return;
    }
    state_ = PyGILState_Ensure();
    ok_ = true;
  }
  ~EnterPython() {
    if (ok_) PyGILState_Release(state_);
  }
  EnterPython(const EnterPython&) = delete;
  EnterPython& operator=(const EnterPython&) = delete;
  bool ok() const noexcept { return ok_; }

 private:
  std::optional<Inside> inside_;
  PyGILState_STATE state_{};
  bool ok_ = false;
};

std::atomic<unsigned long> g_main_thread{0};

// Blocking waits of the main thread run in slices of this length, with the GIL released; between
// slices a pending signal's handler runs (Ctrl-C raises KeyboardInterrupt there).
constexpr int64_t kSignalSliceMs = 100;

bool on_main_thread() noexcept {
  return PyThread_get_thread_ident() == g_main_thread.load();
}

// Raises the exception of a signal handler that ran (KeyboardInterrupt for Ctrl-C).
void check_signals() {
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

// At interpreter exit (atexit, GIL held): from now on no thread enters Python through here;
// those already in are waited for (GIL released, at most 2 s) so none is still waiting for the
// GIL when finalization begins.
void exit_hook() {
  g_exit_thread.store(PyThread_get_thread_ident());
  g_exiting.store(true);
  ReleaseGil release;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (g_inside.load() > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

// A Python object that may be released from any thread: it takes the GIL to drop its reference
// (and leaks it if the interpreter is exiting).
class PyRef {
 public:
  explicit PyRef(py::object obj) : obj_(std::move(obj)) {}
  ~PyRef() {
    EnterPython gil;
    if (!gil.ok()) {
      obj_.release();  // the interpreter is exiting: leaked, never touched again
      return;
    }
    obj_ = py::object();
  }
  const py::object& get() const { return obj_; }

 private:
  py::object obj_;
};

py::object error_class(const char* name) {
  return py::module_::import("jobforge.errors").attr(name);
}

// The GIL as an ExecutionGate. Each worker thread keeps one Python thread state for its whole
// life (creating one per acquisition costs more than a small Python job), deleted at thread exit.
class PythonGate final : public ExecutionGate {
 public:
  // Once the interpreter is exiting the gate declines (refused_): the thread does not take the
  // GIL, and the Python processor does not run the job (PythonProcessor::run).
  void enter() override {
    thread_local ThreadState state;
    refused_ = true;
    if (interpreter_exiting()) return;
    g_inside.fetch_add(1);
    if (interpreter_exiting()) {
      g_inside.fetch_sub(1);
      return;
    }
    if (!state.tstate) state.tstate = PyThreadState_New(interpreter_);
    PyEval_RestoreThread(state.tstate);
    refused_ = false;
  }
  void leave() override {
    if (refused_) return;
    PyEval_SaveThread();
    g_inside.fetch_sub(1);
  }
  void set_interpreter(PyInterpreterState* interp) { interpreter_ = interp; }

 private:
  struct ThreadState {
    PyThreadState* tstate = nullptr;
    ~ThreadState() {
      if (!tstate) return;
      Inside inside;
      if (interpreter_exiting()) return;  // the state is left to the interpreter
      PyEval_RestoreThread(tstate);
      PyThreadState_Clear(tstate);
      PyThreadState_DeleteCurrent();
    }
  };
  static inline thread_local bool refused_ = false;
  PyInterpreterState* interpreter_ = nullptr;
};

PythonGate& python_gate() {
  static PythonGate gate;
  return gate;
}

// A processor written in Python. The callable is jobforge's own adapter
// (python/jobforge/_processors.py), which returns ("ok", result_json), ("cancelled", message) or
// ("error", message, traceback, permanent).
class PythonProcessor final : public Processor {
 public:
  explicit PythonProcessor(py::object adapter) : adapter_(std::make_shared<PyRef>(std::move(adapter))) {}

  ExecutionGate* gate() noexcept override { return &python_gate(); }

  // Raises JobCancelled asynchronously in the thread running ctx's job: it surfaces at the next
  // Python bytecode (it cannot interrupt a long call into C, such as time.sleep or a C extension).
  void interrupt(Context& ctx) override {
    EnterPython gil;
    if (!gil.ok()) return;
    // With the GIL held the worker is not between its run and forget(): the entry is exact.
    std::lock_guard lock(running_mutex_);
    auto it = running_.find(&ctx);
    if (it == running_.end()) return;
    PyThreadState_SetAsyncExc(it->second, error_class("JobCancelled").ptr());
  }

  std::string run(Context& ctx, const std::string& payload_json) override {
    // The engine enters the gate first; a direct caller may not have.
    std::optional<EnterPython> gil;
    if (!PyGILState_Check()) {
      gil.emplace();
      if (!gil->ok())
        throw ProcessorFailure("not run: the Python interpreter is exiting", "", false);
    }
    const unsigned long thread = PyThread_get_thread_ident();
    {
      std::lock_guard lock(running_mutex_);
      running_[&ctx] = thread;
    }
    py::tuple out;
    try {
      out = adapter_->get()(ctx.shared_from_this(), py::str(payload_json));
    } catch (py::error_already_set& e) {
      forget(ctx, thread);
      if (e.matches(error_class("JobCancelled")))  // interrupted outside the user's function
        throw JobCancelled(e.what());
      throw ProcessorFailure(std::string("jobforge adapter failed: ") + e.what(), "", false);
    }
    forget(ctx, thread);
    const std::string kind = out[0].cast<std::string>();
    if (kind == "ok") return out[1].cast<std::string>();
    if (kind == "cancelled") throw JobCancelled(out[1].cast<std::string>());
    if (kind == "retry")  // ("retry", message, traceback, delay_ms)
      throw ProcessorFailure(out[1].cast<std::string>(), out[2].cast<std::string>(), false,
                             out[3].cast<int64_t>());
    throw ProcessorFailure(out[1].cast<std::string>(), out[2].cast<std::string>(),
                           out[3].cast<bool>());
  }

 private:
  // Called with the GIL held: stop tracking the run and drop an interruption that came too late
  // to land in it, so it cannot hit the thread's next job.
  void forget(Context& ctx, unsigned long thread) {
    {
      std::lock_guard lock(running_mutex_);
      running_.erase(&ctx);
    }
    PyThreadState_SetAsyncExc(thread, nullptr);
  }

  std::shared_ptr<PyRef> adapter_;
  std::mutex running_mutex_;
  std::unordered_map<Context*, unsigned long> running_;  // run in progress → its thread
};

// Sets a Python exception of class `cls` with `text`, which may hold bytes that are not UTF-8
// (an SQLite message quoting a damaged file): they are replaced, never a UnicodeDecodeError.
void set_error(PyObject* cls, const char* text) {
  PyObject* message = PyUnicode_DecodeUTF8(text, static_cast<Py_ssize_t>(std::strlen(text)), "replace");
  if (!message) {
    PyErr_Clear();
    PyErr_SetString(cls, "(message not decodable)");
    return;
  }
  PyErr_SetObject(cls, message);
  Py_DECREF(message);
}

void translate_errors(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const QueueFull& e) {
    PyErr_SetString(error_class("QueueFull").ptr(), e.what());
  } catch (const UnknownJobType& e) {
    set_error(error_class("UnknownJobType").ptr(), e.what());
  } catch (const ValidationError& e) {
    // jobforge.ValidationError is also a ValueError; it carries the field's name.
    py::object cls = error_class("ValidationError");
    py::object exc = cls(py::reinterpret_steal<py::object>(PyUnicode_DecodeUTF8(
                             e.what(), static_cast<Py_ssize_t>(std::strlen(e.what())), "replace")),
                         e.field());
    PyErr_SetObject(cls.ptr(), exc.ptr());
  } catch (const StoreError& e) {
    set_error(error_class("StoreError").ptr(), e.what());
  } catch (const JobCancelled& e) {
    set_error(error_class("JobCancelled").ptr(), e.what());
  } catch (const SingletonTaken& e) {
    set_error(error_class("SingletonError").ptr(), e.what());
  } catch (const InvalidTransition& e) {
    set_error(error_class("InvalidTransition").ptr(), e.what());
  } catch (const Error& e) {
    set_error(error_class("JobforgeError").ptr(), e.what());
  }
}

// Engines are destroyed with the GIL released: stopping joins worker threads that may be
// waiting for the GIL to finish a Python processor.
struct ReleaseGilDeleter {
  void operator()(Engine* e) const {
    ReleaseGil release;
    delete e;
  }
};
using EngineHolder = std::unique_ptr<Engine, ReleaseGilDeleter>;

JobSpec make_spec(const std::string& type, std::string payload_json, std::optional<int> priority,
                  std::optional<int> max_attempts, std::optional<int64_t> timeout_ms,
                  std::optional<int64_t> retry_delay_ms, std::optional<std::string> backoff,
                  int64_t delay_ms, std::optional<std::string> parent_id, bool user_initiated) {
  JobSpec s;
  s.type = type;
  s.payload_json = std::move(payload_json);
  s.priority = priority;
  s.max_attempts = max_attempts;
  s.timeout_ms = timeout_ms;
  s.retry_delay_ms = retry_delay_ms;
  s.backoff = std::move(backoff);
  s.delay_ms = delay_ms;
  s.parent_id = std::move(parent_id);
  s.user_initiated = user_initiated;
  return s;
}

py::dict stats_dict(const Stats& st) {
  py::dict d;
  d["total"] = st.total;
  for (int i = 0; i < kStatusCount; ++i)
    d[py::str(std::string(to_string(static_cast<Status>(i))))] = st.by_status[i];
  return d;
}

py::dict type_stats_dict(const TypeStats& t) {
  py::dict d;
  py::dict counts;
  for (int i = 0; i < kStatusCount; ++i)
    counts[py::str(std::string(to_string(static_cast<Status>(i))))] = t.by_status[i];
  d["counts"] = counts;
  d["finished"] = t.finished;
  d["completed"] = t.completed;
  d["failed"] = t.failed;
  d["cancelled"] = t.cancelled;
  d["timeout"] = t.timed_out;
  d["retried"] = t.retried;
  d["runs"] = t.runs;
  d["mean_run_ms"] = t.mean_run_ms;
  d["p50_run_ms"] = t.p50_run_ms;
  d["p95_run_ms"] = t.p95_run_ms;
  d["error_rate"] = t.error_rate;
  d["created_per_s"] = t.created_per_s;
  d["completed_per_s"] = t.completed_per_s;
  return d;
}

py::dict stats_detail_dict(const StatsDetail& sd) {
  py::dict d = stats_dict(sd.totals);
  py::dict types;
  for (const auto& t : sd.types) types[py::str(t.type)] = type_stats_dict(t);
  d["types"] = types;
  d["queued_total"] = sd.queued;
  d["due"] = sd.due;
  d["oldest_due_age_ms"] = sd.oldest_due_age_ms;
  d["window_ms"] = sd.window_ms;
  d["rate_window_ms"] = sd.rate_window_ms;
  return d;
}

py::dict worker_dict(const WorkerInfo& w) {
  py::dict d;
  d["id"] = w.id;
  d["hostname"] = w.hostname;
  d["pid"] = w.pid;
  d["version"] = w.version;
  d["started_at"] = w.started_at;
  d["heartbeat_at"] = w.heartbeat_at;
  d["state"] = w.state;
  d["claim_mode"] = w.claim_mode;
  d["singleton_role"] = w.singleton_role;
  return d;
}

std::optional<Status> status_arg(const std::optional<std::string>& s) {
  if (!s) return std::nullopt;
  auto parsed = parse_status(*s);
  if (!parsed)
    throw ValidationError("status", "status must be one of created, queued, running, completed, "
                                    "failed, cancelled, timeout; got '" + *s + "'");
  return parsed;
}

// A job spec from the dict python/jobforge/engine.py builds (keys as JobSpec's fields).
JobSpec spec_from_dict(const py::dict& d) {
  auto get = [&](const char* key) -> py::object {
    return d.contains(key) ? py::object(d[key]) : py::object(py::none());
  };
  auto opt_int = [&](const char* key) -> std::optional<int64_t> {
    auto v = get(key);
    return v.is_none() ? std::nullopt : std::optional<int64_t>(v.cast<int64_t>());
  };
  auto opt_str = [&](const char* key) -> std::optional<std::string> {
    auto v = get(key);
    return v.is_none() ? std::nullopt : std::optional<std::string>(v.cast<std::string>());
  };
  JobSpec s;
  s.type = d["type"].cast<std::string>();
  s.payload_json = d.contains("payload_json") ? d["payload_json"].cast<std::string>() : "null";
  if (auto v = opt_int("priority")) s.priority = static_cast<int>(*v);
  if (auto v = opt_int("max_attempts")) s.max_attempts = static_cast<int>(*v);
  s.timeout_ms = opt_int("timeout_ms");
  s.retry_delay_ms = opt_int("retry_delay_ms");
  s.backoff = opt_str("backoff");
  s.delay_ms = opt_int("delay_ms").value_or(0);
  s.parent_id = opt_str("parent_id");
  if (d.contains("user_initiated")) s.user_initiated = d["user_initiated"].cast<bool>();
  if (auto v = opt_str("queue")) s.queue = *v;
  s.unique_key = opt_str("unique_key");
  s.unique_for_ms = opt_int("unique_for_ms").value_or(0);
  if (!get("depends_on").is_none()) s.depends_on = d["depends_on"].cast<std::vector<std::string>>();
  if (!get("depends_on_index").is_none())
    s.depends_on_index = d["depends_on_index"].cast<std::vector<size_t>>();
  if (d.contains("run_if_dependency_fails"))
    s.run_if_dependency_fails = d["run_if_dependency_fails"].cast<bool>();
  return s;
}

py::dict schedule_dict(const Schedule& sc) {
  py::dict d;
  d["name"] = sc.name;
  d["cron"] = sc.cron;
  d["timezone"] = sc.timezone;
  d["type"] = sc.type;
  d["payload_json"] = sc.payload_json;
  d["priority"] = sc.priority ? py::object(py::int_(*sc.priority)) : py::object(py::none());
  d["queue"] = sc.queue;
  d["misfire"] = sc.misfire;
  d["next_fire_at"] = sc.next_fire_at;
  d["last_fire_at"] = sc.last_fire_at;
  d["last_job_id"] = sc.last_job_id;
  d["created_at"] = sc.created_at;
  return d;
}

// What an enqueue call stored, also put in `written` (a list the Python caller made) before it
// returns with the GIL held: a Ctrl-C whose KeyboardInterrupt is raised as the call returns, before
// the caller holds the result, cannot lose the jobs (python/jobforge/engine.py returns them all
// the same, see _return_after_interrupt). `many`: `stored` is a list of records, else one record.
py::object report_written(py::object stored, const py::object& written, bool many) {
  if (!written.is_none()) {
    py::list out = py::reinterpret_borrow<py::list>(written);
    if (many) {
      for (auto record : stored) out.append(record);
    } else {
      out.append(stored);
    }
  }
  return stored;
}

// A Python callable as run_now's progress callback; it takes the GIL for each call.
DirectProgress direct_progress(py::object callback) {
  if (callback.is_none()) return nullptr;
  auto ref = std::make_shared<PyRef>(std::move(callback));
  return [ref](double current, double total, const std::string& message) {
    EnterPython gil;
    if (!gil.ok()) return;  // the interpreter is exiting
    ref->get()(current, total, message);
  };
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "jobforge's C++ engine (private; use the jobforge package)";
  m.attr("__version__") = JOBFORGE_VERSION;
  m.def(
      "cron_next",
      [](const std::string& expression, int64_t after_ms, const std::string& timezone) {
        return CronSpec::parse(expression, timezone).next_after(after_ms);
      },
      py::arg("expression"), py::arg("after_ms"), py::arg("timezone") = "UTC",
      "The first fire time (Unix ms) of a cron expression after after_ms (for tests and tools).");
  m.def("_set_test_clock_offset_ms", &set_test_clock_offset_ms, py::arg("offset_ms"),
        "Test only: shifts this process's wall clock, as a clock step would.");
  m.def("redact_url", &redact_url, py::arg("path"),
        "The path for display: a PostgreSQL URL's passwords replaced by ***.");
  m.attr("SDK_ABI_VERSION") = sdk::abi_version;
  m.attr("SDK_CAPSULE_NAME") = sdk::capsule_name;
  m.attr("SDK_STDLIB") = sdk::stdlib_abi_tag();
  m.attr("MAX_PAYLOAD_BYTES") = EngineConfig{}.max_payload_bytes;
  py::register_exception_translator(&translate_errors);
  python_gate().set_interpreter(PyThreadState_Get()->interp);
  g_main_thread =
      py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  g_exit_thread = g_main_thread.load();
  // Runs after jobforge's own atexit handler (registered later, by jobforge.engine).
  py::module_::import("atexit").attr("register")(py::cpp_function(&exit_hook));
  // A forked child has one thread, the one that forked: its new main thread, inside nothing.
  py::module_::import("os").attr("register_at_fork")(
      py::arg("after_in_child") = py::cpp_function([] {
        g_main_thread = PyThread_get_thread_ident();
        g_exit_thread = g_main_thread.load();
        g_inside = 0;
      }));

  py::class_<Job>(m, "JobRecord")
      .def_readonly("id", &Job::id)
      .def_readonly("type", &Job::type)
      .def_property_readonly("status", [](const Job& j) { return std::string(to_string(j.status)); })
      .def_readonly("priority", &Job::priority)
      .def_readonly("payload_json", &Job::payload_json)
      .def_readonly("progress", &Job::progress)
      .def_readonly("progress_current", &Job::progress_current)
      .def_readonly("progress_total", &Job::progress_total)
      .def_readonly("message", &Job::message)
      .def_readonly("result_json", &Job::result_json)
      .def_readonly("error", &Job::error)
      .def_readonly("error_detail", &Job::error_detail)
      .def_readonly("attempts", &Job::attempts)
      .def_readonly("max_attempts", &Job::max_attempts)
      .def_readonly("timeout_ms", &Job::timeout_ms)
      .def_readonly("retry_delay_ms", &Job::retry_delay_ms)
      .def_readonly("backoff", &Job::backoff)
      .def_readonly("parent_id", &Job::parent_id)
      .def_readonly("user_initiated", &Job::user_initiated)
      .def_readonly("cancel_requested", &Job::cancel_requested)
      .def_readonly("created_at", &Job::created_at)
      .def_readonly("queued_at", &Job::queued_at)
      .def_readonly("started_at", &Job::started_at)
      .def_readonly("completed_at", &Job::completed_at)
      .def_readonly("run_at", &Job::run_at)
      .def_readonly("timeout_at", &Job::timeout_at)
      .def_readonly("lease_owner", &Job::lease_owner)
      .def_readonly("stage", &Job::stage)
      .def_readonly("outcome_json", &Job::outcome_json)
      .def_readonly("rate", &Job::rate)
      .def_readonly("eta_ms", &Job::eta_ms)
      .def_readonly("queue", &Job::queue)
      .def_readonly("unique_key", &Job::unique_key);

  py::class_<LogRecord>(m, "LogRecord")
      .def_readonly("id", &LogRecord::id)
      .def_readonly("job_id", &LogRecord::job_id)
      .def_readonly("attempt", &LogRecord::attempt)
      .def_readonly("at", &LogRecord::at)
      .def_property_readonly("level",
                             [](const LogRecord& l) { return std::string(to_string(l.level)); })
      .def_readonly("stage", &LogRecord::stage)
      .def_readonly("message", &LogRecord::message)
      .def_readonly("fields_json", &LogRecord::fields_json);

  py::class_<Event>(m, "EventRecord")
      .def_property_readonly("type", [](const Event& e) { return std::string(to_string(e.type)); })
      .def_readonly("job_id", &Event::job_id)
      .def_readonly("job_type", &Event::job_type)
      .def_property_readonly("status", [](const Event& e) { return std::string(to_string(e.status)); })
      .def_property_readonly("previous_status",
                             [](const Event& e) { return std::string(to_string(e.previous_status)); })
      .def_readonly("progress", &Event::progress)
      .def_readonly("progress_current", &Event::progress_current)
      .def_readonly("progress_total", &Event::progress_total)
      .def_readonly("message", &Event::message)
      .def_readonly("result_json", &Event::result_json)
      .def_readonly("error", &Event::error)
      .def_readonly("attempt", &Event::attempt)
      .def_readonly("timestamp", &Event::timestamp)
      .def_readonly("stage", &Event::stage)
      .def_readonly("rate", &Event::rate)
      .def_readonly("eta_ms", &Event::eta_ms)
      .def_property_readonly("level",
                             [](const Event& e) { return std::string(to_string(e.log_level)); })
      .def_readonly("log_id", &Event::log_id)
      .def_readonly("fields_json", &Event::fields_json);

  py::class_<Context, std::shared_ptr<Context>>(m, "Context")
      .def_property_readonly("job_id", &Context::job_id)
      .def_property_readonly("job_type", &Context::job_type)
      .def_property_readonly("attempt", &Context::attempt)
      .def_property_readonly("cancelled", &Context::cancelled)
      .def_property_readonly("stop_reason",
                             [](const Context& c) {
                               switch (c.stop_reason()) {
                                 case StopReason::none: return "";
                                 case StopReason::cancelled: return "cancelled";
                                 case StopReason::timeout: return "timeout";
                                 case StopReason::shutdown: return "shutdown";
                               }
                               return "";
                             })
      .def("check_cancelled", &Context::check_cancelled)
      .def(
          "progress",
          // Called up to millions of times per job: the arguments are read straight from the
          // Python objects (no std::optional, no string copies), errors name the argument.
          [](Context& c, py::handle current, py::handle total, py::handle message,
             py::handle stage) {
            const double cur = number_arg(current, "current");
            const double tot = total.is_none() ? 0.0 : number_arg(total, "total");
            const std::string_view msg = message.is_none() ? std::string_view()
                                                           : text_arg(message, "message");
            if (!stage.is_none()) c.progress(cur, tot, msg, text_arg(stage, "stage"));
            else c.progress(cur, tot, msg);
          },
          py::arg("current"), py::arg("total") = py::none(), py::arg("message") = py::none(),
          py::arg("stage") = py::none())
      .def(
          "stage",
          [](Context& c, const std::string& name, std::optional<double> total) {
            c.stage(name, total.value_or(0));
          },
          py::arg("name"), py::arg("total") = py::none())
      .def("increment", [](Context& c, double n) { c.increment(n); }, py::arg("n") = 1.0)
      .def(
          "log",
          [](Context& c, const std::string& level, const std::string& message,
             const py::kwargs& fields) {
            const auto parsed = parse_log_level(level);
            if (!parsed)
              throw ValidationError("level", "level must be one of debug, info, warning, error; "
                                             "got '" + level + "'");
            std::string fields_json;
            if (fields.size() > 0) {
              // Leaked on purpose: module objects outlive any processor call.
              static py::handle dumps = py::object(py::module_::import("json").attr("dumps")).release();
              static py::handle repr = py::object(py::module_::import("builtins").attr("repr")).release();
              fields_json = py::str(dumps(fields, py::arg("default") = repr));
            }
            c.log(*parsed, message, fields_json);
          },
          py::arg("level"), py::arg("message"))
      .def(
          "count",
          [](Context& c, const std::string& key, py::handle n) { c.count(key, int64_arg(n, "n")); },
          py::arg("key"), py::arg("n") = 1)
      .def_property_readonly("dependency_results", [](Context& c) {
        std::string text;
        {
          ReleaseGil release;
          text = c.dependency_results_json();
        }
        return py::module_::import("jobforge._json").attr("loads")(text);
      });

  py::class_<Engine, EngineHolder>(m, "Engine")
      .def(py::init([](const std::string& path, int workers, int64_t retry_delay_ms,
                       bool allow_unknown_types, int64_t poll_ms, int64_t heartbeat_ms,
                       int64_t lease_ms, int64_t progress_event_ms, bool synchronous_full,
                       std::string singleton_role, int64_t interrupt_grace_ms,
                       bool claim_in_memory, int64_t progress_persist_ms,
                       int progress_persist_percent, int64_t stats_window_ms, int pool_size,
                       std::vector<std::string> queues, int64_t max_queue_size,
                       int64_t misfire_grace_ms, int64_t retention_ms, int64_t cleanup_interval_ms,
                       bool allow_exec, bool exec_inherit_env) {
             EngineConfig c;
             c.allow_exec = allow_exec;
             c.exec_inherit_env = exec_inherit_env;
             c.postgres.pool_size = pool_size;
             c.queues = std::move(queues);
             c.max_queue_size = max_queue_size;
             c.misfire_grace_ms = misfire_grace_ms;
             c.retention_ms = retention_ms;
             c.cleanup_interval_ms = cleanup_interval_ms;
             c.progress_persist_ms = progress_persist_ms;
             c.progress_persist_percent = progress_persist_percent;
             c.stats_window_ms = stats_window_ms;
             c.path = path;
             c.workers = workers;
             c.default_retry_delay_ms = retry_delay_ms;
             c.allow_unknown_types = allow_unknown_types;
             c.poll_ms = poll_ms;
             c.heartbeat_ms = heartbeat_ms;
             c.lease_ms = lease_ms;
             c.progress_event_ms = progress_event_ms;
             c.sqlite.synchronous_full = synchronous_full;
             c.singleton_role = std::move(singleton_role);
             c.interrupt_grace_ms = interrupt_grace_ms;
             c.claim_in_memory = claim_in_memory;
             ReleaseGil release;
             return EngineHolder(new Engine(c));
           }),
           py::arg("path"), py::arg("workers") = 4, py::arg("retry_delay_ms") = 1000,
           py::arg("allow_unknown_types") = false, py::arg("poll_ms") = 250,
           py::arg("heartbeat_ms") = 5000, py::arg("lease_ms") = 30000,
           py::arg("progress_event_ms") = 100, py::arg("synchronous_full") = false,
           py::arg("singleton_role") = "", py::arg("interrupt_grace_ms") = 1000,
           py::arg("claim_in_memory") = true, py::arg("progress_persist_ms") = 30000,
           py::arg("progress_persist_percent") = 10, py::arg("stats_window_ms") = 3600000,
           py::arg("pool_size") = 4,
           py::arg("queues") = std::vector<std::string>{}, py::arg("max_queue_size") = 0,
           py::arg("misfire_grace_ms") = 60000, py::arg("retention_ms") = 0,
           py::arg("cleanup_interval_ms") = 3600000, py::arg("allow_exec") = false,
           py::arg("exec_inherit_env") = false)
      .def_property_readonly("worker_id", &Engine::worker_id)
      .def_property_readonly("path", [](const Engine& e) { return redact_url(e.config().path); })
      .def_property_readonly("workers", [](const Engine& e) { return e.config().workers; })
      .def("register_python_processor",
           [](Engine& e, const std::string& type, py::object adapter, std::optional<int64_t> timeout_ms,
              std::optional<int> max_attempts, std::optional<int64_t> retry_delay_ms,
              std::optional<std::string> backoff, std::optional<int> priority,
              std::optional<int> max_concurrent, std::optional<std::string> rate) {
             if (backoff) Backoff::parse(*backoff);  // validate now, not at the first enqueue
             ProcessorOptions o{timeout_ms, max_attempts, retry_delay_ms, backoff, priority,
                                max_concurrent, rate};
             auto p = std::make_shared<PythonProcessor>(std::move(adapter));
             ReleaseGil release;
             e.register_processor(type, std::move(p), o);
           },
           py::arg("type"), py::arg("adapter"), py::arg("timeout_ms") = py::none(),
           py::arg("max_attempts") = py::none(), py::arg("retry_delay_ms") = py::none(),
           py::arg("backoff") = py::none(), py::arg("priority") = py::none(),
           py::arg("max_concurrent") = py::none(), py::arg("rate") = py::none())
      .def("register_native",
           [](Engine& e, const std::string& type, py::object capsule, std::optional<int64_t> timeout_ms,
              std::optional<int> max_attempts, std::optional<int64_t> retry_delay_ms,
              std::optional<std::string> backoff, std::optional<int> priority) {
             // A processor built elsewhere against the SDK (jobforge/sdk.hpp): checked, not trusted.
             if (!PyCapsule_CheckExact(capsule.ptr()))
               throw py::type_error("processor must be a capsule named '" +
                                    std::string(sdk::capsule_name) + "', got " +
                                    std::string(py::str(py::type::of(capsule).attr("__name__"))));
             const char* name = PyCapsule_GetName(capsule.ptr());
             if (!name || std::string(name) != sdk::capsule_name)
               throw ValidationError("processor", "capsule is named '" + std::string(name ? name : "") +
                                                      "', this engine takes '" + sdk::capsule_name +
                                                      "' (rebuild the module against this jobforge's SDK)");
             auto* exported = static_cast<sdk::ProcessorExport*>(PyCapsule_GetPointer(capsule.ptr(), name));
             if (const std::string why = sdk::check_export(exported); !why.empty())
               throw ValidationError("processor", "cannot register '" + type + "': " + why);
             if (backoff) Backoff::parse(*backoff);
             ProcessorOptions o{timeout_ms, max_attempts, retry_delay_ms, backoff, priority};
             std::shared_ptr<Processor> p = exported->processor;
             ReleaseGil release;
             e.register_processor(type, std::move(p), o);
           },
           py::arg("type"), py::arg("capsule"), py::arg("timeout_ms") = py::none(),
           py::arg("max_attempts") = py::none(), py::arg("retry_delay_ms") = py::none(),
           py::arg("backoff") = py::none(), py::arg("priority") = py::none())
      .def("has_processor", &Engine::has_processor)
      .def("processor_types", &Engine::processor_types)
      .def("start", &Engine::start, py::call_guard<ReleaseGil>())
      .def("stop", &Engine::stop, py::arg("wait") = true, py::call_guard<ReleaseGil>())
      .def_property_readonly("running", &Engine::running)
      .def(
          "enqueue",
          [](Engine& e, const std::string& type, std::string payload_json, std::optional<int> priority,
             std::optional<int> max_attempts, std::optional<int64_t> timeout_ms,
             std::optional<int64_t> retry_delay_ms, std::optional<std::string> backoff,
             int64_t delay_ms, std::optional<std::string> parent_id, bool user_initiated,
             py::object written) {
            JobSpec spec = make_spec(type, std::move(payload_json), priority, max_attempts,
                                     timeout_ms, retry_delay_ms, std::move(backoff), delay_ms,
                                     std::move(parent_id), user_initiated);
            Job job;
            {
              ReleaseGil release;
              job = e.enqueue(spec);
            }
            return report_written(py::cast(std::move(job)), written, false);
          },
          py::arg("type"), py::arg("payload_json"), py::arg("priority") = py::none(),
          py::arg("max_attempts") = py::none(), py::arg("timeout_ms") = py::none(),
          py::arg("retry_delay_ms") = py::none(), py::arg("backoff") = py::none(),
          py::arg("delay_ms") = 0,
          py::arg("parent_id") = py::none(), py::arg("user_initiated") = true,
          py::arg("written") = py::none())
      .def(
          "enqueue_many",
          [](Engine& e, const std::string& type, std::vector<std::string> payloads,
             std::optional<int> priority, std::optional<int> max_attempts,
             std::optional<int64_t> timeout_ms, std::optional<int64_t> retry_delay_ms,
             std::optional<std::string> backoff, int64_t delay_ms,
             std::optional<std::string> parent_id, bool user_initiated, py::object written) {
            std::vector<JobSpec> specs;
            specs.reserve(payloads.size());
            for (auto& p : payloads)
              specs.push_back(make_spec(type, std::move(p), priority, max_attempts, timeout_ms,
                                        retry_delay_ms, backoff, delay_ms, parent_id,
                                        user_initiated));
            std::vector<Job> jobs;
            {
              ReleaseGil release;
              jobs = e.enqueue_many(specs);
            }
            return report_written(py::cast(std::move(jobs)), written, true);
          },
          py::arg("type"), py::arg("payloads"), py::arg("priority") = py::none(),
          py::arg("max_attempts") = py::none(), py::arg("timeout_ms") = py::none(),
          py::arg("retry_delay_ms") = py::none(), py::arg("backoff") = py::none(),
          py::arg("delay_ms") = 0,
          py::arg("parent_id") = py::none(), py::arg("user_initiated") = true,
          py::arg("written") = py::none())
      .def("get", &Engine::get, py::arg("job_id"), py::call_guard<ReleaseGil>())
      .def(
          "jobs",
          [](Engine& e, std::optional<std::string> status, std::optional<std::string> type,
             std::optional<std::string> parent, int limit, int offset) {
            JobQuery q;
            q.status = status_arg(status);
            q.type = std::move(type);
            q.parent_id = std::move(parent);
            q.limit = limit;
            q.offset = offset;
            ReleaseGil release;
            return e.jobs(q);
          },
          py::arg("status") = py::none(), py::arg("type") = py::none(),
          py::arg("parent") = py::none(), py::arg("limit") = 100, py::arg("offset") = 0)
      .def("active", &Engine::active, py::arg("limit") = 1000, py::call_guard<ReleaseGil>())
      .def("stats",
           [](Engine& e) {
             Stats st;
             {
               ReleaseGil release;
               st = e.stats();
             }
             return stats_dict(st);
           })
      .def("stats_detail",
           [](Engine& e) {
             StatsDetail sd;
             {
               ReleaseGil release;
               sd = e.stats_detail();
             }
             return stats_detail_dict(sd);
           })
      .def("worker_list",
           [](Engine& e) {
             std::vector<WorkerInfo> ws;
             {
               ReleaseGil release;
               ws = e.workers();
             }
             py::list out;
             for (const auto& w : ws) out.append(worker_dict(w));
             return out;
           })
      .def("published_types",
           [](Engine& e) {
             std::vector<PublishedType> rows;
             {
               ReleaseGil release;
               rows = e.published_types();
             }
             py::list out;
             for (const auto& r : rows) {
               py::dict d;
               d["worker_id"] = r.worker_id;
               d["type"] = r.type;
               d["options_json"] = r.options_json;
               d["published_at"] = r.published_at;
               d["refreshed_at"] = r.refreshed_at;
               out.append(d);
             }
             return out;
           })
      .def("unserved_types", &Engine::unserved_types, py::arg("types"),
           py::call_guard<ReleaseGil>())
      .def("integrity_check", &Engine::integrity_check, py::call_guard<ReleaseGil>())
      .def("local_stats",
           [](Engine& e) {
             const auto l = e.local_stats();
             py::dict d;
             d["workers"] = l.workers;
             d["claimed"] = l.claimed;
             d["running"] = l.running;
             d["progress_writes"] = l.progress_writes;
             d["log_lines"] = l.log_lines;
             d["events_queued"] = l.events_queued;
             d["events_coalesced"] = l.events_coalesced;
             d["events_dropped"] = l.events_dropped;
             return d;
           })
      .def(
          "logs",
          [](Engine& e, const std::string& job_id, std::optional<std::string> level,
             int64_t since_ms, int64_t after_id, int limit, bool newest) {
            LogQuery q;
            q.job_id = job_id;
            if (level) {
              auto parsed = parse_log_level(*level);
              if (!parsed)
                throw ValidationError("level", "level must be one of debug, info, warning, "
                                               "error; got '" + *level + "'");
              q.min_level = *parsed;
            }
            q.since = since_ms;
            q.after_id = after_id;
            q.limit = limit;
            q.newest = newest;
            ReleaseGil release;
            return e.logs(q);
          },
          py::arg("job_id"), py::arg("level") = py::none(), py::arg("since_ms") = 0,
          py::arg("after_id") = 0, py::arg("limit") = 1000, py::arg("newest") = false)
      .def("store_health", [](Engine& e) { return e.store().health(); },
           py::call_guard<ReleaseGil>())
      .def("cancel", &Engine::cancel, py::call_guard<ReleaseGil>())
      .def("retry", &Engine::retry, py::call_guard<ReleaseGil>())
      .def("abort_all", &Engine::abort_all, py::call_guard<ReleaseGil>())
      .def(
          "wait",
          [](Engine& e, const std::string& id, std::optional<int64_t> timeout_ms) {
            // On the main thread, in slices: Ctrl-C raises KeyboardInterrupt within one.
            using std::chrono::milliseconds;
            using Clock = std::chrono::steady_clock;
            std::optional<Clock::time_point> deadline;
            if (timeout_ms)
              deadline = Clock::now() + milliseconds(std::max<int64_t>(0, *timeout_ms));
            const bool sliced = on_main_thread();
            for (;;) {
              std::optional<milliseconds> t;
              if (deadline)
                t = std::max(milliseconds(0),
                             std::chrono::duration_cast<milliseconds>(*deadline - Clock::now()));
              if (sliced)
                t = std::min(t.value_or(milliseconds(kSignalSliceMs)),
                             milliseconds(kSignalSliceMs));
              std::optional<Job> job;
              {
                ReleaseGil release;
                job = e.wait(id, t);
              }
              if (job || !sliced || (deadline && Clock::now() >= *deadline)) return job;
              check_signals();
            }
          },
          py::arg("job_id"), py::arg("timeout_ms") = py::none())
      .def(
          "subscribe",
          [](Engine& e, py::object callback) {
            // One GIL acquisition per batch of events; the Python side fans out to subscribers.
            auto ref = std::make_shared<PyRef>(std::move(callback));
            return e.events().subscribe([ref](const std::vector<Event>& batch) {
              EnterPython gil;
              if (!gil.ok()) return;  // the interpreter is exiting: nobody is listening
              try {
                ref->get()(py::cast(batch));
              } catch (py::error_already_set& err) {
                err.discard_as_unraisable("jobforge event delivery");
              }
            });
          },
          py::arg("callback"))
      .def("unsubscribe", [](Engine& e, SubscriptionId id) { e.events().unsubscribe(id); },
           py::call_guard<ReleaseGil>())
      .def("flush_events", [](Engine& e) { e.store().flush(); e.events().flush(); },
           py::call_guard<ReleaseGil>())
      .def("on_delivery_thread", [](Engine& e) { return e.events().on_delivery_thread(); })
      // Read (not called) by python/jobforge/engine.py right before an enqueue returns the jobs
      // it stored after a Ctrl-C: simulates the SIGINT again. An attribute read runs no Python
      // code, so the KeyboardInterrupt is raised at the caller's next check, once it holds them.
      .def_property_readonly("interrupt_again", [](Engine&) { PyErr_SetInterrupt(); })
      // ---- workflows (docs/workflows.md) ----
      .def(
          "enqueue_specs",
          [](Engine& e, py::list specs, py::object written) {
            std::vector<JobSpec> out;
            for (auto item : specs) out.push_back(spec_from_dict(item.cast<py::dict>()));
            std::vector<Job> jobs;
            {
              ReleaseGil release;
              jobs = e.enqueue_many(out);
            }
            return report_written(py::cast(std::move(jobs)), written, true);
          },
          py::arg("specs"), py::arg("written") = py::none())
      .def(
          "enqueue_batch",
          [](Engine& e, py::dict parent, py::list children, std::string on_child_failure,
             py::object written) {
            BatchSpec b;
            b.parent = spec_from_dict(parent);
            for (auto item : children) b.children.push_back(spec_from_dict(item.cast<py::dict>()));
            b.on_child_failure = std::move(on_child_failure);
            std::vector<Job> jobs;
            {
              ReleaseGil release;
              jobs = e.enqueue_batch(b);
            }
            return report_written(py::cast(std::move(jobs)), written, true);
          },
          py::arg("parent"), py::arg("children"), py::arg("on_child_failure") = "continue",
          py::arg("written") = py::none())
      .def("dependencies", &Engine::dependencies, py::arg("job_id"),
           py::call_guard<ReleaseGil>())
      .def("set_queue_limits", &Engine::set_queue_limits, py::arg("queue"),
           py::arg("max_concurrent") = 0, py::arg("max_size") = 0,
           py::call_guard<ReleaseGil>())
      .def(
          "schedule",
          [](Engine& e, std::string name, std::string cron, std::string type, std::string payload_json,
             std::optional<int> priority, std::string timezone, std::string misfire, std::string queue) {
            Schedule sc;
            sc.name = std::move(name);
            sc.cron = std::move(cron);
            sc.type = std::move(type);
            sc.payload_json = std::move(payload_json);
            sc.priority = priority;
            sc.timezone = std::move(timezone);
            sc.misfire = std::move(misfire);
            sc.queue = std::move(queue);
            Schedule stored;
            {
              ReleaseGil release;
              stored = e.schedule(std::move(sc));
            }
            return schedule_dict(stored);
          },
          py::arg("name"), py::arg("cron"), py::arg("type"), py::arg("payload_json") = "null",
          py::arg("priority") = py::none(), py::arg("timezone") = "UTC",
          py::arg("misfire") = "run_once", py::arg("queue") = "default")
      .def("unschedule", &Engine::unschedule, py::arg("name"), py::call_guard<ReleaseGil>())
      .def("schedules",
           [](Engine& e) {
             std::vector<Schedule> all;
             {
               ReleaseGil release;
               all = e.schedules();
             }
             py::list out;
             for (const auto& sc : all) out.append(schedule_dict(sc));
             return out;
           })
      .def("fire_due_schedules", &Engine::fire_due_schedules, py::call_guard<ReleaseGil>())
      .def("cleanup", [](Engine& e, int64_t older_than_ms) { return e.cleanup(older_than_ms); },
           py::arg("older_than_ms"), py::call_guard<ReleaseGil>())
      .def(
          "run_now",
          [](Engine& e, const std::string& type, const std::string& payload_json, py::object progress) {
            DirectProgress cb = direct_progress(std::move(progress));
            ReleaseGil release;
            return e.run_now(type, payload_json, std::move(cb));
          },
          py::arg("type"), py::arg("payload_json"), py::arg("progress") = py::none())
      .def(
          "direct_context",
          [](Engine& e, const std::string& type, py::object progress) {
            return e.direct_context(type, direct_progress(std::move(progress)));
          },
          py::arg("type"), py::arg("progress") = py::none())
      .def("close",
           [](Engine& e) {
        ReleaseGil release;
             e.stop(true);
           });
}
