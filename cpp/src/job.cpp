#include "jobforge/job.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <random>
#include <sstream>

#include "jobforge/errors.hpp"

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

std::atomic<uint64_t> g_fork_generation{0};

void after_fork_in_child() noexcept {
  g_fork_generation.fetch_add(1, std::memory_order_relaxed);
}

// Registered once, when the library loads (before any thread of ours exists).
const bool g_fork_handler_registered = [] {
  return pthread_atfork(nullptr, nullptr, &after_fork_in_child) == 0;
}();

}  // namespace

uint64_t fork_generation() noexcept {
  (void)g_fork_handler_registered;
  return g_fork_generation.load(std::memory_order_relaxed);
}

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

namespace {

// Milliseconds of a clock that never steps: CLOCK_BOOTTIME (monotonic, and it counts the time a
// suspended machine slept, as the wall clock does).
int64_t steady_ms() noexcept {
  timespec ts{};
#ifdef CLOCK_BOOTTIME
  clock_gettime(CLOCK_BOOTTIME, &ts);
#else
  clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

// The wall clock as this process reads it: it follows the system clock's slow corrections (and
// steps under a second), but a step beyond that while the process runs (an operator's `date -s`,
// a VM restored, NTP stepping) is not followed: time goes on from where it was, by the monotonic
// clock. A step cannot make a running process hold due jobs for an hour, stop its schedules, or
// stamp times an hour off that other processes then compare with theirs.
constexpr int64_t kStepMs = 1000;
std::atomic<int64_t> g_correction{0};    // added to the system clock: minus the steps seen
std::atomic<int64_t> g_base{INT64_MIN};  // (corrected wall clock - steady_ms) at the last check
std::atomic<int64_t> g_checked_at{0};    // steady_ms of the last check

}  // namespace

int64_t now_ms() noexcept {
  using namespace std::chrono;
  const int64_t wall = duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count() +
                       test_clock_offset().load(std::memory_order_relaxed);
  const int64_t steady = steady_ms();
  int64_t correction = g_correction.load(std::memory_order_relaxed);
  int64_t base = g_base.load(std::memory_order_relaxed);
  if (base == INT64_MIN) {
    g_checked_at.store(steady, std::memory_order_relaxed);
    g_base.compare_exchange_strong(base, wall + correction - steady);
    return wall + correction;
  }
  for (;;) {
    const int64_t now = wall + correction;
    const int64_t since = steady - g_checked_at.load(std::memory_order_relaxed);
    const int64_t drift = now - (base + steady);  // how far the wall clock moved on its own
    const int64_t allowed = kStepMs + std::max<int64_t>(0, since) / 1000;  // slewing: 0.1%
    if (drift <= allowed && drift >= -allowed) {
      if (since > 1000) {  // follow slow corrections
        g_base.store(now - steady, std::memory_order_relaxed);
        g_checked_at.store(steady, std::memory_order_relaxed);
      }
      return now;
    }
    // A step: absorb it (another thread may have done so already: then try again).
    if (g_correction.compare_exchange_strong(correction, correction - drift)) return base + steady;
    base = g_base.load(std::memory_order_relaxed);
  }
}

std::string new_job_id() {
  // UUID version 7: 48 bits of Unix ms and a 12-bit counter (RFC 9562, method 1), then random
  // bits. (ms, counter) only moves forward in this process, borrowing from the next millisecond
  // when 4096 ids are made within one, so the ids of one process are strictly increasing.
  // A forked child inherits this thread's generator state and `last`: without a new seed it
  // would draw the parent's (and every sibling's) next random parts, in the same milliseconds.
  struct Generator {
    std::mt19937_64 rng;
    uint64_t fork_generation = ~0ull;
  };
  thread_local Generator gen;
  if (gen.fork_generation != fork_generation()) {
    gen.fork_generation = fork_generation();
    std::random_device device;
    const unsigned salt[] = {static_cast<unsigned>(getpid()), static_cast<unsigned>(now_ms()),
                             static_cast<unsigned>(reinterpret_cast<uintptr_t>(&gen))};
    std::seed_seq seed{device(), device(), device(), device(), salt[0], salt[1], salt[2]};
    gen.rng.seed(seed);
  }
  auto& rng = gen.rng;
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
