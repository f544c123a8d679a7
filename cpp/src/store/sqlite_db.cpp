#include "store/sqlite_db.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#ifndef SQLITE_MUTEX_STATIC_MAIN  // named SQLITE_MUTEX_STATIC_MASTER before SQLite 3.35
#define SQLITE_MUTEX_STATIC_MAIN SQLITE_MUTEX_STATIC_MASTER
#endif

namespace jobforge::sqlite {
namespace {

// SQLite and fork(). A child has only the thread that forked; a static SQLite mutex another
// thread held at that instant (the writer thread inside the allocator, the page cache or the
// VFS) stays locked forever in the child, whose first SQLite call then hangs. These handlers
// take every static mutex before fork() and release them on both sides, so the fork happens
// while no other thread is inside one of them. Outer to inner, the order SQLite nests them in
// (an application's own APP mutexes around its SQLite calls first; PRNG before MAIN, because
// sqlite3_randomness holds PRNG while it finds the default VFS under MAIN, which ThreadSanitizer
// reported as an inversion; the allocator last).
constexpr std::array kForkMutexIds = {
    SQLITE_MUTEX_STATIC_APP1, SQLITE_MUTEX_STATIC_APP2, SQLITE_MUTEX_STATIC_APP3,
    SQLITE_MUTEX_STATIC_PRNG, SQLITE_MUTEX_STATIC_MAIN, SQLITE_MUTEX_STATIC_OPEN,
    SQLITE_MUTEX_STATIC_VFS1, SQLITE_MUTEX_STATIC_VFS2, SQLITE_MUTEX_STATIC_VFS3,
    SQLITE_MUTEX_STATIC_LRU,  SQLITE_MUTEX_STATIC_PMEM, SQLITE_MUTEX_STATIC_MEM,
};
// Looked up once, at registration: a fork handler must not allocate or initialise anything.
std::array<sqlite3_mutex*, kForkMutexIds.size()> g_fork_mutexes{};

// Who is inside a ForkShield, and whether a fork waits for them to leave.
struct ForkGate {
  std::mutex mutex;
  std::condition_variable changed;
  int inside = 0;
  bool forking = false;
};
// Replaced (the old one leaked) in a child: threads of the parent that waited on it do not
// exist there, and a condition variable with such waiters must not be used again.
ForkGate* g_gate = new ForkGate;
thread_local int t_shield_depth = 0;

void lock_sqlite_for_fork() noexcept {
  {
    // A thread that forks from inside a shield (none of ours does) waits only for the others.
    const int mine = t_shield_depth > 0 ? 1 : 0;
    std::unique_lock lock(g_gate->mutex);
    g_gate->forking = true;
    g_gate->changed.wait(lock, [&] { return g_gate->inside == mine; });
  }
  for (sqlite3_mutex* m : g_fork_mutexes)
    if (m) sqlite3_mutex_enter(m);
}

void release_sqlite_mutexes() noexcept {
  for (auto it = g_fork_mutexes.rbegin(); it != g_fork_mutexes.rend(); ++it)
    if (*it) sqlite3_mutex_leave(*it);
}

void unlock_sqlite_in_parent() noexcept {
  release_sqlite_mutexes();
  {
    std::lock_guard lock(g_gate->mutex);
    g_gate->forking = false;
  }
  g_gate->changed.notify_all();
}

void unlock_sqlite_in_child() noexcept {
  release_sqlite_mutexes();
  auto* fresh = new ForkGate;
  fresh->inside = t_shield_depth > 0 ? 1 : 0;
  g_gate = fresh;
}

void register_fork_handlers() {
  static const bool registered = [] {
    // Without mutexes (SQLITE_THREADSAFE=0) there is nothing to hold; alloc returns null then.
    if (sqlite3_initialize() != SQLITE_OK) return false;
    for (size_t i = 0; i < kForkMutexIds.size(); ++i)
      g_fork_mutexes[i] = sqlite3_mutex_alloc(kForkMutexIds[i]);
    return pthread_atfork(&lock_sqlite_for_fork, &unlock_sqlite_in_parent,
                          &unlock_sqlite_in_child) == 0;
  }();
  (void)registered;
}

}  // namespace

ForkShield::ForkShield() {
  if (t_shield_depth++ > 0) return;
  ForkGate* gate = g_gate;
  std::unique_lock lock(gate->mutex);
  gate->changed.wait(lock, [&] { return !gate->forking; });
  ++gate->inside;
}

ForkShield::~ForkShield() {
  if (!held_ || --t_shield_depth > 0) return;
  ForkGate* gate = g_gate;
  bool wake = false;
  {
    std::lock_guard lock(gate->mutex);
    wake = --gate->inside == 0 && gate->forking;
  }
  if (wake) gate->changed.notify_all();
}

void throw_error(sqlite3* db, int code, std::string_view context) {
  std::string message = "sqlite: ";
  message.append(context);
  message += ": ";
  message += db ? sqlite3_errmsg(db) : sqlite3_errstr(code);
  message += " (code ";
  message += std::to_string(code);
  message += ")";
  throw StoreError(code, message);
}

Database::Database(const std::string& path, int flags, int busy_timeout_ms)
    : busy_timeout_ms_(busy_timeout_ms) {
  // No global memory statistics: with them every allocation of every connection takes one
  // process-wide mutex. Only possible before SQLite initialises (else a harmless SQLITE_MISUSE,
  // e.g. when Python's sqlite3 module came first).
  static const bool memstatus_off = [] {
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    return true;
  }();
  (void)memstatus_off;
  register_fork_handlers();
  // A new database file is readable by its owner only (jobs hold payloads, results and logs);
  // SQLite gives its -wal and -shm files the same mode. An existing file keeps its own mode.
  if ((flags & SQLITE_OPEN_CREATE) && !path.empty() && path != ":memory:" &&
      path.rfind("file:", 0) != 0) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) ::close(fd);  // else it exists already, or SQLite reports why it cannot open
  }
  const int rc = sqlite3_open_v2(path.c_str(), &db_, flags | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string message = "cannot open database '" + path + "': " +
                          (db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc));
    sqlite3_close_v2(db_);
    db_ = nullptr;
    throw StoreError(rc, message);
  }
  sqlite3_extended_result_codes(db_, 1);
  sqlite3_busy_handler(db_, &Database::on_busy, this);
}

int Database::on_busy(void* self, int tries) {
  auto* d = static_cast<Database*>(self);
  const auto now = std::chrono::steady_clock::now();
  if (tries == 0) d->busy_since_ = now;
  if (now - d->busy_since_ >= std::chrono::milliseconds(d->busy_timeout_ms_)) return 0;  // BUSY
  std::this_thread::sleep_for(std::chrono::microseconds(std::min(1000, 50 << std::min(tries, 5))));
  return 1;
}

Database::~Database() {
  if (db_) sqlite3_close_v2(db_);
}

void Database::exec(const char* sql) {
  char* err = nullptr;
  const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string message = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    throw StoreError(rc, "sqlite: " + message + " (code " + std::to_string(rc) + ")");
  }
}

int64_t Database::query_int(const char* sql) {
  Statement s(*this, sql);
  return s.step() ? s.get_int(0) : 0;
}

Statement::Statement(Database& db, std::string_view sql) : db_(db) {
  const int rc = sqlite3_prepare_v3(db.handle(), sql.data(), static_cast<int>(sql.size()),
                                    SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr);
  if (rc != SQLITE_OK) throw_error(db.handle(), rc, "prepare");
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

Statement& Statement::bind(int index, int64_t value) {
  const int rc = sqlite3_bind_int64(stmt_, index, value);
  if (rc != SQLITE_OK) throw_error(db_.handle(), rc, "bind");
  return *this;
}

Statement& Statement::bind(int index, double value) {
  const int rc = sqlite3_bind_double(stmt_, index, value);
  if (rc != SQLITE_OK) throw_error(db_.handle(), rc, "bind");
  return *this;
}

Statement& Statement::bind(int index, std::string_view value) {
  const int rc = sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT,
                                     SQLITE_UTF8);
  if (rc != SQLITE_OK) throw_error(db_.handle(), rc, "bind");
  return *this;
}

Statement& Statement::bind(int index, const std::optional<std::string>& value) {
  return value ? bind(index, std::string_view(*value)) : bind_null(index);
}

Statement& Statement::bind_null(int index) {
  const int rc = sqlite3_bind_null(stmt_, index);
  if (rc != SQLITE_OK) throw_error(db_.handle(), rc, "bind");
  return *this;
}

bool Statement::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  const std::string sql = sqlite3_sql(stmt_) ? sqlite3_sql(stmt_) : "";
  sqlite3_reset(stmt_);
  throw_error(db_.handle(), rc, "step '" + sql.substr(0, 80) + "'");
}

void Statement::run() {
  while (step()) {
  }
}

void Statement::reset() noexcept {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

std::string Statement::get_text(int col) const {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
  return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, col))) : std::string();
}

std::optional<std::string> Statement::get_optional_text(int col) const {
  if (is_null(col)) return std::nullopt;
  return get_text(col);
}

Statement& StatementCache::get(const char* sql) {
  auto& slot = by_address_[sql];
  if (!slot) slot = std::make_unique<Statement>(db_, sql);
  return *slot;
}

Statement& StatementCache::get_dynamic(const std::string& sql) {
  auto& slot = by_text_[sql];
  if (!slot) slot = std::make_unique<Statement>(db_, sql);
  return *slot;
}

Transaction::Transaction(Database& db, bool immediate) : db_(db) {
  db_.exec(immediate ? "BEGIN IMMEDIATE" : "BEGIN");
}

Transaction::~Transaction() {
  if (!done_) sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void Transaction::commit() {
  db_.exec("COMMIT");
  done_ = true;
}

}  // namespace jobforge::sqlite
