// Shared helpers of the C++ suite: a per-test temporary folder for real SQLite files, a raw
// sqlite3 handle for looking at a file behind the store's back, and generous waits that only
// guard against hangs (they never assert how fast something is).
#pragma once

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <ostream>
#include <random>
#include <string>
#include <thread>

#include "jobforge/events.hpp"
#include "jobforge/job.hpp"

namespace jobforge {
// Readable names in GoogleTest's failure messages (found by argument-dependent lookup).
inline void PrintTo(Status s, std::ostream* os) {
  *os << to_string(s);
}
inline void PrintTo(EventType t, std::ostream* os) {
  *os << to_string(t);
}
}  // namespace jobforge

namespace jobforge::testing {

// Long enough that only a hang (or a bug) hits it, even under TSan on a slow machine.
inline constexpr std::chrono::milliseconds kPatience{30'000};

// A fresh folder per test, removed at teardown.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::random_device rd;
    std::string name = "jobforge-test-";
    if (info) name += std::string(info->test_suite_name()) + "-" + info->name() + "-";
    name += std::to_string(rd()) + std::to_string(rd());
    for (char& c : name)
      if (c == '/' || c == ' ') c = '_';
    path_ = std::filesystem::temp_directory_path() / name;
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const noexcept { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// A raw connection to a database file, to create seed files and read what the store wrote.
class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
        SQLITE_OK) {
      ADD_FAILURE() << "cannot open " << path << ": " << sqlite3_errmsg(db_);
    }
    sqlite3_busy_timeout(db_, 10'000);
  }
  ~RawDb() { sqlite3_close_v2(db_); }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;

  void exec(const std::string& sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      ADD_FAILURE() << "sql failed: " << (err ? err : "?") << "\n" << sql;
      sqlite3_free(err);
    }
  }
  // The first column of the first row as text ("" when there is no row or it is NULL).
  std::string text(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    std::string out;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) {
      ADD_FAILURE() << "prepare failed: " << sqlite3_errmsg(db_) << "\n" << sql;
      return out;
    }
    if (sqlite3_step(stmt) == SQLITE_ROW && sqlite3_column_type(stmt, 0) != SQLITE_NULL)
      out = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    sqlite3_finalize(stmt);
    return out;
  }
  int64_t integer(const std::string& sql) {
    const std::string t = text(sql);
    return t.empty() ? 0 : std::stoll(t);
  }

 private:
  sqlite3* db_ = nullptr;
};

// ---- PostgreSQL ------------------------------------------------------------------------------

// The server the PostgreSQL half of the suite uses: $JOBFORGE_TEST_POSTGRES_URL, else the local
// server's `test` database over its socket. Each test gets a schema of its own (random name),
// dropped at teardown: nothing else in the database is touched.
inline std::string postgres_base_url() {
  const char* env = std::getenv("JOBFORGE_TEST_POSTGRES_URL");
  return env && *env ? env : "postgresql:///test";
}

class PgSchema {
 public:
  PgSchema() {
    std::random_device rd;
    name_ = "jobforge_test_" + std::to_string(rd()) + std::to_string(rd());
    conn_ = PQconnectdb(postgres_base_url().c_str());
    if (PQstatus(conn_) != CONNECTION_OK) {
      ADD_FAILURE() << "PostgreSQL at " << postgres_base_url()
                    << " is not reachable (start it, or set JOBFORGE_TEST_POSTGRES_URL): "
                    << PQerrorMessage(conn_);
      return;
    }
    PQsetNoticeProcessor(
        conn_, [](void*, const char*) {}, nullptr);
    exec("CREATE SCHEMA " + name_);
    exec("SET search_path TO " + name_);
  }
  ~PgSchema() {
    // A server restarted by the test: this connection is gone, a new one drops the schema.
    if (PQstatus(conn_) != CONNECTION_OK) PQreset(conn_);
    if (PQstatus(conn_) == CONNECTION_OK) exec("DROP SCHEMA IF EXISTS " + name_ + " CASCADE");
    PQfinish(conn_);
  }
  PgSchema(const PgSchema&) = delete;
  PgSchema& operator=(const PgSchema&) = delete;

  // The store URL: the base URL with search_path set to this schema.
  std::string url() const {
    const std::string base = postgres_base_url();
    return base + (base.find('?') == std::string::npos ? "?" : "&") + "options=-csearch_path%3D" +
           name_;
  }
  const std::string& name() const noexcept { return name_; }

  void exec(const std::string& sql) {
    std::lock_guard lock(mutex_);
    PGresult* r = PQexec(conn_, sql.c_str());
    const auto st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
      ADD_FAILURE() << "sql failed: " << PQresultErrorMessage(r) << "\n" << sql;
    PQclear(r);
  }
  std::string text(const std::string& sql) {
    std::lock_guard lock(mutex_);
    PGresult* r = PQexec(conn_, sql.c_str());
    std::string out;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
      ADD_FAILURE() << "query failed: " << PQresultErrorMessage(r) << "\n" << sql;
    else if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
      out = PQgetvalue(r, 0, 0);
    PQclear(r);
    return out;
  }
  int64_t integer(const std::string& sql) {
    const std::string t = text(sql);
    return t.empty() ? 0 : std::stoll(t);
  }

 private:
  std::string name_;
  std::mutex mutex_;  // one connection, used from the test's and the store's threads
  PGconn* conn_ = nullptr;
};

enum class Backend { sqlite, postgres };
inline std::string backend_name(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::sqlite ? "Sqlite" : "Postgres";
}

// Where a test's database lives: a file in a temporary folder, or a fresh PostgreSQL schema.
// `path()` is what a store or an engine is opened on; `integer`/`text` read behind its back.
class TestDb {
 public:
  explicit TestDb(Backend backend) : backend_(backend) {
    if (backend == Backend::postgres) schema_ = std::make_unique<PgSchema>();
  }
  Backend backend() const noexcept { return backend_; }
  bool postgres() const noexcept { return backend_ == Backend::postgres; }
  std::string path() const { return schema_ ? schema_->url() : dir_.file("jobs.db"); }
  std::string file(const std::string& name) const {
    return schema_ ? schema_->url() : dir_.file(name);
  }
  const TempDir& dir() const noexcept { return dir_; }
  int64_t integer(const std::string& sql) {
    if (schema_) return schema_->integer(sql);
    RawDb raw(path());
    return raw.integer(sql);
  }
  std::string text(const std::string& sql) {
    if (schema_) return schema_->text(sql);
    RawDb raw(path());
    return raw.text(sql);
  }
  void exec(const std::string& sql) {
    if (schema_) return schema_->exec(sql);
    RawDb raw(path());
    raw.exec(sql);
  }

 private:
  Backend backend_;
  TempDir dir_;
  std::unique_ptr<PgSchema> schema_;
};

// Polls `condition` until it holds or the patience runs out; returns whether it held.
inline bool eventually(const std::function<bool()>& condition,
                       std::chrono::milliseconds patience = kPatience) {
  const auto deadline = std::chrono::steady_clock::now() + patience;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= deadline) return condition();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// A one-shot gate: threads wait until it is opened.
class Gate {
 public:
  void open() {
    std::lock_guard lock(mutex_);
    open_ = true;
    cv_.notify_all();
  }
  bool wait(std::chrono::milliseconds patience = kPatience) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, patience, [&] { return open_; });
  }
  bool is_open() {
    std::lock_guard lock(mutex_);
    return open_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = false;
};

}  // namespace jobforge::testing
