#include "jobforge/job.hpp"

#include <array>
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

int64_t now_ms() noexcept {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string new_job_id() {
  // UUID version 7: 48 bits of Unix ms, then random bits. Within one millisecond a per-process
  // counter in the random field keeps ids of this process increasing.
  thread_local std::mt19937_64 rng{std::random_device{}() ^
                                   (static_cast<uint64_t>(now_ms()) << 16) ^
                                   reinterpret_cast<uintptr_t>(&rng)};
  static std::atomic<uint64_t> sequence{0};
  const uint64_t ms = static_cast<uint64_t>(now_ms());
  const uint64_t seq = sequence.fetch_add(1, std::memory_order_relaxed) & 0xfff;
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
