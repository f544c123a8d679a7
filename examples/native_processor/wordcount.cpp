// An example of a native jobforge processor built outside jobforge: "wordcount" counts the lines,
// words and bytes of a text file, in chunks, with progress, cancellation, log lines, outcome
// counters and payload errors that name the field. Python:
//
//   import jobforge, jobforge_wordcount
//   engine.register_native("wordcount", jobforge_wordcount.processor(), timeout=60)
//   engine.enqueue("wordcount", {"path": "book.txt"}).wait().result
#include <pybind11/pybind11.h>
#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <jobforge/sdk_python.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace {

using nlohmann::json;

struct Options {
  std::string path;
  size_t chunk_bytes = 64 * 1024;
  double pause_per_chunk_s = 0;  // lets the tests catch a job while it runs
};

Options parse(const std::string& payload_json) {
  const json p = json::parse(payload_json, nullptr, false);
  if (!p.is_object())
    throw jobforge::ValidationError(
        "payload", "wordcount: payload must be an object, got " + payload_json.substr(0, 80));
  Options o;
  if (!p.contains("path") || !p["path"].is_string() || p["path"].get<std::string>().empty())
    throw jobforge::ValidationError(
        "path", "wordcount: payload field 'path' must be a non-empty string, got " +
                    (p.contains("path") ? p["path"].dump() : std::string("nothing")));
  o.path = p["path"].get<std::string>();
  if (p.contains("chunk_bytes")) {
    if (!p["chunk_bytes"].is_number_unsigned() || p["chunk_bytes"].get<size_t>() == 0)
      throw jobforge::ValidationError(
          "chunk_bytes", "wordcount: payload field 'chunk_bytes' must be a positive integer, got " +
                             p["chunk_bytes"].dump());
    o.chunk_bytes = p["chunk_bytes"].get<size_t>();
  }
  if (p.contains("pause_per_chunk")) {
    if (!p["pause_per_chunk"].is_number() || p["pause_per_chunk"].get<double>() < 0)
      throw jobforge::ValidationError(
          "pause_per_chunk",
          "wordcount: payload field 'pause_per_chunk' must be 0 or more seconds, got " +
              p["pause_per_chunk"].dump());
    o.pause_per_chunk_s = p["pause_per_chunk"].get<double>();
  }
  return o;
}

class WordCount final : public jobforge::Processor {
 public:
  // At enqueue: a bad payload is refused before anything is written.
  void validate(const std::string& payload_json) const override { parse(payload_json); }

  std::string run(jobforge::Context& ctx, const std::string& payload_json) override {
    Options o;
    try {
      o = parse(payload_json);
    } catch (const jobforge::ValidationError& e) {
      throw jobforge::ProcessorFailure(e.what(), "", /*permanent=*/true);  // no use retrying
    }
    struct stat st {};
    std::FILE* f = std::fopen(o.path.c_str(), "rb");
    if (!f || ::fstat(fileno(f), &st) != 0) {
      // The file may yet appear: an ordinary failure, retried with the job's backoff.
      throw jobforge::ProcessorFailure(
          "wordcount: cannot open '" + o.path + "': " + std::strerror(errno), "");
    }
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> closer(f, &std::fclose);
    ctx.stage("counting", static_cast<double>(st.st_size));
    ctx.log(jobforge::LogLevel::info, "wordcount: counting " + o.path,
            json{{"bytes", st.st_size}}.dump());
    std::vector<char> buf(o.chunk_bytes);
    int64_t lines = 0, words = 0, bytes = 0;
    bool in_word = false;
    for (;;) {
      ctx.check_cancelled();  // throws JobCancelled: the job ends cancelled / timeout
      const size_t n = std::fread(buf.data(), 1, buf.size(), f);
      if (n == 0) break;
      for (size_t i = 0; i < n; ++i) {
        const auto c = static_cast<unsigned char>(buf[i]);
        lines += c == '\n';
        const bool space = std::isspace(c) != 0;
        words += !space && !in_word;
        in_word = !space;
      }
      bytes += static_cast<int64_t>(n);
      ctx.increment(static_cast<double>(n));
      if (o.pause_per_chunk_s > 0)
        std::this_thread::sleep_for(std::chrono::duration<double>(o.pause_per_chunk_s));
    }
    ctx.count("lines", lines);
    ctx.count("words", words);
    return json{{"path", o.path}, {"lines", lines}, {"words", words}, {"bytes", bytes}}.dump();
  }
};

}  // namespace

PYBIND11_MODULE(jobforge_wordcount, m) {
  m.doc() = "An example native jobforge processor: wordcount";
  m.attr("SDK_ABI_VERSION") = jobforge::sdk::abi_version;
  // A new capsule each call; every capsule shares its processor with the engines it is given to.
  m.def("processor", [] {
    return pybind11::reinterpret_steal<pybind11::object>(
        jobforge::sdk::processor_capsule(std::make_shared<WordCount>()));
  });
}
