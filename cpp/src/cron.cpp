// Cron parsing and next-fire times. Calendar arithmetic is done on civil days (Howard Hinnant's
// days_from_civil), so no time zone database or libc time functions are involved.
#include "jobforge/cron.hpp"

#include <array>
#include <cctype>
#include <string>
#include <vector>

#include "jobforge/errors.hpp"

namespace jobforge {
namespace {

constexpr int64_t kMinuteMs = 60'000;
constexpr int64_t kDayMs = 86'400'000;

// Days since 1970-01-01 of a civil date (proleptic Gregorian).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

struct Civil {
  int64_t year;
  unsigned month, day;
};

Civil civil_from_days(int64_t z) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t y = static_cast<int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  return Civil{y + (m <= 2), m, d};
}

int64_t floor_div(int64_t a, int64_t b) {
  return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

[[noreturn]] void bad(std::string_view expression, const std::string& why) {
  throw ValidationError("cron",
                        "cron expression '" + std::string(expression) + "' is invalid: " + why);
}

struct FieldRule {
  const char* name;
  int min, max;
  const char* const* names;  // index 0 = value `min`, or nullptr
  int name_count;
};

constexpr const char* kMonthNames[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                       "jul", "aug", "sep", "oct", "nov", "dec"};
constexpr const char* kDayNames[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

// One number or name of a field; -1 when it is neither.
int parse_value(const std::string& text, const FieldRule& rule) {
  if (text.empty()) return -1;
  if (std::isdigit(static_cast<unsigned char>(text[0]))) {
    if (text.size() > 4) return -1;
    int v = 0;
    for (char c : text) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return -1;
      v = v * 10 + (c - '0');
    }
    return v;
  }
  for (int i = 0; i < rule.name_count; ++i)
    if (text == rule.names[i]) return rule.min + i;
  return -1;
}

// Parses one field into a bit per allowed value (bit v for value v). Day of week accepts 7 as
// Sunday.
std::vector<bool> parse_field(std::string_view expression, const std::string& field,
                              const FieldRule& rule) {
  const int top = rule.max;  // inclusive, before folding 7 → 0 for weekdays
  std::vector<bool> bits(static_cast<size_t>(top) + 1, false);
  size_t start = 0;
  while (start <= field.size()) {
    const size_t comma = field.find(',', start);
    const std::string part =
        field.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (part.empty()) bad(expression, std::string("empty item in the ") + rule.name + " field");
    std::string range = part;
    int step = 1;
    const size_t slash = part.find('/');
    if (slash != std::string::npos) {
      range = part.substr(0, slash);
      const std::string step_text = part.substr(slash + 1);
      FieldRule number{rule.name, 0, 0, nullptr, 0};
      step = parse_value(step_text, number);
      if (step <= 0)
        bad(expression, std::string("step '") + step_text + "' in the " + rule.name +
                            " field must be a positive number");
    }
    int lo, hi;
    if (range == "*") {
      lo = rule.min;
      hi = top;
    } else {
      const size_t dash = range.find('-');
      const std::string lo_text = range.substr(0, dash);
      lo = parse_value(lo_text, rule);
      if (lo < 0) bad(expression, "'" + lo_text + "' is not a valid " + rule.name + " value");
      if (dash != std::string::npos) {
        const std::string hi_text = range.substr(dash + 1);
        hi = parse_value(hi_text, rule);
        if (hi < 0) bad(expression, "'" + hi_text + "' is not a valid " + rule.name + " value");
      } else {
        hi = slash != std::string::npos ? top : lo;  // "a/n" means a, a+n, ... to the end
      }
      if (lo < rule.min || lo > top || hi < rule.min || hi > top)
        bad(expression, std::string(rule.name) + " value in '" + part + "' is out of range " +
                            std::to_string(rule.min) + "-" + std::to_string(top));
      if (lo > hi)
        bad(expression, "range '" + range + "' in the " + rule.name + " field goes backwards");
    }
    for (int v = lo; v <= hi; v += step) bits[static_cast<size_t>(v)] = true;
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return bits;
}

// "30s", "1h30m", "500ms", "2d".
int64_t parse_interval(std::string_view expression, const std::string& text) {
  if (text.empty()) bad(expression, "@every needs a duration such as 30s, 5m or 1h30m");
  int64_t total = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t digits = i;
    while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
    if (digits == i || digits - i > 9)
      bad(expression, "duration '" + text + "' must be numbers with units (ms, s, m, h, d)");
    const int64_t n = std::stoll(text.substr(i, digits - i));
    size_t unit_end = digits;
    while (unit_end < text.size() && std::isalpha(static_cast<unsigned char>(text[unit_end])))
      ++unit_end;
    const std::string unit = text.substr(digits, unit_end - digits);
    int64_t scale;
    if (unit == "ms")
      scale = 1;
    else if (unit == "s")
      scale = 1000;
    else if (unit == "m")
      scale = kMinuteMs;
    else if (unit == "h")
      scale = 60 * kMinuteMs;
    else if (unit == "d")
      scale = kDayMs;
    else
      bad(expression, "duration '" + text + "' has unknown unit '" + unit + "' (ms, s, m, h, d)");
    total += n * scale;
    if (total > int64_t{3650} * kDayMs)
      bad(expression, "duration '" + text + "' is over ten years");
    i = unit_end;
  }
  if (total < 1000) bad(expression, "@every needs at least 1s, got '" + text + "'");
  return total;
}

}  // namespace

int parse_utc_offset(std::string_view timezone) {
  std::string tz = trim(timezone);
  const std::string low = lower(tz);
  if (low.empty() || low == "utc" || low == "z" || low == "gmt" || low == "etc/utc") return 0;
  std::string rest = tz;
  if (low.rfind("utc", 0) == 0 || low.rfind("gmt", 0) == 0) rest = tz.substr(3);
  auto fail = [&]() -> int {
    throw ValidationError("timezone",
                          "timezone must be 'UTC' or a fixed offset such as '+05:30' or "
                          "'UTC-8' (named zones are not supported), got '" +
                              std::string(timezone) + "'");
  };
  if (rest.size() < 2 || (rest[0] != '+' && rest[0] != '-')) return fail();
  const int sign = rest[0] == '-' ? -1 : 1;
  std::string digits = rest.substr(1);
  int hours = 0, minutes = 0;
  const size_t colon = digits.find(':');
  std::string h = digits, m;
  if (colon != std::string::npos) {
    h = digits.substr(0, colon);
    m = digits.substr(colon + 1);
  } else if (digits.size() == 4) {
    h = digits.substr(0, 2);
    m = digits.substr(2);
  }
  auto number = [&](const std::string& s, int max) {
    if (s.empty() || s.size() > 2) return fail();
    int v = 0;
    for (char c : s) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return fail();
      v = v * 10 + (c - '0');
    }
    return v > max ? fail() : v;
  };
  hours = number(h, 14);
  if (!m.empty()) minutes = number(m, 59);
  return sign * (hours * 60 + minutes);
}

CronSpec CronSpec::parse(std::string_view expression, std::string_view timezone) {
  CronSpec spec;
  spec.offset_minutes_ = parse_utc_offset(timezone);
  std::string text = lower(trim(expression));
  spec.expression_ = trim(expression);
  if (text.empty()) bad(expression, "it is empty");
  if (text.rfind("@every", 0) == 0) {
    spec.interval_ms_ = parse_interval(expression, trim(text.substr(6)));
    return spec;
  }
  if (text[0] == '@') {
    static const std::array<std::pair<const char*, const char*>, 7> shorthands{{
        {"@yearly", "0 0 1 1 *"},
        {"@annually", "0 0 1 1 *"},
        {"@monthly", "0 0 1 * *"},
        {"@weekly", "0 0 * * 0"},
        {"@daily", "0 0 * * *"},
        {"@midnight", "0 0 * * *"},
        {"@hourly", "0 * * * *"},
    }};
    bool found = false;
    for (auto& [name, fields] : shorthands)
      if (text == name) {
        text = fields;
        found = true;
      }
    if (!found)
      bad(expression,
          "unknown shorthand (use @hourly, @daily, @weekly, @monthly, @yearly or "
          "@every <duration>)");
  }
  std::vector<std::string> fields;
  {
    size_t i = 0;
    while (i < text.size()) {
      while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
      size_t j = i;
      while (j < text.size() && !std::isspace(static_cast<unsigned char>(text[j]))) ++j;
      if (j > i) fields.push_back(text.substr(i, j - i));
      i = j;
    }
  }
  if (fields.size() != 5)
    bad(expression, "expected 5 fields (minute hour day-of-month month day-of-week), got " +
                        std::to_string(fields.size()));
  const FieldRule minute{"minute", 0, 59, nullptr, 0}, hour{"hour", 0, 23, nullptr, 0},
      day{"day-of-month", 1, 31, nullptr, 0}, month{"month", 1, 12, kMonthNames, 12},
      weekday{"day-of-week", 0, 7, kDayNames, 7};
  auto mins = parse_field(expression, fields[0], minute);
  auto hrs = parse_field(expression, fields[1], hour);
  auto days = parse_field(expression, fields[2], day);
  auto mons = parse_field(expression, fields[3], month);
  auto wdays = parse_field(expression, fields[4], weekday);
  for (int v = 0; v < 60; ++v) spec.minutes_[v] = mins[v];
  for (int v = 0; v < 24; ++v) spec.hours_[v] = hrs[v];
  for (int v = 1; v <= 31; ++v) spec.days_[v] = days[v];
  for (int v = 1; v <= 12; ++v) spec.months_[v] = mons[v];
  for (int v = 0; v < 7; ++v) spec.weekdays_[v] = wdays[v];
  if (wdays[7]) spec.weekdays_[0] = true;
  // Only a bare "*" leaves a day field unrestricted (as croniter reads it: "*/1" or "1-31"
  // restrict it, so the day matches if either day field does).
  spec.day_star_ = fields[2] == "*";
  spec.weekday_star_ = fields[4] == "*";
  // Reject expressions that can never fire: a day-of-month that no chosen month has, with the
  // day of week unrestricted (e.g. "0 0 30 2 *", "0 0 31 4,6 *").
  if (spec.weekday_star_ || spec.weekdays_.none()) {
    static constexpr int kMaxDays[13] = {0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool possible = false;
    for (int m = 1; m <= 12 && !possible; ++m)
      if (spec.months_[m])
        for (int d = 1; d <= kMaxDays[m] && !possible; ++d) possible = spec.days_[d];
    if (!possible) bad(expression, "it never fires (no chosen month has that day)");
  }
  return spec;
}

int64_t CronSpec::next_after(int64_t after_ms) const {
  if (interval_ms_ > 0) return after_ms + interval_ms_;
  const int64_t offset_ms = static_cast<int64_t>(offset_minutes_) * kMinuteMs;
  // Work in local wall-clock minutes; start at the next whole minute after `after`.
  int64_t local_minute = floor_div(after_ms + offset_ms, kMinuteMs) + 1;
  int64_t day = floor_div(local_minute, 1440);
  int minute_of_day = static_cast<int>(local_minute - day * 1440);
  // A matching day occurs within 28 years for every accepted expression (the calendar repeats
  // every 400 years, but Feb 29 on a given weekday recurs within 28).
  for (int guard = 0; guard < 366 * 30; ++guard, ++day, minute_of_day = 0) {
    const Civil c = civil_from_days(day);
    if (!months_[c.month]) {
      // Skip to the first day of the next month.
      const unsigned next_month = c.month == 12 ? 1 : c.month + 1;
      const int64_t next_year = c.month == 12 ? c.year + 1 : c.year;
      day = days_from_civil(next_year, next_month, 1) - 1;
      continue;
    }
    const int weekday = static_cast<int>(((day % 7) + 11) % 7);  // 1970-01-01 was a Thursday (4)
    const bool dom = days_[c.day], dow = weekdays_[static_cast<size_t>(weekday)];
    const bool day_ok = (day_star_ || weekday_star_) ? (dom && dow) : (dom || dow);
    if (!day_ok) continue;
    for (int h = minute_of_day / 60; h < 24; ++h) {
      if (!hours_[static_cast<size_t>(h)]) continue;
      const int first_minute = h == minute_of_day / 60 ? minute_of_day % 60 : 0;
      for (int m = first_minute; m < 60; ++m)
        if (minutes_[static_cast<size_t>(m)])
          return (day * 1440 + h * 60 + m) * kMinuteMs - offset_ms;
    }
  }
  throw ValidationError("cron", "cron expression '" + expression_ + "' has no fire time");
}

}  // namespace jobforge
