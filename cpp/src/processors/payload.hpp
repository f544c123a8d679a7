// Reading a native processor's JSON payload. Every rule a field breaks becomes a permanent
// ProcessorFailure (or, at enqueue, a ValidationError) whose message names the processor, the
// field and the value: "exec: payload field 'argv' must be a non-empty list of strings, got "ls"".
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "jobforge/errors.hpp"

namespace jobforge::payload {

using nlohmann::json;

// Payload fields are checked when a job is enqueued (ValidationError: nothing is written) and
// again when it runs (a job enqueued by a process without the processor): there, the same
// message fails the job for good.
class Reader {
 public:
  Reader(std::string processor, const std::string& payload_json)
      : processor_(std::move(processor)) {
    doc_ = json::parse(payload_json, nullptr, false);
    if (doc_.is_null()) doc_ = json::object();  // enqueue(type) without a payload
    if (!doc_.is_object()) fail("payload", "must be a JSON object", doc_);
  }

  const json& doc() const { return doc_; }
  bool has(const char* field) const { return doc_.contains(field) && !doc_[field].is_null(); }

  [[noreturn]] void fail(const std::string& field, const std::string& rule,
                         const json& value) const {
    const std::string shown = value.dump(-1, ' ', false, json::error_handler_t::replace);
    const std::string text = processor_ + ": payload field '" + field + "' " + rule + ", got " +
                             (shown.size() > 200 ? shown.substr(0, 200) + "..." : shown);
    throw ValidationError(field, text);
  }

  void only(std::initializer_list<const char*> known) const {
    for (auto& [key, value] : doc_.items()) {
      bool ok = false;
      for (const char* k : known) ok = ok || key == k;
      if (!ok) {
        std::string names;
        for (const char* k : known) names += std::string(names.empty() ? "" : ", ") + k;
        fail(key, "is not known (known fields: " + names + ")", value);
      }
    }
  }

  bool boolean(const char* field, bool fallback) const {
    if (!has(field)) return fallback;
    const json& v = doc_[field];
    if (!v.is_boolean()) fail(field, "must be true or false", v);
    return v.get<bool>();
  }

  double number(const char* field, double fallback, double min, double max) const {
    if (!has(field)) return fallback;
    const json& v = doc_[field];
    if (!v.is_number()) fail(field, "must be a number", v);
    const double d = v.get<double>();
    if (!(d >= min && d <= max))
      fail(field, "must be between " + json(min).dump() + " and " + json(max).dump(), v);
    return d;
  }

  int64_t integer(const char* field, int64_t fallback, int64_t min, int64_t max) const {
    if (!has(field)) return fallback;
    const json& v = doc_[field];
    if (!v.is_number_integer()) fail(field, "must be an integer", v);
    const int64_t i = v.get<int64_t>();
    if (i < min || i > max)
      fail(field, "must be between " + std::to_string(min) + " and " + std::to_string(max), v);
    return i;
  }

  // allow_nul: the text is data (a command's stdin), not a path, name or argument handed to
  // the C library, where a NUL would silently cut it short ("secret.key\0.jpg" is "secret.key").
  std::optional<std::string> string(const char* field, bool allow_empty = false,
                                    bool allow_nul = false) const {
    if (!has(field)) return std::nullopt;
    const json& v = doc_[field];
    if (!v.is_string()) fail(field, "must be a string", v);
    if (!allow_empty && v.get_ref<const std::string&>().empty())
      fail(field, "must not be empty", v);
    if (!allow_nul) no_nul(field, v);
    return v.get<std::string>();
  }

  // One of `choices`.
  std::string choice(const char* field, const std::string& fallback,
                     std::initializer_list<const char*> choices) const {
    if (!has(field)) return fallback;
    const json& v = doc_[field];
    if (v.is_string())
      for (const char* c : choices)
        if (v.get_ref<const std::string&>() == c) return c;
    std::string names;
    for (const char* c : choices) names += std::string(names.empty() ? "" : ", ") + "'" + c + "'";
    fail(field, "must be one of " + names, v);
  }

  // A list of strings (a single string is taken as a list of one when `single_ok`).
  std::vector<std::string> strings(const char* field, bool single_ok, bool allow_empty_list) const {
    std::vector<std::string> out;
    if (!has(field)) return out;
    const json& v = doc_[field];
    if (single_ok && v.is_string()) {
      if (v.get_ref<const std::string&>().empty()) fail(field, "must not be empty", v);
      no_nul(field, v);
      out.push_back(v.get<std::string>());
      return out;
    }
    if (!v.is_array()) fail(field, "must be a list of strings", v);
    if (v.empty() && !allow_empty_list) fail(field, "must not be an empty list", v);
    for (size_t i = 0; i < v.size(); ++i) {
      const std::string name = std::string(field) + "[" + std::to_string(i) + "]";
      if (!v[i].is_string()) fail(name, "must be a string", v[i]);
      if (v[i].get_ref<const std::string&>().empty()) fail(name, "must not be empty", v[i]);
      no_nul(name, v[i]);
      out.push_back(v[i].get<std::string>());
    }
    return out;
  }

  // An object of string values.
  std::map<std::string, std::string> string_map(const char* field) const {
    std::map<std::string, std::string> out;
    if (!has(field)) return out;
    const json& v = doc_[field];
    if (!v.is_object()) fail(field, "must be an object of strings", v);
    for (auto& [key, value] : v.items()) {
      if (key.find('\0') != std::string::npos)
        fail(field,
             "must not have a name with a NUL character (got the name " + dump_text(key) + ")", v);
      if (!value.is_string()) fail(std::string(field) + "." + key, "must be a string", value);
      no_nul(std::string(field) + "." + key, value);
      out[key] = value.get<std::string>();
    }
    return out;
  }

 private:
  // A string handed to the C library (a path, an argument) ends at its first NUL.
  void no_nul(const std::string& field, const json& v) const {
    if (v.get_ref<const std::string&>().find('\0') != std::string::npos)
      fail(field, "must not contain a NUL character", v);
  }
  static std::string dump_text(const std::string& text) {
    return json(text).dump(-1, ' ', false, json::error_handler_t::replace);
  }

  std::string processor_;
  json doc_;
};

// Runs `read` (which parses a payload with a Reader); at run time a ValidationError becomes a
// permanent failure: the same payload would fail every attempt.
template <typename Fn>
auto read_or_fail(Fn&& read) {
  try {
    return read();
  } catch (const ValidationError& e) {
    throw ProcessorFailure(e.what(), "", /*permanent=*/true);
  }
}

// Result JSON that never throws on bytes that are not UTF-8 (file names, command output): they
// become U+FFFD.
inline std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace jobforge::payload
