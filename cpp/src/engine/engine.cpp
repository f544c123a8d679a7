// The engine's machinery: option resolution and validation, the dispatcher (claims due jobs in
// priority order into a small ready queue), the worker threads, the watchdog (timeouts and
// interruptions, never waiting for the store) and maintenance (progress flushes, heartbeats,
// dead-worker rescue, cancel requests from other processes, the claim mode).
#include "jobforge/engine.hpp"

#include "jobforge/cron.hpp"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <set>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "jobforge/processors.hpp"

#ifndef JOBFORGE_VERSION
#define JOBFORGE_VERSION "0.0.0"
#endif

namespace jobforge {
namespace {

using Clock = std::chrono::steady_clock;

// steady_clock from the kernel's coarse monotonic clock (same base, a few ms resolution, a few
// ns per read): enough for progress rate limits and rates, and cheap in a tight loop.
Clock::time_point coarse_now() noexcept {
#ifdef CLOCK_MONOTONIC_COARSE
  timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0)
    return Clock::time_point(std::chrono::duration_cast<Clock::duration>(
        std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec)));
#endif
  return Clock::now();
}

std::string seconds_text(int64_t ms) {
  std::ostringstream out;
  out << static_cast<double>(ms) / 1000.0;
  return out.str();
}

// The first `n` bytes of `text`, never cutting a UTF-8 sequence in two.
std::string utf8_prefix(const std::string& text, size_t n) {
  if (text.size() <= n) return text;
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  return text.substr(0, n) + "...";
}

// JSON accepted in payloads: valid, and nested at most kMaxJsonDepth deep (what every reader,
// Python's json included, can decode back). A SAX pass: no document is built.
constexpr int kMaxJsonDepth = 500;

struct JsonChecker : nlohmann::json::json_sax_t {
  int depth = 0;
  bool too_deep = false;
  std::string error;
  bool push() {
    if (++depth > kMaxJsonDepth) too_deep = true;
    return !too_deep;
  }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return push(); }
  bool key(string_t&) override { return true; }
  bool end_object() override { return --depth, true; }
  bool start_array(std::size_t) override { return push(); }
  bool end_array() override { return --depth, true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::json::exception& e) override {
    error = e.what();
    return false;
  }
};

void check_json(const char* field, const std::string& text) {
  JsonChecker checker;
  if (nlohmann::json::sax_parse(text, &checker)) return;
  const std::string name(field);
  if (checker.too_deep)
    throw ValidationError(name, name + " is nested more than " + std::to_string(kMaxJsonDepth) +
                                    " levels deep");
  if (checker.error.find("number overflow") != std::string::npos)
    throw ValidationError(name, name + " holds a number beyond the range of a double (about "
                                       "1.8e308), which JSON readers cannot carry: " +
                                       utf8_prefix(checker.error, 200));
  const auto detail = checker.error.find("] ");
  throw ValidationError(name, name + " is not valid JSON (" +
                                  (detail == std::string::npos ? checker.error
                                                               : checker.error.substr(detail + 2)) +
                                  "): '" + utf8_prefix(text, 80) + "'");
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

}  // namespace

// One claimed job, from the claim until its outcome is submitted. It is the processor's Context.
class RunningJob final : public Context {
 public:
  RunningJob(Engine::Impl* engine, Job job) : engine_(engine), job(std::move(job)) {}

  const std::string& job_id() const noexcept override { return job.id; }
  const std::string& job_type() const noexcept override { return job.type; }
  int attempt() const noexcept override { return job.attempts; }
  StopReason stop_reason() const noexcept override { return stop.load(std::memory_order_relaxed); }
  void progress(double current, double total, std::string_view message) override;
  void progress(double current, double total, std::string_view message,
                std::string_view stage) override;
  void stage(std::string_view name, double total) override;
  void increment(double n) override;
  void log(LogLevel level, std::string_view message, std::string_view fields_json) override;
  void count(std::string_view key, int64_t n) override;
  std::string dependency_results_json() override;
  // stage: a stage to enter (its current back to 0) - always with restart_stage, else only if
  // it is not the current one. relative: current is added to the current value.
  void update_progress(double current, double total, std::string_view message,
                       const std::string_view* stage, bool restart_stage, bool relative);

  // Asks the job to stop; the first reason wins.
  bool request_stop(StopReason reason) noexcept {
    StopReason expected = StopReason::none;
    return stop.compare_exchange_strong(expected, reason);
  }

  struct ProgressState {
    int percent = 0;
    double current = 0, total = 0;
    std::string message, stage;
    double rate = 0;      // units per second, over the recent samples
    int64_t eta_ms = -1;  // -1: unknown
  };

  Engine::Impl* engine_;
  Job job;
  std::shared_ptr<Processor> processor;  // resolved at the claim
  std::atomic<StopReason> stop{StopReason::none};
  std::atomic<bool> started{false}, finished{false};
  std::atomic<bool> interrupted{false};
  // Progress events wait until the job's running state is committed (claims in memory write it
  // after the start), so no subscriber sees progress before job-started.
  std::atomic<bool> start_committed{false};
  Clock::time_point stop_requested_at{Clock::time_point::max()};  // watchdog thread only
  bool claimed_in_memory = false;  // still 'queued' in the store until its start is written
  Clock::time_point claimed_steady{};
  int64_t started_at = 0;          // Unix ms, once a worker runs it
  Clock::time_point started_steady{};
  Clock::time_point deadline{Clock::time_point::max()};

  mutable std::mutex progress_mutex_;
  ProgressState progress_;
  std::map<std::string, int64_t, std::less<>> outcome_;  // guarded by progress_mutex_
  std::optional<std::string> outcome_json() const {  // caller holds progress_mutex_
    if (outcome_.empty()) return std::nullopt;
    nlohmann::json o = nlohmann::json::object();
    for (const auto& [k, v] : outcome_) o[k] = v;
    return o.dump();
  }
  // Guarded by progress_mutex_:
  bool progress_dirty_ = false;          // changed since last written to the store
  bool progress_due_ = false;            // moved enough to be written at the next flush
  bool progress_event_pending_ = false;  // an update not yet published (rate limit)
  int persisted_percent_ = 0;
  Clock::time_point dirty_since_{};  // the oldest unwritten change
  Clock::time_point last_progress_event_{};
  // Samples for the rate: (time, current), one per >= 250 ms, the last few.
  std::deque<std::pair<Clock::time_point, double>> rate_samples_;
  std::atomic<bool> logged{false};  // wrote a log line: its start is written before its end
  std::atomic<bool> lease_lost{false};  // taken back while we could not renew: end not written
};

struct Engine::Impl {
  struct Registration {
    std::shared_ptr<Processor> processor;
    ProcessorOptions options;
  };

  explicit Impl(EngineConfig cfg) : config(std::move(cfg)) {
    if (config.workers < 1)
      throw ValidationError("workers", "workers must be at least 1, got " +
                                           std::to_string(config.workers));
    if (config.prefetch < 0)
      throw ValidationError("prefetch", "prefetch must be 0 or more, got " +
                                            std::to_string(config.prefetch));
    hostname = host_name();
    worker_id = hostname + ":" + std::to_string(getpid()) + ":" + new_job_id().substr(24);
    store = open_store(config.path, config.sqlite, config.postgres);
    store->set_commit_listener([this](std::vector<Transition>& t) { on_commit(t); });
    // Another process inserted jobs or asked to cancel ours (PostgreSQL NOTIFY): act now rather
    // than at the next poll.
    store->set_wakeup_listener([this](const StoreWakeup& w) {
      if (w.kind != StoreWakeup::Kind::cancel_requested) wake_dispatcher();
      if (w.kind != StoreWakeup::Kind::jobs_due) {
        std::lock_guard lock(maintenance_mutex);
        poll_now = true;
        maintenance_cv.notify_all();
      }
    });
    store->set_start_rejected_listener([this](const std::vector<int64_t>& rowids) {
      // Cancelled by another process between our claim in memory and its start: stop it.
      std::lock_guard lock(jobs_mutex);
      for (auto& [id, rj] : claimed)
        for (int64_t rowid : rowids)
          if (rj->job.rowid == rowid) rj->request_stop(StopReason::cancelled);
    });
    // Jobs a dead process left running are queued again as soon as the file is opened (and
    // again at every start and heartbeat), not only when a worker starts.
    recover_orphans();
  }

  // Made in this process, not inherited by a fork() child (see ~Engine).
  bool forked() const noexcept { return fork_generation() != created_fork_generation; }

  // Every entry point first: in a forked child, one clear error instead of a wait for threads
  // that do not exist or a mutex a parent thread held at the fork.
  void check_process() const {
    if (!forked()) return;
    throw Error("this jobforge engine was created in process " + std::to_string(owner_pid) +
                " and cannot be used in a forked child (pid " + std::to_string(getpid()) +
                "): its threads and database connections belong to the parent. Create a new "
                "Engine in the child (the Python jobforge.Engine does so on first use after "
                "a fork)");
  }

  ~Impl() {
    stop(true);
    store->close();
    bus.stop();
  }

  // ---- registry ----------------------------------------------------------------------------

  void register_processor(const std::string& type, std::shared_ptr<Processor> p,
                          ProcessorOptions options) {
    if (type.empty()) throw ValidationError("type", "job type must not be empty");
    if (!p) throw ValidationError("processor", "processor for '" + type + "' is null");
    {
      std::lock_guard lock(registry_mutex);
      if (options.max_concurrent && *options.max_concurrent < 0)
        throw ValidationError("max_concurrent", "max_concurrent must be 0 or more, got " +
                                                    std::to_string(*options.max_concurrent));
      if (options.rate) RateLimit::parse(*options.rate);
      registry[type] = Registration{std::move(p), options};
      refresh_limits_locked();
      types_cache.clear();
      for (auto& [name, reg] : registry) types_cache.push_back(name);
    }
    wake_dispatcher();
  }

  std::optional<Registration> registration(const std::string& type) const {
    std::lock_guard lock(registry_mutex);
    auto it = registry.find(type);
    if (it == registry.end()) return std::nullopt;
    return it->second;
  }

  std::vector<std::string> types() const {
    std::lock_guard lock(registry_mutex);
    return types_cache;
  }

  // ---- published types (docs/workers.md) ---------------------------------------------------
  // A worker publishes the types it serves and its processors' options; a producer that never
  // registered a type enqueues with the options a worker published for it.

  static std::string options_json(const ProcessorOptions& o) {
    nlohmann::json j = nlohmann::json::object();
    if (o.timeout_ms) j["timeout_ms"] = *o.timeout_ms;
    if (o.max_attempts) j["max_attempts"] = *o.max_attempts;
    if (o.retry_delay_ms) j["retry_delay_ms"] = *o.retry_delay_ms;
    if (o.backoff) j["backoff"] = *o.backoff;
    if (o.priority) j["priority"] = *o.priority;
    if (o.max_concurrent) j["max_concurrent"] = *o.max_concurrent;
    if (o.rate) j["rate"] = *o.rate;
    return j.dump();
  }

  // The options a producer applies (max_concurrent and rate are the claiming workers' business).
  // Anything unreadable is left unset: the producer's own defaults apply.
  static ProcessorOptions parse_published(const std::string& text) {
    ProcessorOptions o;
    const auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return o;
    auto integer = [&](const char* key) -> std::optional<int64_t> {
      auto it = j.find(key);
      if (it == j.end() || !it->is_number_integer()) return std::nullopt;
      return it->get<int64_t>();
    };
    o.timeout_ms = integer("timeout_ms");
    if (auto v = integer("max_attempts"); v && *v >= 1 && *v <= std::numeric_limits<int>::max())
      o.max_attempts = static_cast<int>(*v);
    o.retry_delay_ms = integer("retry_delay_ms");
    if (auto it = j.find("backoff"); it != j.end() && it->is_string())
      o.backoff = it->get<std::string>();
    if (auto v = integer("priority"); v && *v >= priority::min && *v <= priority::max)
      o.priority = static_cast<int>(*v);
    return o;
  }

  void publish_types() {
    // Not while the store is unreachable (PostgreSQL reconnecting): a write would wait for its
    // budget at every heartbeat and at stop; the first heartbeat after the outage publishes.
    if (store->health() != "ok") return;
    std::vector<PublishedType> types;
    {
      std::lock_guard lock(registry_mutex);
      for (const auto& [name, reg] : registry)
        types.push_back(PublishedType{worker_id, name, options_json(reg.options), 0, 0});
    }
    try {
      store->publish_types(worker_id, types, now_ms());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "jobforge: could not publish job types: %s\n", e.what());
    }
  }

  struct KnownType {
    ProcessorOptions options;
    bool live = false;  // a live worker publishes it
    int64_t published_at = 0, refreshed_at = 0;
    std::string worker_id;
  };

  // Reads the published types: per type, the entry of the live worker that published its
  // options last (ties: the greater worker id); with no live one, the entry refreshed last (the
  // worker that served the type most recently).
  std::map<std::string, KnownType, std::less<>> read_published() {
    const auto rows = store->published_types();
    std::map<std::string, WorkerInfo, std::less<>> workers_by_id;
    if (!rows.empty())
      for (auto& w : store->workers()) workers_by_id.emplace(w.id, std::move(w));
    std::map<std::string, KnownType, std::less<>> out;
    for (const auto& row : rows) {
      auto w = workers_by_id.find(row.worker_id);
      const bool live = w != workers_by_id.end() && w->second.state == "running" &&
                        (w->second.id == worker_id || !is_dead(w->second));
      auto [it, inserted] = out.try_emplace(row.type);
      KnownType& best = it->second;
      const auto key = [live](int64_t published_at, int64_t refreshed_at) {
        return live ? std::pair{published_at, refreshed_at} : std::pair{refreshed_at, published_at};
      };
      const bool better =
          inserted || (live && !best.live) ||
          (live == best.live &&
           std::tuple(key(row.published_at, row.refreshed_at), row.worker_id) >
               std::tuple(key(best.published_at, best.refreshed_at), best.worker_id));
      if (better)
        best = KnownType{parse_published(row.options_json), live, row.published_at,
                         row.refreshed_at, row.worker_id};
    }
    return out;
  }

  // The options published for a type this process does not serve; nullopt when no worker ever
  // published it. Cached for kPublishedTtl; a miss re-reads the table (at most every poll_ms,
  // unless the caller must know: an enqueue that is refused otherwise).
  static constexpr auto kPublishedTtl = std::chrono::seconds(2);
  std::optional<ProcessorOptions> published_options(const std::string& type, bool must_know) {
    std::lock_guard lock(published_mutex);
    const auto now = Clock::now();
    const bool fresh = published_read && now - *published_read < kPublishedTtl;
    auto it = published_cache.find(type);
    if (fresh && it != published_cache.end()) return it->second.options;
    if (!fresh || must_know || now - *published_read >= std::chrono::milliseconds(config.poll_ms)) {
      published_cache = read_published();
      published_read = now;
      it = published_cache.find(type);
    }
    if (it == published_cache.end()) return std::nullopt;
    return it->second.options;
  }

  // Of these types, those with due jobs that no live worker serves (read now, not cached).
  std::vector<std::string> unserved_types(const std::vector<std::string>& candidates) {
    const auto known = read_published();
    std::vector<std::string> out;
    const int64_t now = now_ms();
    for (const auto& type : candidates) {
      auto it = known.find(type);
      if (it != known.end() && it->second.live) continue;
      const auto next = store->next_run_at({type});
      if (next && *next <= now) out.push_back(type);
    }
    return out;
  }

  // ---- enqueue -----------------------------------------------------------------------------

  // Resolves a spec against the processor's and the engine's defaults and validates every field.
  NewJob resolve(const JobSpec& spec, int64_t now, bool allow_unknown = false) {
    if (spec.type.empty()) throw ValidationError("type", "job type must not be empty");
    auto reg = registration(spec.type);
    std::optional<ProcessorOptions> published;
    if (!reg) {
      const bool must_know = !config.allow_unknown_types && !allow_unknown;
      published = published_options(spec.type, must_know);
      if (!published && must_know) throw UnknownJobType(spec.type);
    }
    const ProcessorOptions defaults = reg ? reg->options : published.value_or(ProcessorOptions{});

    NewJob j;
    j.id = new_job_id();
    j.type = spec.type;
    j.priority = spec.priority.value_or(defaults.priority.value_or(config.default_priority));
    if (j.priority < priority::min || j.priority > priority::max)
      throw ValidationError("priority", "priority must be between 1 and 10, got " +
                                            std::to_string(j.priority));
    j.max_attempts =
        spec.max_attempts.value_or(defaults.max_attempts.value_or(config.default_max_attempts));
    if (j.max_attempts < 1)
      throw ValidationError("max_attempts", "max_attempts must be at least 1, got " +
                                                std::to_string(j.max_attempts));
    j.timeout_ms = spec.timeout_ms.value_or(defaults.timeout_ms.value_or(config.default_timeout_ms));
    if (j.timeout_ms <= 0)
      throw ValidationError("timeout", "timeout must be greater than 0 seconds, got " +
                                           seconds_text(j.timeout_ms));
    j.retry_delay_ms = spec.retry_delay_ms.value_or(
        defaults.retry_delay_ms.value_or(config.default_retry_delay_ms));
    if (j.retry_delay_ms < 0)
      throw ValidationError("retry_delay", "retry_delay must be 0 or more seconds, got " +
                                               seconds_text(j.retry_delay_ms));
    j.backoff = Backoff::parse(spec.backoff.value_or(defaults.backoff.value_or("fixed"))).to_string();
    if (spec.delay_ms < 0)
      throw ValidationError("delay", "delay must be 0 or more seconds, got " +
                                         seconds_text(spec.delay_ms));
    if (spec.payload_json.size() > config.max_payload_bytes)
      throw ValidationError("payload", "payload is " + std::to_string(spec.payload_json.size()) +
                                           " bytes, more than the limit of " +
                                           std::to_string(config.max_payload_bytes));
    check_json("payload", spec.payload_json);
    if (reg) reg->processor->validate(spec.payload_json);  // the processor's own field rules
    j.payload_json = spec.payload_json;
    j.created_at = now;
    j.run_at = now + spec.delay_ms;
    j.parent_id = spec.parent_id;
    j.user_initiated = spec.user_initiated;
    resolve_workflow(spec, j);
    return j;
  }

  static Job to_job(const NewJob& n) {
    Job j;
    j.id = n.id;
    j.type = n.type;
    j.status = Status::queued;
    j.priority = n.priority;
    j.payload_json = n.payload_json;
    j.max_attempts = n.max_attempts;
    j.timeout_ms = n.timeout_ms;
    j.retry_delay_ms = n.retry_delay_ms;
    j.backoff = n.backoff;
    j.parent_id = n.parent_id;
    j.user_initiated = n.user_initiated;
    j.created_at = n.created_at;
    j.queued_at = n.created_at;
    j.run_at = n.run_at;
    return j;
  }

  std::vector<Job> enqueue(const std::vector<JobSpec>& specs) {
    const int64_t now = now_ms();
    std::vector<NewJob> rows;
    rows.reserve(specs.size());
    for (const auto& spec : specs) rows.push_back(resolve(spec, now));
    link_dependencies(specs, rows);
    return insert_rows(rows);
  }

  // ---- events and waiters ------------------------------------------------------------------

  // On the store's writer thread, right after a commit.
  void on_commit(std::vector<Transition>& transitions) {
    if (!bus.has_subscribers()) {
      // Nobody listens: skip building events (a third of the writer's time at high rates).
      bool any_final = false, any_queued = false;
      for (const auto& t : transitions) {
        any_final = any_final || is_final(t.to);
        any_queued = any_queued || t.to == Status::queued;
        if (t.to == Status::running) mark_start_committed(t.job_id);
      }
      after_commit(any_queued, any_final);
      return;
    }
    std::vector<Event> events;
    events.reserve(transitions.size() * 2);
    bool any_final = false, any_queued = false;
    for (auto& t : transitions) {
      if (t.log_lines) {
        append_log_events(*t.log_lines, events);
        continue;
      }
      Event e;
      e.job_id = t.job_id;
      e.job_type = t.job_type;
      e.status = t.to;
      e.previous_status = t.from;
      e.progress = t.progress;
      e.attempt = t.attempt;
      e.error = t.error;
      e.result_json = t.result_json;
      e.timestamp = t.at;
      e.type = EventType::status_changed;
      events.push_back(e);
      EventType specific;
      if (t.from == Status::created && t.to == Status::queued) {
        Event created = e;
        created.type = EventType::created;
        created.status = Status::created;
        events.insert(events.end() - 1, std::move(created));  // before job-status-changed
      }
      switch (t.to) {
        case Status::queued:
          specific = t.from == Status::running ? EventType::retry : EventType::queued;
          break;
        case Status::running: specific = EventType::started; break;
        case Status::completed: specific = EventType::completed; break;
        case Status::failed: specific = EventType::failed; break;
        case Status::cancelled: specific = EventType::cancelled; break;
        case Status::timeout: specific = EventType::timeout; break;
        default: continue;
      }
      any_final = any_final || is_final(t.to);
      any_queued = any_queued || t.to == Status::queued;
      if (t.to == Status::running) {
        // Progress reported before the start was committed follows job-started, coalesced.
        auto held = mark_start_committed(t.job_id);
        e.type = specific;
        events.push_back(std::move(e));
        for (auto& h : held) events.push_back(std::move(h));
        continue;
      }
      e.type = specific;
      events.push_back(std::move(e));
    }
    bus.publish(std::move(events));
    after_commit(any_queued, any_final);
  }

  void after_commit(bool any_queued, bool any_final) {
    if (any_queued) wake_dispatcher();  // committed now: the dispatcher can see it
    if (any_final) {
      std::lock_guard lock(waiters_mutex);
      ++final_generation;
      waiters_cv.notify_all();
    }
  }

  // Returns the progress event held back while the start was not yet committed, if any.
  std::vector<Event> mark_start_committed(const std::string& job_id) {
    std::shared_ptr<RunningJob> rj;
    {
      std::lock_guard lock(jobs_mutex);
      auto it = claimed.find(job_id);
      if (it == claimed.end()) return {};
      rj = it->second;
    }
    std::lock_guard lock(rj->progress_mutex_);
    rj->start_committed.store(true, std::memory_order_release);
    std::vector<Event> held;
    if (rj->progress_event_pending_) {
      rj->progress_event_pending_ = false;
      rj->last_progress_event_ = Clock::now();
      held.push_back(progress_event(*rj, rj->progress_));
    }
    return held;
  }

  std::optional<Job> wait(const std::string& job_id, std::optional<std::chrono::milliseconds> timeout) {
    const auto deadline = timeout ? Clock::now() + *timeout : Clock::time_point::max();
    for (;;) {
      uint64_t generation;
      {
        std::lock_guard lock(waiters_mutex);
        generation = final_generation;
      }
      auto job = get(job_id);
      if (!job) throw ValidationError("job_id", "unknown job id '" + job_id + "'");
      if (is_final(job->status)) return job;
      const auto now = Clock::now();
      if (now >= deadline) return std::nullopt;
      // Jobs finished by other processes are seen by polling; ours wake us at once.
      const auto until = std::min(deadline, now + std::chrono::milliseconds(config.poll_ms));
      std::unique_lock lock(waiters_mutex);
      waiters_cv.wait_until(lock, until, [&] { return final_generation != generation; });
    }
  }

  // ---- queries -----------------------------------------------------------------------------

  // The latest progress of a job running here is in memory; the store has it at a bounded rate.
  // A job claimed in memory is still 'queued' in the store until its start is written.
  void overlay_progress(Job& job) {
    if (job.status != Status::running && job.status != Status::queued) return;
    std::shared_ptr<RunningJob> rj;
    {
      std::lock_guard lock(jobs_mutex);
      auto it = claimed.find(job.id);
      if (it == claimed.end()) return;
      rj = it->second;
    }
    if (!rj->started || rj->finished) return;
    if (job.status == Status::queued) {
      job.status = Status::running;
      job.attempts = rj->job.attempts;
      job.started_at = rj->started_at;
      job.lease_owner = worker_id;
    }
    std::lock_guard lock(rj->progress_mutex_);
    const auto& p = rj->progress_;
    job.progress = p.percent;
    job.progress_current = p.current;
    job.progress_total = p.total;
    job.message = p.message;
    job.stage = p.stage;
    job.rate = p.rate;
    job.eta_ms = p.eta_ms;
    job.outcome_json = rj->outcome_json();
  }

  std::optional<Job> get(const std::string& job_id) {
    auto job = store->get(job_id);
    if (job) overlay_progress(*job);
    return job;
  }

  // ---- control -----------------------------------------------------------------------------

  std::shared_ptr<RunningJob> find_claimed(const std::string& id) {
    std::lock_guard lock(jobs_mutex);
    auto it = claimed.find(id);
    return it == claimed.end() ? nullptr : it->second;
  }

  bool cancel(const std::string& job_id) {
    // A job this process holds (claimed, maybe only in memory) is stopped here; its end is
    // written as 'cancelled' by the worker.
    if (auto rj = find_claimed(job_id); rj && !rj->finished) {
      rj->request_stop(StopReason::cancelled);
      notify_watchdog();
      if (rj->stop_reason() == StopReason::cancelled) {
        end_if_unstarted(rj);
        return true;
      }
    }
    switch (store->cancel(job_id, now_ms())) {
      case CancelResult::cancelled: return true;
      case CancelResult::requested: {
        std::shared_ptr<RunningJob> rj;
        {
          // Under the lock the dispatcher holds while it adds claimed jobs: either the job is
          // here, or the dispatcher will find the request when it adds it.
          std::lock_guard lock(jobs_mutex);
          auto it = claimed.find(job_id);
          if (it != claimed.end()) {
            rj = it->second;
          } else {
            // Requests for jobs another process runs are never claimed here: keep it small.
            const auto now = Clock::now();
            for (auto e = early_cancels.begin(); e != early_cancels.end();)
              e = now - e->second > std::chrono::seconds(10) ? early_cancels.erase(e) : std::next(e);
            early_cancels.emplace(job_id, now);
          }
        }
        if (rj) {
          rj->request_stop(StopReason::cancelled);
          end_if_unstarted(rj);
        }
        notify_watchdog();
        return true;
      }
      default: return false;
    }
  }

  // Removes a job from `claimed` (caller holds jobs_mutex), unless a newer attempt of it took
  // its place there.
  void forget_claimed(const std::shared_ptr<RunningJob>& rj) {
    auto it = claimed.find(rj->job.id);
    if (it != claimed.end() && it->second == rj) claimed.erase(it);
  }

  // A held job that no worker has started ends now, not when a worker becomes free.
  void end_if_unstarted(const std::shared_ptr<RunningJob>& rj) {
    {
      std::lock_guard lock(jobs_mutex);
      if (!ready.erase(rj)) return;  // a worker took it: it sees the stop request itself
      forget_claimed(rj);
      dispatch_cv.notify_all();
    }
    submit_outcome(*rj, decide_outcome(*rj, RunResult{}));
  }

  int64_t abort_all() {
    std::vector<std::string> running_ids;
    const int64_t n = store->cancel_all(now_ms(), &running_ids);
    for (const auto& id : running_ids)
      if (auto rj = find_claimed(id)) rj->request_stop(StopReason::cancelled);
    return n;
  }

  bool retry(const std::string& job_id) {
    const bool ok = store->retry(job_id, now_ms());
    if (ok) wake_dispatcher();
    return ok;
  }

  // ---- lifecycle ---------------------------------------------------------------------------

  void start() {
    std::lock_guard lifecycle(lifecycle_mutex);
    if (started) return;
    auto register_self = [this] {
      const int64_t now = now_ms();
      return store->register_worker(
          WorkerInfo{worker_id, hostname, getpid(), JOBFORGE_VERSION, now, now, "running", "",
                     config.singleton_role},
          [this](const WorkerInfo& w) { return is_dead(w); }, config.claim_in_memory);
    };
    std::string mode;
    try {
      mode = register_self();
    } catch (const SingletonTaken&) {
      // A holder on another host may be dead: only watching its heartbeat for a window can tell
      // (no clock is compared). Watch it (recovery rounds mark it dead if it is), then try again.
      bool remote = false;
      for (const auto& w : store->workers())
        remote = remote || (w.state == "running" && w.singleton_role == config.singleton_role &&
                            w.hostname != hostname);
      if (!remote) throw;
      const auto until = Clock::now() + std::chrono::milliseconds(stale_ms() + config.heartbeat_ms);
      while (Clock::now() < until) {
        recover_orphans();
        std::this_thread::sleep_for(std::chrono::milliseconds(config.heartbeat_ms));
      }
      recover_orphans();
      mode = register_self();
    }
    durable_claims = mode != "memory";
    peers_durable = mode == "memory";  // alone: nobody to wait for
    publish_types();
    recover_orphans();
    try {
      ensure_cleanup_schedule();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "jobforge: could not schedule the cleanup job: %s\n", e.what());
    }
    {
      std::lock_guard lock(jobs_mutex);
      stopping = false;
    }
    started = true;
    dispatcher = std::thread([this] { dispatcher_loop(); });
    for (int i = 0; i < config.workers; ++i) workers.emplace_back([this] { worker_loop(); });
    maintenance = std::thread([this] { maintenance_loop(); });
    watchdog = std::thread([this] { watchdog_loop(); });
  }

  void stop(bool wait_for_running) {
    if (!wait_for_running) {
      // A stop(wait=true) may be waiting for running jobs: escalate it. They are asked to stop
      // now (and interrupted after the grace period) and go back to the queue.
      bool escalated = false;
      {
        std::lock_guard lock(jobs_mutex);
        if (stopping) {
          for (auto& [id, rj] : claimed) rj->request_stop(StopReason::shutdown);
          escalated = true;
        }
      }
      if (escalated) notify_watchdog();
    }
    std::lock_guard lifecycle(lifecycle_mutex);
    if (!started) return;
    {
      std::lock_guard lock(jobs_mutex);
      stopping = true;
      if (!wait_for_running)
        for (auto& [id, rj] : claimed) rj->request_stop(StopReason::shutdown);
      dispatch_cv.notify_all();
      ready_cv.notify_all();
    }
    dispatcher.join();
    // Jobs claimed but not started go back to the queue, their attempt not used up.
    std::deque<std::shared_ptr<RunningJob>> unstarted;
    {
      std::lock_guard lock(jobs_mutex);
      unstarted.assign(ready.begin(), ready.end());
      ready.clear();
      for (auto& rj : unstarted) forget_claimed(rj);
      ready_cv.notify_all();
    }
    release_unstarted(unstarted);
    for (auto& w : workers) w.join();
    workers.clear();
    {
      std::lock_guard lock(maintenance_mutex);
      maintenance_stop = true;
      maintenance_cv.notify_all();
    }
    maintenance.join();
    watchdog.join();
    maintenance_stop = false;
    publish_types();  // at its stop too: the last worker to serve a type wins once none is live
    try {
      store->deregister_worker(worker_id);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "jobforge: could not deregister worker: %s\n", e.what());
    }
    store->flush();
    bus.flush();
    started = false;
  }

  // Claimed jobs that never started go back: one claimed in memory only stops being held (the
  // store still has it queued); one claimed durably is put back in the queue, attempt uncounted.
  void release_unstarted(std::deque<std::shared_ptr<RunningJob>>& jobs) {
    std::vector<int64_t> in_memory;
    for (auto& rj : jobs) {
      rj->request_stop(StopReason::shutdown);
      if (rj->claimed_in_memory) {
        rj->finished = true;
        in_memory.push_back(rj->job.rowid);
      } else {
        submit_outcome(*rj, decide_outcome(*rj, RunResult{}));
      }
    }
    try {
      store->release(std::move(in_memory));
    } catch (const std::exception&) {
    }
  }

  // Another live worker shares the file: claims must be committed before execution. Unstarted
  // jobs claimed in memory go back; started ones get their running state written; then the
  // worker row says 'durable', which is what a newcomer waits for before it claims.
  void switch_to_durable_claims() {
    std::lock_guard claim_lock(claim_mutex);
    std::deque<std::shared_ptr<RunningJob>> unstarted;
    {
      std::lock_guard lock(jobs_mutex);
      durable_claims = true;
      for (auto it = ready.begin(); it != ready.end();) {
        if ((*it)->claimed_in_memory) {
          unstarted.push_back(*it);
          it = ready.erase(it);
        } else {
          ++it;
        }
      }
      for (auto& rj : unstarted) forget_claimed(rj);
      // Jobs a worker took from the queue but whose start may not be recorded yet: record it
      // now, so the flush below writes every held job as running before a peer may claim.
      const int64_t now = now_ms();
      for (auto& [id, rj] : claimed)
        if (rj->claimed_in_memory && !rj->finished)
          store->mark_started(StartInfo{rj->job.rowid, rj->job.id, rj->job.type, worker_id,
                                        rj->job.attempts, now, now + config.lease_ms,
                                        rj->job.queued_at});
      dispatch_cv.notify_all();
    }
    release_unstarted(unstarted);
    store->flush();
    store->set_claim_mode(worker_id, "durable", [this](const WorkerInfo& w) { return is_dead(w); });
  }

  // Alone again on the file: claim in memory, if the store agrees nobody else is live.
  void try_memory_claims() {
    std::lock_guard claim_lock(claim_mutex);
    if (store->set_claim_mode(worker_id, "memory", [this](const WorkerInfo& w) { return is_dead(w); }))
      durable_claims = false;
  }

  void check_claim_mode() {
    bool others_live = false, others_in_memory = false;
    for (const auto& w : store->workers()) {
      if (w.id == worker_id || w.state != "running" || is_dead(w)) continue;
      others_live = true;
      others_in_memory = others_in_memory || w.claim_mode == "memory";
    }
    peers_durable = !others_in_memory;
    if (!durable_claims && others_live)
      switch_to_durable_claims();
    else if (durable_claims && !others_live && config.claim_in_memory)
      try_memory_claims();
  }

  // The one rule for a dead peer: on this host, its pid is gone; anywhere, its heartbeat did not
  // change for max(3 heartbeats, one lease) of this process's monotonic clock while this process
  // watched it without a gap. No wall clock is compared across processes, so a clock step (here
  // or in the peer) cannot kill a live peer. A gap in the watch (this process could not write to
  // the store: an outage; or it was paused: SIGSTOP, a VM suspended) gives every peer a full
  // window again, measured from the end of the gap plus a reconnection backoff: each had the
  // same outage and needs time to reconnect and heartbeat before anyone judges it
  // (docs/workers.md, "Outages and clocks").
  bool is_dead(const WorkerInfo& w) const {
    if (w.hostname == hostname && w.pid > 0 && kill(static_cast<pid_t>(w.pid), 0) != 0 &&
        errno == ESRCH)
      return true;
    const auto now = Clock::now();
    const auto stale = std::chrono::milliseconds(stale_ms());
    const auto gap = watch_gap();
    std::lock_guard lock(peers_mutex);
    const bool writing = now - last_write_ok.load() <= gap;  // our own heartbeats land
    auto [it, first_sight] = peers.try_emplace(w.id, PeerWatch{w.heartbeat_at, now, now});
    PeerWatch& p = it->second;
    if (!first_sight) {
      if (!writing || now - p.seen > gap) {
        // After a gap the window starts late by the longest a peer may take to notice that the
        // store is back (its reconnection backoff) and to heartbeat.
        p.changed = now + std::chrono::milliseconds(config.postgres.reconnect_max_delay_ms +
                                                    config.heartbeat_ms);
      } else if (w.heartbeat_at != p.heartbeat_at && p.changed < now) {
        p.changed = now;
      }
      p.heartbeat_at = w.heartbeat_at;
      p.seen = now;
    }
    if (peers.size() > 4096)  // rows of long-gone workers: forget those not seen for an hour
      for (auto i = peers.begin(); i != peers.end();)
        i = now - i->second.seen > std::chrono::hours(1) ? peers.erase(i) : std::next(i);
    return now - p.changed >= stale;
  }

  int64_t stale_ms() const { return std::max(3 * config.heartbeat_ms, config.lease_ms); }
  // A pause in our own writes longer than this interrupts the watch (see is_dead).
  std::chrono::milliseconds watch_gap() const {
    return std::chrono::milliseconds(std::max(2 * config.heartbeat_ms, stale_ms() / 4));
  }

  void wake_dispatcher() {
    std::lock_guard lock(jobs_mutex);
    dispatch_wake = true;
    dispatch_cv.notify_all();
  }

  // ---- dispatcher --------------------------------------------------------------------------

  // How many jobs may be claimed ahead of the workers: as many as the workers finish in about
  // two milliseconds (from the mean run time), up to 1024, and never fewer than config.prefetch
  // (1024 durably too: with several processes on one file, larger claims mean fewer write
  // transactions, each of which re-reads what the other processes changed). Slow jobs are thus
  // claimed one per free worker, so a durably claimed job ('running' in the store) waits at most
  // ~2 ms for its worker; fast ones share a transaction by the hundred.
  // An engine configured for durable claims only (claim_in_memory = false: supervised worker
  // processes, where a crash must not cost unstarted jobs an attempt) claims for free workers
  // plus config.prefetch, never more.
  int claim_depth() const {
    if (!config.claim_in_memory) return config.workers + config.prefetch;
    const double mean = mean_run_ns.load(std::memory_order_relaxed);
    const double window_ns = 2e6;
    const double cap = 1024.0;
    const double ahead = mean > 0 ? window_ns / mean * config.workers : 0.0;
    const int depth = static_cast<int>(std::min(cap, ahead));
    return config.workers + std::max(config.prefetch, depth);
  }

  // The dispatcher claims again once the jobs claimed ahead of the workers fell by half the
  // depth (or by one, for a shallow depth): a claim in memory reads the held jobs again (they
  // come first in claim order), so claiming for every single free slot would read the whole
  // depth per job; a durable claim is a write transaction, and with several processes on one
  // file each transaction starts by re-reading the pages the others changed, so fewer, larger
  // claims pay that less often. Half keeps ~1 ms of work queued for the workers while the claim
  // runs.
  static int claim_below(int depth_total, int workers) {
    return depth_total - std::max(0, (depth_total - workers) / 2);
  }
  bool wants_claim(int depth_total) const {
    return static_cast<int>(claimed.size()) < claim_below(depth_total, config.workers);
  }

  void dispatcher_loop() {
    for (;;) {
      int capacity;
      int capacity_total = claim_depth();
      {
        std::unique_lock lock(jobs_mutex);
        dispatch_cv.wait(lock, [&] {
          capacity_total = claim_depth();
          return stopping || wants_claim(capacity_total) ||
                 (dispatch_wake && static_cast<int>(claimed.size()) < capacity_total);
        });
        if (stopping) return;
        capacity = capacity_total - static_cast<int>(claimed.size());
        dispatch_wake = false;
      }
      const auto types_now = types();
      std::vector<Job> jobs;
      try {
        if (!peers_durable) check_claim_mode();  // a peer still claims in memory: wait for it
        if (!peers_durable) {
          std::unique_lock lock(jobs_mutex);
          dispatch_cv.wait_for(lock, std::chrono::milliseconds(std::max<int64_t>(1, config.poll_ms / 4)),
                               [&] { return stopping; });
          continue;
        }
        std::lock_guard claim_lock(claim_mutex);
        const bool durable = durable_claims;
        jobs = claim_jobs(capacity, types_now, durable);
        std::vector<std::shared_ptr<RunningJob>> cancelled_early;
        std::unique_lock lock(jobs_mutex);
        for (auto& j : jobs) {
          if (!durable) ++j.attempts;  // the store counts it when the start or the end is written
          auto reg = registration(j.type);
          auto rj = std::make_shared<RunningJob>(this, std::move(j));
          if (reg) rj->processor = reg->processor;
          rj->claimed_in_memory = !durable;
          rj->start_committed = durable;
          rj->claimed_steady = Clock::now();
          if (!early_cancels.empty() && early_cancels.erase(rj->job.id)) {
            rj->request_stop(StopReason::cancelled);  // cancelled between claim and here
            cancelled_early.push_back(rj);
          }
          if (auto [it, added] = claimed.emplace(rj->job.id, rj); !added) {
            // An older attempt of this job still runs here: the job was taken back from us (we
            // could not renew in time) and we claimed it again. The old attempt is fenced: it
            // stops and its end is not written, so the job never has two ends from one worker.
            it->second->lease_lost = true;
            it->second->request_stop(StopReason::shutdown);
            ready.erase(it->second);  // not started yet: dropped (same rowid: same place in order)
            it->second = rj;
          }
          ready.insert(std::move(rj));
        }
        if (!jobs.empty()) ready_cv.notify_all();
        lock.unlock();
        for (auto& rj : cancelled_early) end_if_unstarted(rj);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "jobforge: claim failed: %s\n", e.what());
        std::unique_lock lock(jobs_mutex);
        dispatch_cv.wait_for(lock, std::chrono::milliseconds(config.poll_ms),
                             [&] { return stopping; });
        continue;
      }
      if (static_cast<int>(jobs.size()) == capacity) continue;
      // Nothing more is due: sleep until the next delayed job, a local wake-up, or the poll.
      int64_t wake_in = config.poll_ms;
      try {
        if (auto next = next_due(types_now)) wake_in = std::min(wake_in, *next - now_ms());
      } catch (const std::exception&) {
      }
      if (wake_in <= 0) continue;
      if (has_limits.load(std::memory_order_relaxed)) wake_in = std::min(wake_in, limited_wake_ms());
      std::unique_lock lock(jobs_mutex);
      dispatch_cv.wait_for(lock, std::chrono::milliseconds(wake_in),
                           [&] { return stopping || dispatch_wake; });
    }
  }

  // ---- workers -----------------------------------------------------------------------------

  struct RunResult {
    bool ran = false;
    bool ok = false;
    bool cancelled_by_processor = false;  // the processor threw JobCancelled
    bool permanent = false;
    int64_t retry_after_ms = -1;  // the processor asked for this delay
    std::string result_json;
    std::string error, error_detail;
  };

  // A job held in memory longer than this is read again before it runs: another process may
  // have cancelled it meanwhile. (Younger ones are covered by the start's own check.)
  static constexpr int64_t kVerifyHeldAfterMs = 50;

  bool still_queued(const RunningJob& rj) {
    try {
      auto current = store->get(rj.job.id);
      return current && current->status == Status::queued;
    } catch (const std::exception&) {
      return true;  // cannot tell: the start's own check still guards it
    }
  }

  static ExecutionGate* gate_of(const RunningJob& rj) {
    return rj.processor ? rj.processor->gate() : nullptr;
  }

  void worker_loop() {
    // A gate (the GIL) this thread keeps across consecutive jobs behind it, for a short while.
    constexpr int kMaxJobsPerGate = 64;
    constexpr auto kMaxGateHold = std::chrono::milliseconds(2);
    ExecutionGate* held = nullptr;
    int jobs_under_gate = 0;
    Clock::time_point held_since{};
    for (;;) {
      std::shared_ptr<RunningJob> rj;
      {
        std::unique_lock lock(jobs_mutex);
        if (held) {
          const bool keep = !ready.empty() && gate_of(**ready.begin()) == held &&
                            jobs_under_gate < kMaxJobsPerGate &&
                            Clock::now() - held_since < kMaxGateHold;
          if (!keep) {
            lock.unlock();
            held->leave();
            held = nullptr;
            lock.lock();
          }
        }
        ready_cv.wait(lock, [&] { return !ready.empty() || stopping; });
        // Once stop() is called no job starts; stop() puts the claimed ones back.
        if (stopping) break;
        rj = *ready.begin();
        ready.erase(ready.begin());
      }
      RunResult result;
      if (rj->claimed_in_memory && rj->stop_reason() == StopReason::none &&
          Clock::now() - rj->claimed_steady > std::chrono::milliseconds(kVerifyHeldAfterMs) &&
          !still_queued(*rj)) {
        // Changed by another process while it waited here (e.g. cancelled): never run it.
        rj->request_stop(StopReason::cancelled);
        rj->finished = true;
        store->release({rj->job.rowid});
        std::lock_guard lock(jobs_mutex);
        forget_claimed(rj);
        dispatch_cv.notify_all();
        continue;
      }
      if (rj->stop_reason() == StopReason::none) {
        ExecutionGate* gate = gate_of(*rj);
        if (gate != held) {
          if (held) held->leave();
          held = gate;
          if (held) {
            held->enter();
            jobs_under_gate = 0;
            held_since = Clock::now();
          }
        }
        ++jobs_under_gate;
        result = run(*rj);
      }
      submit_outcome(*rj, decide_outcome(*rj, result));
      {
        std::lock_guard lock(jobs_mutex);
        forget_claimed(rj);
        if (has_limits.load(std::memory_order_relaxed)) {
          dispatch_wake = true;  // a slot is free
          dispatch_cv.notify_all();
        } else if (wants_claim(claim_depth())) {
          dispatch_cv.notify_all();
        }
      }
    }
    if (held) held->leave();
  }

  RunResult run(RunningJob& rj) {
    RunResult r;
    if (!rj.processor) {
      // Unregistered since the claim: give the job back untouched.
      rj.request_stop(StopReason::shutdown);
      return r;
    }
    rj.started_steady = Clock::now();
    // Clamped so that a huge timeout cannot overflow the clock into the past.
    constexpr int64_t kMaxTimeoutMs = int64_t{100} * 365 * 24 * 3600 * 1000;  // a century
    rj.deadline = rj.started_steady +
                  std::chrono::milliseconds(std::min(rj.job.timeout_ms, kMaxTimeoutMs));
    rj.started_at = now_ms();
    if (rj.claimed_in_memory) {
      store->mark_started(StartInfo{rj.job.rowid, rj.job.id, rj.job.type, worker_id,
                                    rj.job.attempts, rj.started_at,
                                    rj.started_at + config.lease_ms, rj.job.queued_at});
    } else {
      rj.started_at = rj.job.started_at ? rj.job.started_at : rj.started_at;
    }
    rj.started = true;
    notify_watchdog();  // a new deadline to watch
    r.ran = true;
    struct RecordDuration {
      Impl& impl;
      Clock::time_point start;
      ~RecordDuration() {
        const double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
        const double old = impl.mean_run_ns.load(std::memory_order_relaxed);
        impl.mean_run_ns.store(old == 0 ? ns : old * 0.95 + ns * 0.05, std::memory_order_relaxed);
      }
    } record{*this, rj.started_steady};
    try {
      r.result_json = rj.processor->run(rj, rj.job.payload_json);
      if (r.result_json.empty()) r.result_json = "null";
      r.ok = true;
    } catch (const JobCancelled& e) {
      r.cancelled_by_processor = true;
      r.error = e.what();
    } catch (const ProcessorFailure& e) {
      r.error = e.what();
      r.error_detail = e.detail();
      r.permanent = e.permanent();
      r.retry_after_ms = e.retry_after_ms();
    } catch (const std::exception& e) {
      r.error = e.what();
    } catch (...) {
      r.error = "processor raised an unknown exception";
    }
    return r;
  }

  // The one place where the end of an attempt is decided.
  Outcome decide_outcome(RunningJob& rj, const RunResult& r) {
    Outcome o;
    o.rowid = rj.job.rowid;
    o.job_id = rj.job.id;
    o.job_type = rj.job.type;
    o.owner = worker_id;
    o.attempt = rj.job.attempts;
    o.claimed_in_memory = rj.claimed_in_memory;
    o.keep_start = rj.logged.load(std::memory_order_relaxed);
    o.queued_at = rj.job.queued_at;
    o.started_at = r.ran ? rj.started_at : 0;
    o.at = now_ms();
    {
      std::lock_guard lock(rj.progress_mutex_);
      const auto& p = rj.progress_;
      o.progress = p.percent;
      o.progress_current = p.current;
      o.progress_total = p.total;
      o.message = p.message;
      o.stage = p.stage;
      o.outcome_json = rj.outcome_json();
    }
    switch (rj.stop_reason()) {
      case StopReason::timeout:
        o.to = Status::timeout;
        o.release = !r.ran;
        o.error = "job timed out after " + seconds_text(rj.job.timeout_ms) + " s";
        return o;
      case StopReason::cancelled:
        o.to = Status::cancelled;
        o.release = !r.ran;  // cancelled before it started: no attempt was used
        o.error = "cancelled";
        return o;
      case StopReason::shutdown:
        // Even a processor that returned normally may have cut its work short on seeing
        // ctx.cancelled: run it again rather than risk a half-done "completed".
        o.to = Status::queued;
        o.release = true;
        o.run_at = o.at;
        return o;
      case StopReason::none: break;
    }
    if (r.ok) {
      o.to = Status::completed;
      o.result_json = r.result_json;
      o.progress = 100;
      return o;
    }
    if (r.cancelled_by_processor) {
      o.to = Status::cancelled;
      o.error = r.error;
      return o;
    }
    o.error = r.error;
    if (!r.error_detail.empty()) o.error_detail = r.error_detail;
    if (r.permanent || rj.job.attempts >= rj.job.max_attempts) {
      o.to = Status::failed;
    } else {
      o.to = Status::queued;
      o.run_at = o.at + (r.retry_after_ms >= 0 ? r.retry_after_ms : retry_delay(rj.job));
    }
    return o;
  }

  int64_t retry_delay(const Job& job) {
    Backoff backoff;
    try {
      backoff = Backoff::parse(job.backoff);
    } catch (const ValidationError&) {
      // Written by a newer jobforge or by hand: fall back to the fixed delay.
    }
    thread_local std::mt19937_64 rng{std::random_device{}()};
    const double unit = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    return backoff.delay_ms(job.retry_delay_ms, job.attempts, unit);
  }

  void submit_outcome(RunningJob& rj, Outcome o) {
    rj.finished = true;
    if (rj.lease_lost) return;  // fenced: another attempt owns the job now
    try {
      store->finish(std::move(o));
    } catch (const std::exception& e) {
      // The store is closed: the job stays running under an expiring lease and is recovered.
      std::fprintf(stderr, "jobforge: could not record the end of job %s: %s\n",
                   rj.job.id.c_str(), e.what());
    }
  }

  // ---- maintenance -------------------------------------------------------------------------

  // Takes back the jobs of dead peers (is_dead). Its success is also this process's proof that
  // it can write to the store: after a gap longer than a lease (an outage, a pause), the jobs it
  // runs may have been taken back by peers that could write meanwhile, so it checks them.
  void recover_orphans() {
    try {
      store->recover_orphans(now_ms(), worker_id,
                             [this](const WorkerInfo& w) { return is_dead(w); });
    } catch (const std::exception& e) {
      std::fprintf(stderr, "jobforge: recovery failed: %s\n", e.what());
      return;
    }
    // After a gap as short as the one that makes peers wait (is_dead): a peer may have judged us
    // on a watch a little longer than our own gap.
    const auto previous = last_write_ok.exchange(Clock::now());
    if (Clock::now() - previous > watch_gap() && !fence_lost_jobs())
      last_write_ok.store(previous);  // not checked: the next round tries again
  }

  // The owner's side of a lost lease: a job of ours that the store no longer shows running under
  // our name in this attempt was taken back while we could not renew. It is asked to stop, and
  // its end is not written (the store would refuse it anyway; a new attempt owns the job).
  // Returns false when the store could not be read (nothing was decided).
  bool fence_lost_jobs() {
    for (auto& rj : claimed_jobs()) {
      if (rj->claimed_in_memory || rj->finished) continue;
      std::optional<Job> now_stored;
      try {
        now_stored = store->get(rj->job.id);
      } catch (const std::exception&) {
        return false;
      }
      if (now_stored && now_stored->status == Status::running &&
          now_stored->lease_owner == worker_id && now_stored->attempts == rj->job.attempts)
        continue;
      rj->lease_lost = true;
      rj->request_stop(StopReason::shutdown);
      std::fprintf(stderr,
                   "jobforge: job %s (attempt %d) was taken back while this worker could not "
                   "renew its lease; its end will not be recorded\n",
                   rj->job.id.c_str(), rj->job.attempts);
    }
    notify_watchdog();
    return true;
  }

  // Deadlines and interruptions, on a thread that never waits for the store: a slow commit
  // (an fsync at a checkpoint) must not delay a timeout.
  void watchdog_loop() {
    for (;;) {
      uint64_t generation;
      {
        std::lock_guard lock(maintenance_mutex);
        if (maintenance_stop) return;
        generation = maintenance_generation;
      }
      const auto now = Clock::now();
      auto wake = now + std::chrono::milliseconds(config.poll_ms);
      std::vector<std::shared_ptr<RunningJob>> running;
      {
        std::lock_guard lock(jobs_mutex);
        for (auto& [id, rj] : claimed) running.push_back(rj);
      }
      const auto grace = std::chrono::milliseconds(config.interrupt_grace_ms);
      const auto event_every = std::chrono::milliseconds(config.progress_event_ms);
      for (auto& rj : running) {
        if (!rj->started || rj->finished) continue;
        // The last progress update held back by the event rate limit.
        if (rj->start_committed.load(std::memory_order_acquire)) {
          std::optional<Event> trailing;
          {
            std::lock_guard lock(rj->progress_mutex_);
            if (rj->progress_event_pending_) {
              if (now - rj->last_progress_event_ >= event_every) {
                rj->progress_event_pending_ = false;
                rj->last_progress_event_ = now;
                trailing = progress_event(*rj, rj->progress_);
              } else {
                wake = std::min(wake, rj->last_progress_event_ + event_every);
              }
            }
          }
          if (trailing) bus.publish(std::move(*trailing));
        }
        if (now >= rj->deadline) rj->request_stop(StopReason::timeout);
        const StopReason reason = rj->stop_reason();
        if (reason != StopReason::none) {
          // Asked to stop and still running: interrupt it once the grace period is over.
          if (rj->stop_requested_at == Clock::time_point::max()) rj->stop_requested_at = now;
          if (now >= rj->stop_requested_at + grace) {
            if (!rj->interrupted.exchange(true) && rj->processor) rj->processor->interrupt(*rj);
          } else {
            wake = std::min(wake, rj->stop_requested_at + grace);
          }
        } else {
          wake = std::min(wake, rj->deadline);
        }
      }
      std::unique_lock lock(maintenance_mutex);
      maintenance_cv.wait_until(lock, wake, [&] {
        return maintenance_stop || maintenance_generation != generation;
      });
    }
  }

  // A job started or was asked to stop: the watchdog recomputes its next wake-up.
  void notify_watchdog() {
    std::lock_guard lock(maintenance_mutex);
    ++maintenance_generation;
    maintenance_cv.notify_all();
  }

  // The store's side of upkeep: progress flushes, heartbeats, dead-worker rescue, cancel
  // requests from other processes, the claim mode.
  void maintenance_loop() {
    auto next_flush = Clock::now() + std::chrono::milliseconds(config.progress_flush_ms);
    auto next_heartbeat = Clock::now() + std::chrono::milliseconds(config.heartbeat_ms);
    auto next_poll = Clock::now() + std::chrono::milliseconds(config.poll_ms);
    auto next_schedule = Clock::now();  // cron: when the next schedule is due (or a re-check)
    for (;;) {
      {
        std::unique_lock lock(maintenance_mutex);
        maintenance_cv.wait_until(
            lock, std::min({next_flush, next_heartbeat, next_poll, next_schedule}),
            [&] { return maintenance_stop || poll_now || schedules_changed; });
        if (maintenance_stop) break;
        if (poll_now) next_poll = Clock::now();
        poll_now = false;
        if (schedules_changed) next_schedule = Clock::now();
        schedules_changed = false;
      }
      const auto now = Clock::now();
      if (now >= next_schedule) next_schedule = now + run_schedules();
      if (now >= next_flush) {
        flush_progress(claimed_jobs());
        next_flush = now + std::chrono::milliseconds(config.progress_flush_ms);
      }
      if (now >= next_heartbeat) {
        try {
          store->heartbeat(worker_id, now_ms(), config.lease_ms);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "jobforge: heartbeat failed: %s\n", e.what());
        }
        publish_types();
        recover_orphans();
        next_heartbeat = now + std::chrono::milliseconds(config.heartbeat_ms);
      }
      if (now >= next_poll) {
        try {
          for (const auto& id : store->cancel_requests(worker_id))
            if (auto rj = find_claimed(id)) {
              rj->request_stop(StopReason::cancelled);
              end_if_unstarted(rj);
              notify_watchdog();
            }
          check_claim_mode();
        } catch (const std::exception& e) {
          std::fprintf(stderr, "jobforge: maintenance poll failed: %s\n", e.what());
        }
        next_poll = now + std::chrono::milliseconds(config.poll_ms);
      }
    }
    flush_progress(claimed_jobs(), /*all=*/true);
  }

  std::vector<std::shared_ptr<RunningJob>> claimed_jobs() {
    std::vector<std::shared_ptr<RunningJob>> out;
    std::lock_guard lock(jobs_mutex);
    for (auto& [id, rj] : claimed) out.push_back(rj);
    return out;
  }

  // Writes the progress of running jobs that moved enough (progress_persist_percent points, or
  // a new stage) or changed at all and were last written progress_persist_ms ago. `all`: every
  // change (at shutdown). The end of a job always writes its last progress.
  void flush_progress(const std::vector<std::shared_ptr<RunningJob>>& running, bool all = false) {
    std::vector<ProgressUpdate> updates;
    const auto now = Clock::now();
    const auto period = std::chrono::milliseconds(config.progress_persist_ms);
    for (auto& rj : running) {
      if (rj->finished) continue;
      std::lock_guard lock(rj->progress_mutex_);
      if (!rj->progress_dirty_) continue;
      if (!all && !rj->progress_due_ && now - rj->dirty_since_ < period) continue;
      rj->progress_dirty_ = false;
      rj->progress_due_ = false;
      rj->persisted_percent_ = rj->progress_.percent;
      const auto& p = rj->progress_;
      updates.push_back(ProgressUpdate{rj->job.rowid, p.percent, p.current, p.total, p.message,
                                       p.stage, rj->outcome_json(), rj->job.attempts});
    }
    if (!updates.empty()) progress_writes += updates.size();
    try {
      store->save_progress(std::move(updates));
    } catch (const std::exception&) {
    }
  }

  void append_log(LogRecord line) {
    std::unique_lock lock(log_mutex);
    log_space_cv.wait(lock, [&] { return log_buffer.size() < kLogBufferMax; });
    log_buffer.push_back(std::move(line));
    ++log_lines;
    if (log_write_pending) return;
    log_write_pending = true;
    lock.unlock();
    try {
      store->append_logs(
          [this] {
            std::lock_guard l(log_mutex);
            std::vector<LogRecord> lines;
            lines.swap(log_buffer);
            log_write_pending = false;
            log_space_cv.notify_all();
            return lines;
          });
    } catch (const std::exception&) {
      // The store is closed: lines logged after the engine stopped are dropped.
      std::lock_guard l(log_mutex);
      log_buffer.clear();
      log_write_pending = false;
      log_space_cv.notify_all();
    }
  }

  static void append_log_events(const std::vector<LogRecord>& lines, std::vector<Event>& events) {
    for (const auto& l : lines) {
      Event e;
      e.type = EventType::log;
      e.job_id = l.job_id;
      e.job_type = l.job_type;
      e.status = Status::running;
      e.previous_status = Status::running;
      e.attempt = l.attempt;
      e.timestamp = l.at;
      e.message = l.message;
      e.stage = l.stage;
      e.log_level = l.level;
      e.log_id = l.id;
      e.fields_json = l.fields_json;
      events.push_back(std::move(e));
    }
  }

  void publish_progress(RunningJob& rj, const RunningJob::ProgressState& p) {
    bus.publish(progress_event(rj, p));
  }

  Event progress_event(RunningJob& rj, const RunningJob::ProgressState& p) {
    Event e;
    e.type = EventType::progress;
    e.job_id = rj.job.id;
    e.job_type = rj.job.type;
    e.status = Status::running;
    e.previous_status = Status::running;
    e.progress = p.percent;
    e.progress_current = p.current;
    e.progress_total = p.total;
    e.message = p.message;
    e.stage = p.stage;
    e.rate = p.rate;
    e.eta_ms = p.eta_ms;
    e.attempt = rj.job.attempts;
    e.timestamp = now_ms();
    return e;
  }

  // ---- workflows (docs/workflows.md) -------------------------------------------------------

  void resolve_workflow(const JobSpec& spec, NewJob& j) const {
    if (spec.queue.empty()) throw ValidationError("queue", "queue must be a non-empty name");
    j.queue = spec.queue;
    if (spec.unique_key && spec.unique_key->empty())
      throw ValidationError("unique_key", "unique_key must be a non-empty string");
    if (spec.unique_for_ms < 0)
      throw ValidationError("unique_for", "unique_for must be 0 or more seconds, got " +
                                              seconds_text(spec.unique_for_ms));
    j.unique_key = spec.unique_key;
    j.unique_for_ms = spec.unique_for_ms;
    for (const auto& id : spec.depends_on)
      if (id.empty()) throw ValidationError("depends_on", "depends_on holds an empty job id");
    j.depends_on = spec.depends_on;
    j.run_if_dependency_fails = spec.run_if_dependency_fails;
  }

  // depends_on_index: a spec may depend on earlier specs of the same call (chains, fan-in).
  static void link_dependencies(const std::vector<JobSpec>& specs, std::vector<NewJob>& rows) {
    for (size_t i = 0; i < specs.size(); ++i)
      for (size_t index : specs[i].depends_on_index) {
        if (index >= i)
          throw ValidationError("depends_on", "job " + std::to_string(i) +
                                                  " may only depend on earlier jobs of the same "
                                                  "call, not on job " + std::to_string(index));
        rows[i].depends_on.push_back(rows[index].id);
      }
  }

  InsertLimits insert_limits() const {
    InsertLimits limits;
    limits.max_queue_size = config.max_queue_size;
    std::lock_guard lock(registry_mutex);
    for (const auto& [name, q] : queue_limits)
      if (q.max_size > 0) limits.max_queue_sizes.emplace_back(name, q.max_size);
    return limits;
  }

  std::vector<Job> insert_rows(const std::vector<NewJob>& rows) {
    const auto ids = store->insert_jobs(rows, insert_limits());
    wake_dispatcher();
    std::vector<Job> out;
    out.reserve(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      if (rows[i].plain() && ids[i] == rows[i].id) {
        out.push_back(to_job(rows[i]));
        continue;
      }
      // A workflow job's status depends on the store (waiting, cancelled, an existing holder of
      // its unique key): read it back.
      auto stored = get(ids[i]);
      out.push_back(stored ? *stored : to_job(rows[i]));
    }
    return out;
  }

  std::vector<Job> enqueue_batch(const BatchSpec& batch) {
    const auto& policy = batch.on_child_failure;
    if (policy != "continue" && policy != "fail" && policy != "fail_fast")
      throw ValidationError("on_child_failure", "on_child_failure must be 'continue', 'fail' or "
                                                "'fail_fast', got '" + policy + "'");
    if (batch.parent.unique_key || !batch.parent.depends_on.empty() ||
        !batch.parent.depends_on_index.empty())
      throw ValidationError("batch", "a batch parent takes no unique_key or depends_on");
    const int64_t now = now_ms();
    std::vector<NewJob> rows;
    rows.reserve(batch.children.size() + 1);
    rows.push_back(resolve(batch.parent, now, /*allow_unknown=*/true));  // no processor runs it
    rows[0].batch_policy = policy;
    rows[0].batch_children = static_cast<int64_t>(batch.children.size());
    for (const auto& child : batch.children) {
      if (child.parent_id)
        throw ValidationError("parent", "a batch child's parent is the batch; got parent '" +
                                            *child.parent_id + "'");
      rows.push_back(resolve(child, now));
      rows.back().parent_id = rows[0].id;
    }
    return insert_rows(rows);
  }

  // ---- queues and limits -------------------------------------------------------------------

  struct QueueLimits {
    int max_concurrent = 0;
    int64_t max_size = 0;
  };

  void set_queue_limits(const std::string& queue, int max_concurrent, int64_t max_size) {
    if (queue.empty()) throw ValidationError("queue", "queue must be a non-empty name");
    if (max_concurrent < 0)
      throw ValidationError("max_concurrent", "max_concurrent must be 0 or more, got " +
                                                  std::to_string(max_concurrent));
    if (max_size < 0)
      throw ValidationError("max_size", "max_size must be 0 or more, got " + std::to_string(max_size));
    {
      std::lock_guard lock(registry_mutex);
      queue_limits[queue] = QueueLimits{max_concurrent, max_size};
      refresh_limits_locked();
    }
    wake_dispatcher();
  }

  // Called with registry_mutex held after a registration or a queue limit changed.
  void refresh_limits_locked() {
    bool any = false;
    for (auto& [name, reg] : registry)
      any = any || reg.options.max_concurrent.value_or(0) > 0 || reg.options.rate.has_value();
    for (auto& [name, q] : queue_limits) any = any || q.max_concurrent > 0;
    has_limits = any;
  }

  bool serves_queue(const std::string& queue) const {
    return config.queues.empty() ||
           std::find(config.queues.begin(), config.queues.end(), queue) != config.queues.end();
  }

  // The claim's filters without limits: every type, the queues this engine serves.
  ClaimRequest base_claim(int capacity, const std::vector<std::string>& types, bool durable) const {
    ClaimRequest r{worker_id, capacity, now_ms(), config.lease_ms, types, durable};
    r.queues = config.queues;
    return r;
  }

  // Claims up to `capacity` jobs. Without limits: one claim. With limits: one claim for the
  // unlimited types outside limited queues, then one per (limited type or not) × (limited
  // queue or not), each bounded by its limits in the store's transaction.
  std::vector<Job> claim_jobs(int capacity, const std::vector<std::string>& types, bool durable) {
    if (!has_limits.load(std::memory_order_relaxed))
      return store->claim(base_claim(capacity, types, durable));
    struct TypeSlice {
      std::vector<std::string> types;
      int max_running = 0;
      std::optional<RateLimit> rate;
    };
    std::vector<TypeSlice> type_slices(1);
    std::vector<std::pair<std::string, int>> limited_queues;
    {
      std::lock_guard lock(registry_mutex);
      for (const auto& t : types) {
        auto it = registry.find(t);
        const ProcessorOptions* o = it == registry.end() ? nullptr : &it->second.options;
        if (o && (o->max_concurrent.value_or(0) > 0 || o->rate)) {
          TypeSlice slice{{t}, o->max_concurrent.value_or(0), std::nullopt};
          if (o->rate) slice.rate = RateLimit::parse(*o->rate);
          type_slices.push_back(std::move(slice));
        } else {
          type_slices[0].types.push_back(t);
        }
      }
      for (const auto& [name, q] : queue_limits)
        if (q.max_concurrent > 0 && serves_queue(name)) limited_queues.emplace_back(name, q.max_concurrent);
    }
    std::vector<std::string> excluded;
    for (const auto& [name, n] : limited_queues) excluded.push_back(name);
    std::vector<Job> out;
    auto local_running = [&](const std::string* type, const std::string* queue) {
      int n = 0;
      std::lock_guard lock(jobs_mutex);
      for (const auto& [id, rj] : claimed)
        if ((!type || rj->job.type == *type) && (!queue || rj->job.queue == *queue)) ++n;
      for (const auto& j : out)  // claimed in this pass, not yet in `claimed`
        if ((!type || j.type == *type) && (!queue || j.queue == *queue)) ++n;
      return n;
    };
    for (size_t q = 0; q <= limited_queues.size(); ++q) {
      for (const auto& slice : type_slices) {
        const int left = capacity - static_cast<int>(out.size());
        if (left <= 0 || slice.types.empty()) break;
        ClaimRequest r = base_claim(left, slice.types, durable);
        if (q == 0) {
          r.exclude_queues = excluded;
        } else {
          r.queues = {limited_queues[q - 1].first};
          r.max_running_queue = limited_queues[q - 1].second;
          r.local_running_queue = durable ? 0 : local_running(nullptr, &r.queues.front());
        }
        if (slice.max_running > 0) {
          r.max_running_type = slice.max_running;
          r.local_running_type = durable ? 0 : local_running(&slice.types.front(), nullptr);
        }
        if (slice.rate) {
          r.rate_key = "type:" + slice.types.front();
          r.rate_per_ms = slice.rate->per_ms();
          // Bursts of up to a tenth of a second's worth (at least one job).
          r.rate_burst = std::max(1.0, r.rate_per_ms * 100.0);
        }
        auto got = store->claim(r);
        for (auto& j : got) out.push_back(std::move(j));
      }
    }
    return out;
  }

  // The next delayed job the dispatcher must wake for (unlimited work; limited work is woken by
  // local ends, the rate's next token and the poll).
  std::optional<int64_t> next_due(const std::vector<std::string>& types) {
    ClaimRequest filter = base_claim(0, types, true);
    if (has_limits.load(std::memory_order_relaxed)) {
      std::lock_guard lock(registry_mutex);
      filter.types.clear();
      for (const auto& t : types) {
        auto it = registry.find(t);
        if (it == registry.end() ||
            (it->second.options.max_concurrent.value_or(0) == 0 && !it->second.options.rate))
          filter.types.push_back(t);
      }
      for (const auto& [name, q] : queue_limits)
        if (q.max_concurrent > 0) filter.exclude_queues.push_back(name);
    }
    if (filter.types.empty()) return std::nullopt;
    if (filter.queues.empty() && filter.exclude_queues.empty()) return store->next_run_at(types);
    return store->next_run_at_filtered(filter);
  }

  // How soon a rate-limited type may have its next token.
  int64_t limited_wake_ms() {
    int64_t wake = config.poll_ms;
    std::lock_guard lock(registry_mutex);
    for (const auto& [name, reg] : registry)
      if (reg.options.rate) {
        const RateLimit rate = RateLimit::parse(*reg.options.rate);
        wake = std::min<int64_t>(wake, std::max<int64_t>(1, static_cast<int64_t>(1.0 / rate.per_ms())));
      }
    return wake;
  }

  // ---- schedules ---------------------------------------------------------------------------

  Schedule schedule(Schedule sc) {
    if (sc.name.empty()) throw ValidationError("name", "schedule name must not be empty");
    if (sc.misfire != "run_once" && sc.misfire != "skip")
      throw ValidationError("misfire", "misfire must be 'run_once' or 'skip', got '" + sc.misfire + "'");
    const CronSpec spec = CronSpec::parse(sc.cron, sc.timezone);
    JobSpec probe;  // validates type, priority, payload and queue as enqueue would
    probe.type = sc.type;
    probe.payload_json = sc.payload_json;
    probe.priority = sc.priority;
    probe.queue = sc.queue;
    resolve(probe, now_ms());
    const int64_t now = now_ms();
    sc.next_fire_at = spec.next_after(now);
    sc.created_at = now;
    store->upsert_schedule(sc);
    {
      std::lock_guard lock(maintenance_mutex);
      schedules_changed = true;
      maintenance_cv.notify_all();
    }
    for (auto& stored : store->schedules())
      if (stored.name == sc.name) return stored;
    return sc;
  }

  // Fires every due schedule once; returns how many jobs were made and sets *next_fire to the
  // earliest next fire time. Each fire is a compare-and-set on next_fire_at in the same
  // transaction as its job's insert, so several processes make exactly one job per fire.
  int fire_due_schedules(int64_t* next_fire = nullptr) {
    const int64_t now = now_ms();
    int made = 0;
    int64_t earliest = std::numeric_limits<int64_t>::max();
    for (const auto& sc : store->schedules()) {
      if (sc.next_fire_at > now) {
        earliest = std::min(earliest, pull_back_if_ahead(sc, now));
        continue;
      }
      try {
        const CronSpec spec = CronSpec::parse(sc.cron, sc.timezone);
        int64_t next;
        if (spec.is_interval()) {
          const int64_t behind = now - sc.next_fire_at;
          next = sc.next_fire_at + (behind / spec.interval_ms() + 1) * spec.interval_ms();
        } else {
          next = spec.next_after(now);
        }
        const bool missed = now - sc.next_fire_at > config.misfire_grace_ms;
        std::optional<NewJob> job;
        if (!missed || sc.misfire == "run_once") {
          JobSpec js;
          js.type = sc.type;
          js.payload_json = sc.payload_json;
          js.priority = sc.priority;
          js.queue = sc.queue;
          js.user_initiated = false;
          job = resolve(js, now, /*allow_unknown=*/true);
        }
        if (store->fire_schedule(sc.name, sc.next_fire_at, next, job) && job) ++made;
        earliest = std::min(earliest, next);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "jobforge: schedule '%s' did not fire: %s\n", sc.name.c_str(), e.what());
      }
    }
    if (made) wake_dispatcher();
    if (next_fire) *next_fire = earliest;
    return made;
  }

  // A next fire time later than the schedule's own next one from now was computed by a clock
  // ahead of ours: this process's clock is behind (started after a backward step), or the one
  // that fired it is ahead. Waiting for it would stop the schedule for the difference (an hour
  // for a one-hour step); recompute it from now. At most once per schedule every 10 minutes from
  // this process, so processes whose clocks disagree cannot fire each other's schedules in a
  // loop. Returns the next fire time to wait for.
  int64_t pull_back_if_ahead(const Schedule& sc, int64_t now) {
    try {
      const CronSpec spec = CronSpec::parse(sc.cron, sc.timezone);
      const int64_t from_now = spec.next_after(now);
      if (sc.next_fire_at <= from_now) return sc.next_fire_at;
      const auto steady = Clock::now();
      {
        std::lock_guard lock(maintenance_mutex);
        auto [it, first] = pulled_back.try_emplace(sc.name, steady);
        if (!first && steady - it->second < std::chrono::minutes(10)) return sc.next_fire_at;
        it->second = steady;
      }
      std::fprintf(stderr,
                   "jobforge: schedule '%s' was to fire %.1f s from now, later than its cron "
                   "allows (a clock step?); its next fire is recomputed from now\n",
                   sc.name.c_str(), static_cast<double>(sc.next_fire_at - now) / 1000.0);
      if (store->fire_schedule(sc.name, sc.next_fire_at, from_now, std::nullopt)) return from_now;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "jobforge: schedule '%s' not recomputed: %s\n", sc.name.c_str(),
                   e.what());
    }
    return sc.next_fire_at;
  }

  // Maintenance's part: fire what is due; returns how long to wait for the next fire (at most
  // one poll, since other processes may add schedules).
  Clock::duration run_schedules() {
    int64_t next = std::numeric_limits<int64_t>::max();
    try {
      fire_due_schedules(&next);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "jobforge: schedules failed: %s\n", e.what());
    }
    const int64_t wait = std::clamp<int64_t>(next == std::numeric_limits<int64_t>::max()
                                                 ? config.poll_ms
                                                 : next - now_ms(),
                                             0, config.poll_ms);
    return std::chrono::milliseconds(wait);
  }

  // ---- retention ---------------------------------------------------------------------------

  int64_t cleanup(int64_t older_than_ms, Context* ctx) {
    if (older_than_ms < 0)
      throw ValidationError("older_than", "older_than must be 0 or more seconds, got " +
                                              seconds_text(older_than_ms));
    const int64_t cutoff = now_ms() - older_than_ms;
    const int batch = std::max(1, config.cleanup_batch);
    int64_t total = 0;
    for (;;) {
      if (ctx) ctx->check_cancelled();
      const int64_t n = store->delete_finished(cutoff, batch);
      total += n;
      if (ctx) ctx->progress(static_cast<double>(total), 0, "deleted " + std::to_string(total) + " jobs");
      if (n < batch) break;
    }
    return total;
  }

  void ensure_cleanup_schedule() {
    if (config.retention_ms <= 0) return;
    Schedule sc;
    sc.name = "jobforge.cleanup";
    sc.cron = "@every " + std::to_string(std::max<int64_t>(1000, config.cleanup_interval_ms)) + "ms";
    sc.type = "cleanup";
    sc.payload_json = "{\"older_than_ms\": " + std::to_string(config.retention_ms) + "}";
    sc.priority = priority::maintenance;
    for (const auto& existing : store->schedules())
      if (existing.name == sc.name && existing.cron == sc.cron &&
          existing.payload_json == sc.payload_json)
        return;  // already there: keep its next fire time
    schedule(sc);
  }

  std::atomic<bool> has_limits{false};         // any max_concurrent or rate: see claim_jobs
  std::map<std::string, QueueLimits> queue_limits;  // guarded by registry_mutex
  bool schedules_changed = false;              // guarded by maintenance_mutex
  std::map<std::string, Clock::time_point> pulled_back;  // guarded by maintenance_mutex

  const uint64_t created_fork_generation = fork_generation();
  const pid_t owner_pid = getpid();
  EngineConfig config;
  std::string hostname, worker_id;
  std::unique_ptr<Store> store;
  EventBus bus;

  mutable std::mutex registry_mutex;
  std::unordered_map<std::string, Registration> registry;
  std::vector<std::string> types_cache;
  mutable std::mutex published_mutex;  // guards the two below
  mutable std::map<std::string, KnownType, std::less<>> published_cache;
  mutable std::optional<Clock::time_point> published_read;

  std::mutex lifecycle_mutex;
  bool started = false;

  std::mutex claim_mutex;  // a claim and a change of claim mode never overlap
  std::atomic<bool> durable_claims{true};
  std::atomic<bool> peers_durable{false};  // no other live worker claims in memory

  std::mutex jobs_mutex;  // guards everything below up to the threads
  std::condition_variable dispatch_cv, ready_cv;
  std::unordered_map<std::string, std::shared_ptr<RunningJob>> claimed;  // ready or running
  // Claimed jobs waiting for a worker, in claim order: a job claimed later at a higher priority
  // still runs before those claimed ahead of it.
  struct ClaimOrder {
    bool operator()(const std::shared_ptr<RunningJob>& a, const std::shared_ptr<RunningJob>& b) const {
      if (a->job.priority != b->job.priority) return a->job.priority < b->job.priority;
      if (a->job.run_at != b->job.run_at) return a->job.run_at < b->job.run_at;
      return a->job.rowid < b->job.rowid;
    }
  };
  std::set<std::shared_ptr<RunningJob>, ClaimOrder> ready;
  // Mean run time of recent jobs (ns), for the depth of claims in memory.
  std::atomic<double> mean_run_ns{0};
  bool stopping = false, dispatch_wake = false;
  // Cancel requests for jobs claimed durably but not yet added to `claimed` (a short window).
  std::unordered_map<std::string, Clock::time_point> early_cancels;

  std::mutex maintenance_mutex;
  std::condition_variable maintenance_cv;
  bool maintenance_stop = false;
  bool poll_now = false;  // guarded by maintenance_mutex: a cancel request was announced
  uint64_t maintenance_generation = 0;  // bumped when a job starts or is asked to stop

  std::mutex waiters_mutex;
  std::condition_variable waiters_cv;
  uint64_t final_generation = 0;

  // Log lines wait here for the writer: the first line into an empty buffer submits a write that
  // takes everything buffered when it runs. A full buffer makes loggers wait (backpressure).
  static constexpr size_t kLogBufferMax = 65'536;
  std::mutex log_mutex;
  std::condition_variable log_space_cv;
  std::vector<LogRecord> log_buffer;
  bool log_write_pending = false;
  std::atomic<uint64_t> progress_writes{0}, log_lines{0};

  // Peers as this process watches them (is_dead): their last heartbeat value, when it last
  // changed and when it was last seen, on the monotonic clock.
  struct PeerWatch {
    int64_t heartbeat_at;
    Clock::time_point changed, seen;
  };
  mutable std::mutex peers_mutex;
  mutable std::unordered_map<std::string, PeerWatch> peers;
  // When recover_orphans last committed (a write of ours reached the store).
  std::atomic<Clock::time_point> last_write_ok{Clock::now()};

  std::thread dispatcher, maintenance, watchdog;
  std::vector<std::thread> workers;
};

void RunningJob::progress(double current, double total, std::string_view message) {
  update_progress(current, total, message, nullptr, false, false);
}

void RunningJob::progress(double current, double total, std::string_view message,
                          std::string_view stage_name) {
  update_progress(current, total, message, &stage_name, false, false);
}

void RunningJob::stage(std::string_view name, double total) {
  update_progress(0, total, {}, &name, true, false);
}

void RunningJob::increment(double n) { update_progress(n, 0, {}, nullptr, false, true); }

// The one path for progress: the latest state in memory (cheap: a lock and a clock read), the
// store at a bounded rate (flush_progress), events at most every progress_event_ms per job
// (updates in between are coalesced; the watchdog publishes the last one when the job goes quiet).
void RunningJob::update_progress(double current, double total, std::string_view message,
                                 const std::string_view* stage_name, bool restart_stage,
                                 bool relative) {
  engine_->check_process();
  if (finished.load(std::memory_order_relaxed)) return;
  if (!std::isfinite(current)) current = 0;
  if (!std::isfinite(total) || total < 0) total = 0;
  const auto now = coarse_now();
  const auto& cfg = engine_->config;
  ProgressState snapshot;
  bool publish = false, wake_watchdog = false;
  {
    std::lock_guard lock(progress_mutex_);
    ProgressState& p = progress_;
    if (relative) {
      current += p.current;
      total = p.total;
    }
    if (stage_name && (restart_stage || p.stage != *stage_name)) {
      p.stage.assign(*stage_name);
      p.current = 0;  // a new stage counts from its start
      rate_samples_.clear();
      progress_due_ = true;  // a new stage is worth writing at once
    }
    if (current < p.current) rate_samples_.clear();  // went back: the old rate means nothing
    p.current = current;
    p.total = total;
    p.percent = total > 0 ? static_cast<int>(std::clamp(100.0 * current / total, 0.0, 100.0)) : 0;
    if (!message.empty()) p.message.assign(message);
    // Rate over the last few samples (one per 250 ms at most, the last 2-3 seconds).
    if (rate_samples_.empty() || now - rate_samples_.back().first >= std::chrono::milliseconds(250)) {
      rate_samples_.emplace_back(now, current);
      if (rate_samples_.size() > 12) rate_samples_.pop_front();
    }
    const auto& first = rate_samples_.front();
    const double dt = std::chrono::duration<double>(now - first.first).count();
    if (dt >= 0.2 && current >= first.second) {
      p.rate = (current - first.second) / dt;
      p.eta_ms = total > 0 && p.rate > 0
                     ? static_cast<int64_t>(1000.0 * std::max(0.0, total - current) / p.rate)
                     : -1;
    } else if (rate_samples_.size() == 1) {
      p.rate = 0;
      p.eta_ms = -1;
    }
    if (!progress_dirty_) dirty_since_ = now;
    progress_dirty_ = true;
    if (std::abs(p.percent - persisted_percent_) >= cfg.progress_persist_percent)
      progress_due_ = true;
    if (!start_committed.load(std::memory_order_acquire)) {
      progress_event_pending_ = true;  // published right after job-started (see on_commit)
    } else if (now - last_progress_event_ >= std::chrono::milliseconds(cfg.progress_event_ms)) {
      last_progress_event_ = now;
      progress_event_pending_ = false;
      publish = true;
      snapshot = p;
    } else if (!progress_event_pending_) {
      progress_event_pending_ = true;
      wake_watchdog = true;  // so the last update is published even if none follows
    }
  }
  if (publish) engine_->publish_progress(*this, snapshot);
  if (wake_watchdog && engine_->bus.has_subscribers()) engine_->notify_watchdog();
}

void RunningJob::log(LogLevel level, std::string_view message, std::string_view fields_json) {
  engine_->check_process();
  LogRecord line;
  line.job_id = job.id;
  line.job_type = job.type;
  line.attempt = job.attempts;
  line.at = now_ms();
  line.level = level;
  line.message.assign(message);
  line.fields_json.assign(fields_json);
  {
    std::lock_guard lock(progress_mutex_);
    line.stage = progress_.stage;
  }
  logged.store(true, std::memory_order_relaxed);
  engine_->append_log(std::move(line));
}

void RunningJob::count(std::string_view key, int64_t n) {
  engine_->check_process();
  std::lock_guard lock(progress_mutex_);
  auto it = outcome_.find(key);
  if (it == outcome_.end()) it = outcome_.emplace(std::string(key), 0).first;
  it->second += n;
}

Engine::Engine(EngineConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {
  register_processor("noop", make_noop_processor());
  register_processor("sleep", make_sleep_processor());
  register_processor("scan", make_scan_processor());
  register_processor("stat", make_stat_processor());
  register_processor("checksum", make_checksum_processor());
  if (impl_->config.allow_exec)
    register_processor("exec", make_exec_processor(impl_->config.exec_inherit_env));
  if (impl_->config.retention_ms > 0) register_processor("cleanup", make_cleanup_processor(*this));
}

Engine::~Engine() {
  // In a forked child this engine's threads do not exist and its connections belong to the
  // parent: joining, flushing or closing them would hang or break the parent's sessions.
  // Leaked on purpose; the child's exit frees the memory.
  if (impl_ && impl_->forked()) (void)impl_.release();
}

const EngineConfig& Engine::config() const noexcept { return impl_->config; }
const std::string& Engine::worker_id() const noexcept { return impl_->worker_id; }

void Engine::register_processor(const std::string& type, std::shared_ptr<Processor> processor,
                                ProcessorOptions options) {
  impl_->check_process();
  impl_->register_processor(type, std::move(processor), options);
}

bool Engine::has_processor(const std::string& type) const {
  impl_->check_process();
  return impl_->registration(type).has_value();
}

std::vector<std::string> Engine::processor_types() const {
  impl_->check_process();
  return impl_->types();
}

void Engine::start() {
  impl_->check_process();
  impl_->start();
}
void Engine::stop(bool wait) {
  if (impl_->forked()) return;  // nothing of it runs in a forked child
  impl_->stop(wait);
}
bool Engine::running() const noexcept {
  return impl_->started && !impl_->forked();
}

Job Engine::enqueue(const JobSpec& spec) {
  impl_->check_process();
  return impl_->enqueue({spec}).front();
}
std::vector<Job> Engine::enqueue_many(const std::vector<JobSpec>& specs) {
  impl_->check_process();
  return impl_->enqueue(specs);
}

std::optional<Job> Engine::get(const std::string& job_id) {
  impl_->check_process();
  return impl_->get(job_id);
}

std::vector<Job> Engine::jobs(const JobQuery& query) {
  impl_->check_process();
  if (query.limit < 0)
    throw ValidationError("limit", "limit must be 0 or more, got " + std::to_string(query.limit));
  if (query.offset < 0)
    throw ValidationError("offset", "offset must be 0 or more, got " + std::to_string(query.offset));
  auto out = impl_->store->list(query);
  for (auto& j : out) impl_->overlay_progress(j);
  return out;
}

std::vector<Job> Engine::active(int limit) {
  impl_->check_process();
  JobQuery q;
  q.statuses = {Status::created, Status::queued, Status::running};
  q.limit = limit;
  return jobs(q);
}

Stats Engine::stats() {
  impl_->check_process();
  return impl_->store->stats();
}

StatsDetail Engine::stats_detail() {
  impl_->check_process();
  return impl_->store->stats_detail(now_ms(), impl_->config.stats_window_ms,
                                    impl_->config.stats_rate_ms);
}

std::vector<LogRecord> Engine::logs(const LogQuery& query) {
  impl_->check_process();
  if (query.limit < 0)
    throw ValidationError("limit", "limit must be 0 or more, got " + std::to_string(query.limit));
  auto lines = impl_->store->logs(query);
  // No lines: an unknown id is an error, a job that logged nothing (or nothing matching) is not.
  if (lines.empty() && !impl_->store->get(query.job_id))
    throw ValidationError("job_id", "job_id '" + query.job_id + "' does not name a job");
  return lines;
}

std::vector<WorkerInfo> Engine::workers() {
  impl_->check_process();
  return impl_->store->workers();
}
std::vector<PublishedType> Engine::published_types() {
  impl_->check_process();
  return impl_->store->published_types();
}
std::vector<std::string> Engine::unserved_types(const std::vector<std::string>& types) {
  impl_->check_process();
  return impl_->unserved_types(types);
}
std::string Engine::integrity_check() {
  impl_->check_process();
  return impl_->store->integrity_check();
}

Engine::LocalStats Engine::local_stats() {
  impl_->check_process();
  LocalStats l;
  l.workers = impl_->config.workers;
  {
    std::lock_guard lock(impl_->jobs_mutex);
    l.claimed = static_cast<int64_t>(impl_->claimed.size());
    for (auto& [id, rj] : impl_->claimed)
      if (rj->started && !rj->finished) ++l.running;
  }
  l.progress_writes = impl_->progress_writes.load();
  l.log_lines = impl_->log_lines.load();
  l.events_queued = impl_->bus.queued();
  l.events_coalesced = impl_->bus.coalesced();
  l.events_dropped = impl_->bus.dropped();
  return l;
}
bool Engine::cancel(const std::string& job_id) {
  impl_->check_process();
  return impl_->cancel(job_id);
}
bool Engine::retry(const std::string& job_id) {
  impl_->check_process();
  return impl_->retry(job_id);
}
int64_t Engine::abort_all() {
  impl_->check_process();
  return impl_->abort_all();
}

std::optional<Job> Engine::wait(const std::string& job_id,
                                std::optional<std::chrono::milliseconds> timeout) {
  impl_->check_process();
  return impl_->wait(job_id, timeout);
}

EventBus& Engine::events() noexcept { return impl_->bus; }
Store& Engine::store() noexcept { return *impl_->store; }

// ---- workflows ---------------------------------------------------------------------------------

std::string RunningJob::dependency_results_json() {
  engine_->check_process();
  nlohmann::json out = nlohmann::json::object();
  for (const auto& dep : engine_->store->dependencies(job.id))
    out[dep.id] = dep.result_json ? nlohmann::json::parse(*dep.result_json, nullptr, false)
                                  : nlohmann::json();
  return out.dump();
}

RateLimit RateLimit::parse(std::string_view text) {
  const std::string t(text);
  auto fail = [&]() -> RateLimit {
    throw ValidationError("rate", "rate must look like '10/s', '100/m', '5/h' or '1/30s', got '" + t + "'");
  };
  const size_t slash = t.find('/');
  if (slash == std::string::npos || slash == 0) return fail();
  RateLimit r;
  try {
    size_t used = 0;
    r.count = std::stod(t.substr(0, slash), &used);
    if (used != slash) return fail();
  } catch (const std::exception&) {
    return fail();
  }
  if (!(r.count > 0) || !std::isfinite(r.count)) return fail();
  std::string period = t.substr(slash + 1);
  if (period == "s" || period == "sec") period = "1s";
  else if (period == "m" || period == "min") period = "1m";
  else if (period == "h" || period == "hour") period = "1h";
  else if (period == "d" || period == "day") period = "1d";
  try {
    r.period_ms = CronSpec::parse("@every " + period).interval_ms();
  } catch (const ValidationError&) {
    return fail();
  }
  return r;
}

namespace {

// The context of a processor run by run_now: no job row, no lease; progress goes to a callback.
class DirectContext final : public Context {
 public:
  DirectContext(std::string type, DirectProgress progress)
      : id_(new_job_id()), type_(std::move(type)), on_progress_(std::move(progress)) {}
  const std::string& job_id() const noexcept override { return id_; }
  const std::string& job_type() const noexcept override { return type_; }
  int attempt() const noexcept override { return 1; }
  StopReason stop_reason() const noexcept override { return StopReason::none; }
  void progress(double current, double total, std::string_view message,
                std::string_view stage_name) override {
    {
      std::lock_guard lock(mutex_);
      stage_.assign(stage_name);
    }
    progress(current, total, message);
  }
  void progress(double current, double total, std::string_view message) override {
    std::string text;
    {
      std::lock_guard lock(mutex_);
      current_ = current;
      total_ = total;
      if (!message.empty()) message_.assign(message);
      text = stage_.empty() ? message_ : stage_ + (message_.empty() ? "" : ": " + message_);
    }
    if (on_progress_) on_progress_(current, total, text);
  }
  void stage(std::string_view name, double total) override {
    {
      std::lock_guard lock(mutex_);
      stage_.assign(name);
    }
    progress(0, total, {});
  }
  void increment(double n) override {
    double current, total;
    {
      std::lock_guard lock(mutex_);
      current = current_ + n;
      total = total_;
    }
    progress(current, total, {});
  }
  void log(LogLevel level, std::string_view message, std::string_view fields_json) override {
    (void)fields_json;
    if (level >= LogLevel::info)
      std::fprintf(stderr, "%s: %.*s\n", type_.c_str(), static_cast<int>(message.size()), message.data());
  }
  void count(std::string_view key, int64_t n) override { (void)key, (void)n; }

 private:
  std::string id_, type_;
  DirectProgress on_progress_;
  std::mutex mutex_;
  double current_ = 0, total_ = 0;
  std::string message_, stage_;
};

}  // namespace

std::vector<Job> Engine::enqueue_batch(const BatchSpec& batch) {
  impl_->check_process();
  return impl_->enqueue_batch(batch);
}

std::vector<Job> Engine::dependencies(const std::string& job_id) {
  impl_->check_process();
  return impl_->store->dependencies(job_id);
}

void Engine::set_queue_limits(const std::string& queue, int max_concurrent, int64_t max_size) {
  impl_->check_process();
  impl_->set_queue_limits(queue, max_concurrent, max_size);
}

Schedule Engine::schedule(Schedule schedule) {
  impl_->check_process();
  return impl_->schedule(std::move(schedule));
}

bool Engine::unschedule(const std::string& name) {
  impl_->check_process();
  return impl_->store->delete_schedule(name);
}

std::vector<Schedule> Engine::schedules() {
  impl_->check_process();
  return impl_->store->schedules();
}

int Engine::fire_due_schedules() {
  impl_->check_process();
  return impl_->fire_due_schedules();
}

int64_t Engine::cleanup(int64_t older_than_ms, const Context* ctx) {
  impl_->check_process();
  return impl_->cleanup(older_than_ms, const_cast<Context*>(ctx));
}

std::shared_ptr<Context> Engine::direct_context(const std::string& type, DirectProgress progress) {
  impl_->check_process();
  if (!impl_->registration(type)) throw UnknownJobType(type);
  return std::make_shared<DirectContext>(type, std::move(progress));
}

std::string Engine::run_now(const std::string& type, const std::string& payload_json,
                            DirectProgress progress) {
  impl_->check_process();
  auto reg = impl_->registration(type);
  if (!reg) throw UnknownJobType(type);
  if (!nlohmann::json::accept(payload_json))
    throw ValidationError("payload", "payload is not valid JSON: '" + payload_json.substr(0, 80) + "'");
  reg->processor->validate(payload_json);  // the field rules enqueue applies, before any work
  auto ctx = std::make_shared<DirectContext>(type, std::move(progress));
  std::string result = reg->processor->run(*ctx, payload_json);
  return result.empty() ? "null" : result;
}

}  // namespace jobforge
