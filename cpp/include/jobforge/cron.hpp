// Cron expressions: parsing and next-fire times, for schedules.
// Invariant: a CronSpec that parsed always has a next fire time (expressions that can never fire,
// such as "0 0 30 2 *", are rejected by parse).
#pragma once

#include <bitset>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace jobforge {

// One parsed schedule: five cron fields (minute hour day-of-month month day-of-week, with ranges
// a-b, steps */n and a-b/n, lists a,b, and names jan..dec / sun..sat), a shorthand (@hourly,
// @daily/@midnight, @weekly, @monthly, @yearly/@annually), or a fixed interval ("@every 30s",
// "@every 1h30m"; units ms, s, m, h, d).
// Day of month and day of week: when both are restricted (neither is a bare "*"), a day matches
// if either does (Vixie cron and croniter; like croniter, "*/1" counts as restricted).
// Time zones: "UTC" (the default) or a fixed offset ("+05:30", "-08:00", "UTC+2"); named zones
// need a tz database, which this build does not use (GCC 12's <chrono> has none).
class CronSpec {
 public:
  // Throws ValidationError naming the field "cron" (or "timezone") and the bad text.
  static CronSpec parse(std::string_view expression, std::string_view timezone = "UTC");

  // The first fire time strictly after `after_ms` (Unix ms), in UTC. For @every schedules it is
  // after_ms + interval (the schedule's own anchor is the caller's business).
  int64_t next_after(int64_t after_ms) const;

  bool is_interval() const noexcept { return interval_ms_ > 0; }
  int64_t interval_ms() const noexcept { return interval_ms_; }
  int utc_offset_minutes() const noexcept { return offset_minutes_; }
  const std::string& expression() const noexcept { return expression_; }

 private:
  std::string expression_;
  int64_t interval_ms_ = 0;
  int offset_minutes_ = 0;
  std::bitset<60> minutes_;
  std::bitset<24> hours_;
  std::bitset<32> days_;     // 1..31
  std::bitset<13> months_;   // 1..12
  std::bitset<7> weekdays_;  // 0 = Sunday
  bool day_star_ = false, weekday_star_ = false;
};

// Parses a time zone text: "UTC", "Z", "", or a fixed offset. Returns minutes east of UTC.
// Throws ValidationError naming the field "timezone".
int parse_utc_offset(std::string_view timezone);

}  // namespace jobforge
