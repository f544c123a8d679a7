// W7, native half: one C++ processor calls ctx.progress n times; prints ns per call and the
// progress events a subscriber received, as one JSON line. Built by benchmarks/run.py.
#include <jobforge/engine.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

namespace {

class ProgressFlood final : public jobforge::Processor {
 public:
  explicit ProgressFlood(long n) : n_(n) {}
  std::string run(jobforge::Context& ctx, const std::string&) override {
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < n_; ++i) ctx.progress(static_cast<double>(i), static_cast<double>(n_));
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return "null";
  }
  long n_;
  double seconds = 0;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: progress_native DB N\n");
    return 2;
  }
  const long n = std::atol(argv[2]);
  jobforge::EngineConfig config;
  config.path = argv[1];
  config.workers = 1;
  jobforge::Engine engine(config);
  auto flood = std::make_shared<ProgressFlood>(n);
  engine.register_processor("flood", flood);
  std::atomic<long> events{0};
  engine.events().subscribe([&](const std::vector<jobforge::Event>& batch) {
    for (const auto& e : batch)
      if (e.type == jobforge::EventType::progress) ++events;
  });
  engine.start();
  jobforge::JobSpec spec;
  spec.type = "flood";
  const auto job = engine.enqueue(spec);
  const auto done = engine.wait(job.id, std::chrono::minutes(10));
  engine.store().flush();
  engine.events().flush();
  engine.stop();
  const bool ok = done && done->status == jobforge::Status::completed;
  std::printf("{\"ns_per_call\": %.2f, \"events\": %ld, \"seconds\": %.4f, \"ok\": %s}\n",
              flood->seconds / static_cast<double>(n) * 1e9, events.load(), flood->seconds,
              ok ? "true" : "false");
  return ok ? 0 : 1;
}
