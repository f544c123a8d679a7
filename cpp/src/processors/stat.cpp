// "stat": records one file's path, size and mtime as they are now (stat(2) on a worker thread,
// without the GIL). A file that cannot be stat'ed fails the job for good, naming the path.
#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "jobforge/processors.hpp"
#include "payload.hpp"

namespace jobforge {
namespace {

using payload::json;

std::string parse_stat(const std::string& payload_json) {
  payload::Reader r("stat", payload_json);
  r.only({"path"});
  std::optional<std::string> path = r.string("path");
  if (!path) r.fail("path", "is required (a file path)", json());
  return *path;
}

class StatProcessor final : public Processor {
 public:
  void validate(const std::string& payload_json) const override { parse_stat(payload_json); }

  std::string run(Context& ctx, const std::string& payload_json) override {
    const std::string path = payload::read_or_fail([&] { return parse_stat(payload_json); });
    ctx.check_cancelled();
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      const int err = errno;
      throw ProcessorFailure("stat: cannot stat " + path + ": " + std::strerror(err),
                             payload::dump({{"path", path}, {"errno", err}}),
                             /*permanent=*/true);
    }
    // As Python's os.stat().st_mtime_ns / 1e9 (one rounding), so manifests match bit for bit.
    const int64_t ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
    const double mtime = static_cast<double>(ns) / 1e9;
    return payload::dump({{"path", path}, {"size", st.st_size}, {"mtime", mtime}});
  }
};

}  // namespace

std::shared_ptr<Processor> make_stat_processor() { return std::make_shared<StatProcessor>(); }

}  // namespace jobforge
