// Windowed statistics shared by every store: how a commit's transitions become per-(bucket, type)
// sums, and how rows read back (counts, bucket sums, run-time histogram) become a StatsDetail.
// The stores only run their own SQL around these.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "jobforge/job.hpp"
#include "jobforge/store.hpp"

namespace jobforge::window_stats {

// 10-second buckets, kept a day, pruned every 5 minutes of buckets; run times in a log-scale
// histogram with four bins per doubling (a bin's width is ~19% of its value).
inline constexpr int64_t kBucketMs = 10'000;
inline constexpr int64_t kKeepBuckets = 24 * 360;
inline constexpr int64_t kPruneEvery = 30;

inline int hist_bin(int64_t ms) { return static_cast<int>(std::floor(4.0 * std::log2(1.0 + ms))); }
inline double hist_value(int bin) { return std::exp2((bin + 0.5) / 4.0) - 1.0; }

struct Sums {
  int64_t created = 0, completed = 0, failed = 0, cancelled = 0, timeout = 0, retried = 0;
  int64_t runs = 0, run_ms = 0;
  std::map<int, int64_t> bins;
  bool empty() const noexcept {
    return !(created | completed | failed | cancelled | timeout | retried | runs);
  }
  Sums& operator+=(const Sums& x) {
    created += x.created;
    completed += x.completed;
    failed += x.failed;
    cancelled += x.cancelled;
    timeout += x.timeout;
    retried += x.retried;
    runs += x.runs;
    run_ms += x.run_ms;
    for (const auto& [bin, n] : x.bins) bins[bin] += n;
    return *this;
  }
};
// Keyed by (bucket, type), in key order: writers of several processes touch rows in one order.
using SumsByBucket = std::map<std::pair<int64_t, std::string>, Sums>;

// Adds `from` into `into`, entry by entry.
inline void merge(SumsByBucket& into, SumsByBucket from) {
  for (auto& [key, x] : from) {
    auto [it, fresh] = into.try_emplace(key, std::move(x));
    if (!fresh) it->second += x;
  }
}

inline SumsByBucket sum_transitions(const std::vector<Transition>& transitions) {
  SumsByBucket sums;
  for (const Transition& t : transitions) {
    if (t.from == t.to) continue;  // log lines and other non-changes
    Sums& x = sums[{t.at / kBucketMs, t.job_type}];
    switch (t.to) {
      case Status::queued:
        if (t.from == Status::created) ++x.created;
        else if (t.from == Status::running) ++x.retried;
        break;
      case Status::completed: ++x.completed; break;
      case Status::failed: ++x.failed; break;
      case Status::cancelled: ++x.cancelled; break;
      case Status::timeout: ++x.timeout; break;
      default: break;
    }
    if (t.run_ms >= 0) {
      ++x.runs;
      x.run_ms += t.run_ms;
      ++x.bins[hist_bin(t.run_ms)];
    }
  }
  return sums;
}

// Collects the rows a store reads for stats_detail() and derives the figures.
class DetailBuilder {
 public:
  DetailBuilder(int64_t now, int64_t window_ms, int64_t rate_window_ms)
      : first_bucket((now - window_ms) / kBucketMs + 1),
        rate_first_bucket((now - rate_window_ms) / kBucketMs + 1),
        rate_span_s_(std::max<double>(1.0, (now - rate_first_bucket * kBucketMs) / 1000.0)) {
    detail_.window_ms = window_ms;
    detail_.rate_window_ms = rate_window_ms;
  }

  const int64_t first_bucket;       // the window's first bucket
  const int64_t rate_first_bucket;  // the rate window's first bucket

  void add_count(const std::string& type, Status status, int64_t n) {
    entry(type).by_status[static_cast<int>(status)] += n;
    detail_.totals.by_status[static_cast<int>(status)] += n;
    detail_.totals.total += n;
  }

  // One row of sums over buckets of the window; `recent`: the buckets of the rate window.
  void add_window(const std::string& type, bool recent, const Sums& s) {
    TypeStats& t = entry(type);
    if (recent) {
      t.created_per_s += static_cast<double>(s.created) / rate_span_s_;
      t.completed_per_s += static_cast<double>(s.completed) / rate_span_s_;
    }
    t.completed += s.completed;
    t.failed += s.failed;
    t.cancelled += s.cancelled;
    t.timed_out += s.timeout;
    t.retried += s.retried;
    t.runs += s.runs;
    run_ms_[type] += static_cast<double>(s.run_ms);
  }

  void add_hist(const std::string& type, int bin, int64_t n) { hist_[type].emplace_back(bin, n); }

  // The figures; the store then sets due and oldest_due_age_ms.
  StatsDetail finish() {
    for (auto& [name, t] : types_) {
      t.finished = t.completed + t.failed + t.cancelled + t.timed_out;
      const int64_t ended = t.completed + t.failed + t.timed_out + t.retried;
      t.error_rate = ended ? static_cast<double>(t.failed + t.timed_out + t.retried) / ended : 0;
      if (t.runs) t.mean_run_ms = run_ms_[name] / static_cast<double>(t.runs);
      auto it = hist_.find(name);
      if (it != hist_.end()) {
        t.p50_run_ms = percentile(it->second, 0.50);
        t.p95_run_ms = percentile(it->second, 0.95);
      }
      detail_.types.push_back(t);
    }
    detail_.queued = detail_.totals.count(Status::queued);
    return detail_;
  }

 private:
  TypeStats& entry(const std::string& name) {
    TypeStats& t = types_[name];
    t.type = name;
    return t;
  }

  static double percentile(std::vector<std::pair<int, int64_t>>& bins, double q) {
    std::sort(bins.begin(), bins.end());
    int64_t total = 0;
    for (auto& [bin, n] : bins) total += n;
    if (!total) return 0;
    const double target = q * static_cast<double>(total);
    int64_t seen = 0;
    for (auto& [bin, n] : bins) {
      seen += n;
      if (static_cast<double>(seen) >= target) return hist_value(bin);
    }
    return hist_value(bins.back().first);
  }

  double rate_span_s_;
  StatsDetail detail_;
  std::map<std::string, TypeStats> types_;
  std::map<std::string, double> run_ms_;
  std::map<std::string, std::vector<std::pair<int, int64_t>>> hist_;
};

}  // namespace jobforge::window_stats
