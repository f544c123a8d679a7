// Native processors every engine has. They run on worker threads without the GIL.
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <thread>

#include "jobforge/engine.hpp"

namespace jobforge {
namespace {

class NoopProcessor final : public Processor {
 public:
  std::string run(Context&, const std::string&) override { return "null"; }
};

// Sleeps for payload["seconds"] in short slices, reporting progress and honouring cancellation.
class SleepProcessor final : public Processor {
 public:
  std::string run(Context& ctx, const std::string& payload_json) override {
    const auto payload = nlohmann::json::parse(payload_json, nullptr, false);
    double seconds = 0;
    if (payload.is_object() && payload.contains("seconds")) {
      if (!payload["seconds"].is_number())
        throw ProcessorFailure("sleep: payload field 'seconds' must be a number, got " +
                                   payload["seconds"].dump(),
                               "", true);
      seconds = payload["seconds"].get<double>();
    } else if (payload.is_number()) {
      seconds = payload.get<double>();
    }
    if (!std::isfinite(seconds) || seconds < 0)
      throw ProcessorFailure("sleep: seconds must be 0 or more, got " + payload.dump(), "", true);
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const auto end = start + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(seconds));
    for (;;) {
      ctx.check_cancelled();
      const auto now = Clock::now();
      const double elapsed = std::chrono::duration<double>(now - start).count();
      ctx.progress(std::min(elapsed, seconds), seconds);
      if (now >= end) break;
      std::this_thread::sleep_for(std::min<Clock::duration>(end - now, std::chrono::milliseconds(10)));
    }
    return nlohmann::json{{"slept", seconds}}.dump();
  }
};

}  // namespace

std::shared_ptr<Processor> make_noop_processor() { return std::make_shared<NoopProcessor>(); }
std::shared_ptr<Processor> make_sleep_processor() { return std::make_shared<SleepProcessor>(); }

namespace {

// Deletes finished jobs older than the payload's older_than_ms, in small transactions.
class CleanupProcessor final : public Processor {
 public:
  explicit CleanupProcessor(Engine& engine) : engine_(engine) {}
  std::string run(Context& ctx, const std::string& payload_json) override {
    const auto payload = nlohmann::json::parse(payload_json, nullptr, false);
    if (!payload.is_object() || !payload.contains("older_than_ms") ||
        !payload["older_than_ms"].is_number())
      throw ProcessorFailure("cleanup needs a payload {\"older_than_ms\": n}, got " + payload_json,
                             "", /*permanent=*/true);
    const int64_t deleted = engine_.cleanup(payload["older_than_ms"].get<int64_t>(), &ctx);
    return "{\"deleted\": " + std::to_string(deleted) + "}";
  }

 private:
  Engine& engine_;
};

}  // namespace

std::shared_ptr<Processor> make_cleanup_processor(Engine& engine) {
  return std::make_shared<CleanupProcessor>(engine);
}

}  // namespace jobforge
