#include "jobforge/job.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "jobforge/errors.hpp"
#include <atomic>
#include <chrono>
#include <random>

namespace jobforge {
namespace {

constexpr std::array<std::string_view, kStatusCount> kStatusNames = {
    "created", "queued", "running", "completed", "failed", "cancelled", "timeout"};

using S = Status;
// The lifecycle, in one table: kTransitions[from][to].
constexpr bool kTransitions[kStatusCount][kStatusCount] = {
    //            created queued running completed failed cancelled timeout
    /* created */ {false, true, false, false, false, true, false},
    /* queued  */ {false, false, true, false, false, true, false},
    /* running */ {false, true, false, true, true, true, true},
    /* completed*/ {false, false, false, false, false, false, false},
    /* failed  */ {false, true, false, false, false, false, false},
    /* cancelled*/ {false, true, false, false, false, false, false},
    /* timeout */ {false, true, false, false, false, false, false},
};

}  // namespace

std::string_view to_string(Status s) noexcept { return kStatusNames[static_cast<int>(s)]; }

std::optional<Status> parse_status(std::string_view s) noexcept {
  for (int i = 0; i < kStatusCount; ++i)
    if (kStatusNames[i] == s) return static_cast<Status>(i);
  return std::nullopt;
}

bool is_final(Status s) noexcept {
  return s == S::completed || s == S::failed || s == S::cancelled || s == S::timeout;
}

bool can_transition(Status from, Status to) noexcept {
  return kTransitions[static_cast<int>(from)][static_cast<int>(to)];
}

std::vector<Status> statuses_leading_to(Status to) {
  std::vector<Status> out;
  for (int i = 0; i < kStatusCount; ++i)
    if (kTransitions[i][static_cast<int>(to)]) out.push_back(static_cast<Status>(i));
  return out;
}

int64_t Backoff::delay_ms(int64_t base_ms, int attempt, double unit) const noexcept {
  const int n = std::max(1, attempt);
  double d = static_cast<double>(base_ms);
  switch (kind) {
    case Kind::fixed: break;
    case Kind::linear: d *= n; break;
    case Kind::exponential: d *= std::pow(factor, n - 1); break;
  }
  if (max_ms > 0) d = std::min(d, static_cast<double>(max_ms));
  if (jitter > 0) d *= 1.0 + jitter * (2.0 * unit - 1.0);
  if (!std::isfinite(d) || d > 1e15) d = 1e15;  // ~31,000 years: "never", without overflow
  return std::max<int64_t>(0, static_cast<int64_t>(std::llround(d)));
}

std::string Backoff::to_string() const {
  switch (kind) {
    case Kind::fixed: return "fixed";
    case Kind::linear: return "linear";
    case Kind::exponential: break;
  }
  std::ostringstream out;
  out << "exponential:" << factor << ':' << max_ms << ':' << jitter;
  return out.str();
}

Backoff Backoff::parse(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return ValidationError("backoff", "backoff '" + std::string(text) + "' is invalid: " + why);
  };
  Backoff b;
  if (text == "fixed" || text.empty()) return b;
  if (text == "linear") {
    b.kind = Kind::linear;
    return b;
  }
  if (text.substr(0, 11) != "exponential") throw bad("kind must be fixed, linear or exponential");
  b.kind = Kind::exponential;
  if (text.size() == 11) return b;
  std::istringstream in{std::string(text.substr(12))};
  char c1 = 0, c2 = 0;
  if (text[11] != ':' || !(in >> b.factor >> c1 >> b.max_ms >> c2 >> b.jitter) || c1 != ':' ||
      c2 != ':' || !in.eof())
    throw bad("expected exponential:<factor>:<max_ms>:<jitter>");
  if (!(b.factor >= 1.0) || !std::isfinite(b.factor)) throw bad("factor must be at least 1");
  if (b.max_ms < 0) throw bad("max must be 0 (none) or more");
  if (!(b.jitter >= 0.0 && b.jitter <= 1.0)) throw bad("jitter must be between 0 and 1");
  return b;
}

namespace {

// Test only: a shift of this process's wall clock, to simulate a clock step per process.
std::atomic<int64_t>& test_clock_offset() {
  static std::atomic<int64_t> offset{[] {
    const char* text = std::getenv("JOBFORGE_TEST_CLOCK_OFFSET_MS");
    return text ? std::strtoll(text, nullptr, 10) : int64_t{0};
  }()};
  return offset;
}

}  // namespace

void set_test_clock_offset_ms(int64_t offset_ms) noexcept {
  test_clock_offset().store(offset_ms, std::memory_order_relaxed);
}

int64_t now_ms() noexcept {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count() +
         test_clock_offset().load(std::memory_order_relaxed);
}

std::string new_job_id() {
  // UUID version 7: 48 bits of Unix ms and a 12-bit counter (RFC 9562, method 1), then random
  // bits. (ms, counter) only moves forward in this process, borrowing from the next millisecond
  // when 4096 ids are made within one, so the ids of one process are strictly increasing.
  thread_local std::mt19937_64 rng{std::random_device{}() ^
                                   (static_cast<uint64_t>(now_ms()) << 16) ^
                                   reinterpret_cast<uintptr_t>(&rng)};
  static std::atomic<uint64_t> last{0};  // (ms << 12) | counter
  const uint64_t floor = static_cast<uint64_t>(now_ms()) << 12;
  uint64_t prev = last.load(std::memory_order_relaxed);
  uint64_t next;
  do {
    next = std::max(floor, prev + 1);
  } while (!last.compare_exchange_weak(prev, next, std::memory_order_relaxed));
  const uint64_t ms = next >> 12;
  const uint64_t seq = next & 0xfff;
  const uint64_t hi = (ms << 16) | (0x7ull << 12) | seq;
  const uint64_t lo = (rng() & 0x3fffffffffffffffull) | 0x8000000000000000ull;
  static constexpr char hex[] = "0123456789abcdef";
  std::string s(36, '-');
  int pos = 0;
  auto put = [&](uint64_t v, int nibbles) {
    for (int i = nibbles - 1; i >= 0; --i) {
      if (pos == 8 || pos == 13 || pos == 18 || pos == 23) ++pos;
      s[pos++] = hex[(v >> (i * 4)) & 0xf];
    }
  };
  put(hi, 16);
  put(lo, 16);
  return s;
}

}  // namespace jobforge
