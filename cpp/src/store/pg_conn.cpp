#include "store/pg_conn.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstdlib>

#include "jobforge/store.hpp"

namespace jobforge {
namespace {

struct Span {
  size_t begin = 0, end = 0;  // [begin, end) of a secret in the URL
};

std::string percent_decoded(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

// Where the secrets of a PostgreSQL URL are: the password of the user info (up to the last '@'
// before the query, so a stray '@' or '/' in it stays hidden) and the values of the password=
// and sslpassword= parameters (their names percent-decoded, as libpq reads them).
std::vector<Span> secret_spans(const std::string& url) {
  std::vector<Span> spans;
  if (!is_postgres_url(url)) return spans;
  const size_t start = url.find("://") + 3;
  const size_t query = std::min(url.find('?', start), url.size());
  const size_t at = url.rfind('@', query == url.size() ? std::string::npos : query);
  if (at != std::string::npos && at >= start) {
    const size_t colon = url.find(':', start);
    if (colon < at) spans.push_back({colon + 1, at});
  }
  size_t p = query;
  while (p < url.size()) {
    const size_t key = p + 1;
    size_t next = url.find('&', key);
    if (next == std::string::npos) next = url.size();
    const size_t eq = url.find('=', key);
    if (eq < next) {
      std::string name = percent_decoded(url.substr(key, eq - key));  // libpq decodes names
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (name == "password" || name == "sslpassword") spans.push_back({eq + 1, next});
    }
    p = next;
  }
  return spans;
}

void replace_all(std::string& text, const std::string& what, const std::string& with) {
  if (what.empty()) return;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + with.size()))
    text.replace(p, what.size(), with);
}

}  // namespace

std::string redact_url(const std::string& path) {
  std::string out = path;
  const auto spans = secret_spans(path);
  for (auto it = spans.rbegin(); it != spans.rend(); ++it)
    out.replace(it->begin, it->end - it->begin, "***");
  return out;
}

namespace pg {

std::string scrub_secrets(std::string message, const std::string& url) {
  const auto spans = secret_spans(url);
  if (spans.empty()) return message;
  replace_all(message, url, redact_url(url));
  std::vector<std::string> secrets;
  for (const auto& span : spans) {
    std::string raw = url.substr(span.begin, span.end - span.begin);
    secrets.push_back(percent_decoded(raw));
    secrets.push_back(std::move(raw));
  }
  // Longest first, so a secret that contains another is replaced whole.
  std::sort(secrets.begin(), secrets.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  for (const auto& secret : secrets) replace_all(message, secret, "***");
  return message;
}

}  // namespace pg
}  // namespace jobforge

namespace jobforge::pg {

int64_t Result::integer(int row, int col) const {
  if (is_null(row, col)) return 0;
  const char* v = PQgetvalue(r_, row, col);
  const int len = PQgetlength(r_, row, col);
  int64_t out = 0;
  auto [ptr, ec] = std::from_chars(v, v + len, out);
  if (ec != std::errc()) {
    // A numeric (e.g. sum() of bigints) may come as "12.0"; read it as a double.
    return static_cast<int64_t>(std::strtod(v, nullptr));
  }
  return out;
}

double Result::real(int row, int col) const {
  if (is_null(row, col)) return 0;
  return std::strtod(PQgetvalue(r_, row, col), nullptr);
}

int64_t Result::affected() const {
  const char* n = r_ ? PQcmdTuples(r_) : "";
  return *n ? std::strtoll(n, nullptr, 10) : 0;
}

Params& Params::add(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return add(std::string_view(buf));
}

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

std::string text_array(const std::vector<std::string>& values) {
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out += ',';
    out += '"';
    for (char c : values[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += '}';
  return out;
}

Connection::Connection(const std::string& url, int connect_timeout_s) {
  const std::string timeout = std::to_string(connect_timeout_s);
  const char* keys[] = {"connect_timeout", "application_name", "dbname", nullptr};
  const char* values[] = {timeout.c_str(), "jobforge", url.c_str(), nullptr};
  // expand_dbname = 1, the URL last: its own settings win over these defaults.
  conn_ = PQconnectdbParams(keys, values, 1);
  if (!conn_ || PQstatus(conn_) != CONNECTION_OK) {
    std::string message = conn_ ? PQerrorMessage(conn_) : "out of memory";
    while (!message.empty() && (message.back() == '\n' || message.back() == ' '))
      message.pop_back();
    if (conn_) PQfinish(conn_);
    conn_ = nullptr;
    throw PgError(kPgConnectionLost, "08001",
                  "cannot connect to PostgreSQL: " + scrub_secrets(message, url));
  }
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);  // NOTICEs are not errors
}

Connection::~Connection() {
  if (conn_) PQfinish(conn_);
}

void Connection::fail(PGresult* r, std::string_view sql) {
  std::string sqlstate;
  std::string message;
  if (r) {
    if (const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE)) sqlstate = s;
    message = PQresultErrorMessage(r);
  }
  if (message.empty()) message = PQerrorMessage(conn_);
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  if (r) PQclear(r);
  const bool lost = PQstatus(conn_) != CONNECTION_OK;
  std::string what = message;
  if (sql.size() > 80) sql = sql.substr(0, 80);
  what += " (in: ";
  what += sql;
  what += ")";
  throw PgError(lost ? kPgConnectionLost : kPgErrorCode,
                lost && sqlstate.empty() ? "08006" : sqlstate, what);
}

Result Connection::exec(std::string_view sql) {
  const std::string text(sql);
  PGresult* r = PQexec(conn_, text.c_str());
  const auto status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail(r, sql);
  return Result(r);
}

Result Connection::exec(std::string_view sql, const Params& params) {
  const std::string text(sql);
  std::vector<const char*> values(params.size());
  for (size_t i = 0; i < params.size(); ++i) values[i] = params[i] ? params[i]->c_str() : nullptr;
  PGresult* r = PQexecParams(conn_, text.c_str(), static_cast<int>(params.size()), nullptr,
                             values.data(), nullptr, nullptr, 0);
  const auto status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail(r, sql);
  return Result(r);
}

bool Connection::consume_input() {
  return PQconsumeInput(conn_) == 1;
}

std::vector<std::pair<std::string, std::string>> Connection::notifications() {
  std::vector<std::pair<std::string, std::string>> out;
  while (PGnotify* n = PQnotifies(conn_)) {
    out.emplace_back(n->relname, n->extra ? n->extra : "");
    PQfreemem(n);
  }
  return out;
}

}  // namespace jobforge::pg
