// Every SQL statement of the SQLite store, named, in one place. Migrations are numbered and
// applied in order under PRAGMA user_version; migration 1 is exactly the seed schema, so a
// database created by the seed systems opens and is migrated in place.
#pragma once

namespace jobforge::sqlite::sql {

inline constexpr const char* kConnectionPragmas = R"sql(
PRAGMA journal_mode = WAL;
PRAGMA foreign_keys = OFF;
PRAGMA temp_store = MEMORY;
PRAGMA cache_size = -16000;
)sql";

// The seed schema, verbatim in substance: table `jobs` and its six single-column indexes.
inline constexpr const char* kMigration1 = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  type TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'created',
  priority INTEGER NOT NULL DEFAULT 5,
  payload TEXT NOT NULL,
  progress INTEGER DEFAULT 0,
  result TEXT,
  error TEXT,
  attempts INTEGER DEFAULT 0,
  max_attempts INTEGER DEFAULT 3,
  parent_job_id TEXT,
  user_initiated INTEGER DEFAULT 1,
  timeout_seconds INTEGER DEFAULT 300,
  created_at INTEGER NOT NULL,
  queued_at INTEGER,
  started_at INTEGER,
  completed_at INTEGER,
  timeout_at INTEGER,
  FOREIGN KEY (parent_job_id) REFERENCES jobs(id)
);
CREATE INDEX IF NOT EXISTS idx_jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS idx_jobs_type ON jobs(type);
CREATE INDEX IF NOT EXISTS idx_jobs_priority ON jobs(priority);
CREATE INDEX IF NOT EXISTS idx_jobs_user_initiated ON jobs(user_initiated);
CREATE INDEX IF NOT EXISTS idx_jobs_parent_id ON jobs(parent_job_id);
CREATE INDEX IF NOT EXISTS idx_jobs_created_at ON jobs(created_at);
)sql";

// The engine's columns, lean indexes (a partial index over queued jobs in claim order), per-status
// counters kept by triggers in the same transaction, and the workers table.
inline constexpr const char* kMigration2 = R"sql(
ALTER TABLE jobs ADD COLUMN run_at INTEGER;
ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
ALTER TABLE jobs ADD COLUMN timeout_ms INTEGER;
ALTER TABLE jobs ADD COLUMN retry_delay_ms INTEGER;
ALTER TABLE jobs ADD COLUMN error_detail TEXT;
ALTER TABLE jobs ADD COLUMN progress_current REAL NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN progress_total REAL NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN progress_message TEXT;
ALTER TABLE jobs ADD COLUMN progress_stage TEXT;
ALTER TABLE jobs ADD COLUMN unique_key TEXT;
ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_at INTEGER;
ALTER TABLE jobs ADD COLUMN updated_at INTEGER;

UPDATE jobs SET run_at = COALESCE(queued_at, created_at),
                timeout_ms = COALESCE(timeout_seconds, 300) * 1000;

DROP INDEX IF EXISTS idx_jobs_status;
DROP INDEX IF EXISTS idx_jobs_type;
DROP INDEX IF EXISTS idx_jobs_priority;
DROP INDEX IF EXISTS idx_jobs_user_initiated;
DROP INDEX IF EXISTS idx_jobs_parent_id;
CREATE INDEX idx_jobs_claim ON jobs(priority, run_at) WHERE status = 'queued';
CREATE INDEX idx_jobs_status_created ON jobs(status, created_at);
CREATE INDEX idx_jobs_type_created ON jobs(type, created_at);
CREATE INDEX idx_jobs_parent_id ON jobs(parent_job_id) WHERE parent_job_id IS NOT NULL;
CREATE INDEX idx_jobs_running_owner ON jobs(lease_owner) WHERE status = 'running';

CREATE TABLE job_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
INSERT INTO job_counts (status, n) VALUES
  ('created', 0), ('queued', 0), ('running', 0), ('completed', 0),
  ('failed', 0), ('cancelled', 0), ('timeout', 0);
INSERT OR IGNORE INTO job_counts (status, n) SELECT DISTINCT status, 0 FROM jobs;
UPDATE job_counts SET n = (SELECT count(*) FROM jobs WHERE jobs.status = job_counts.status);
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
  UPDATE job_counts SET n = n + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs WHEN OLD.status <> NEW.status BEGIN
  UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
  UPDATE job_counts SET n = n + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
  UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
END;

CREATE TABLE workers (
  id TEXT PRIMARY KEY,
  hostname TEXT NOT NULL,
  pid INTEGER NOT NULL,
  version TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  heartbeat_at INTEGER NOT NULL,
  state TEXT NOT NULL DEFAULT 'running'
);
)sql";

// How each worker claims: 'memory' (alone on the file: claims live in memory, only a job's end,
// and its running state if it outlasts a commit, are written) or 'durable' (claims are committed
// before execution). A process only claims in memory while no other live worker exists.
inline constexpr const char* kMigration3 = R"sql(
ALTER TABLE workers ADD COLUMN claim_mode TEXT NOT NULL DEFAULT 'durable';
)sql";

// Retry backoff kind (Backoff::to_string(); NULL: fixed at retry_delay_ms).
inline constexpr const char* kMigration4 = R"sql(
ALTER TABLE jobs ADD COLUMN backoff TEXT;
)sql";

// Singleton workers: the database itself refuses a second live worker with the same role.
inline constexpr const char* kMigration5 = R"sql(
ALTER TABLE workers ADD COLUMN singleton_role TEXT;
CREATE UNIQUE INDEX idx_workers_singleton ON workers(singleton_role)
  WHERE state = 'running' AND singleton_role IS NOT NULL;
)sql";

// Observability: per-job logs, the outcome summary, counts per (type, status) kept by triggers
// (they replace the per-status counts: one row per pair costs the same), and windowed figures per
// type in 10-second buckets, written by each writer once per batch (not per job): counts of
// created and finished jobs and a log-scale histogram of run times, for rates and percentiles.
inline constexpr const char* kMigration6 = R"sql(
ALTER TABLE jobs ADD COLUMN outcome TEXT;

CREATE TABLE job_logs (
  id INTEGER PRIMARY KEY,
  job_id TEXT NOT NULL,
  attempt INTEGER NOT NULL DEFAULT 0,
  at INTEGER NOT NULL,
  level INTEGER NOT NULL,
  stage TEXT,
  message TEXT NOT NULL,
  fields TEXT
);
CREATE INDEX idx_job_logs_job ON job_logs(job_id, id);
CREATE TRIGGER jobs_delete_logs AFTER DELETE ON jobs BEGIN
  DELETE FROM job_logs WHERE job_id = OLD.id;
END;

DROP TRIGGER jobs_count_insert;
DROP TRIGGER jobs_count_update;
DROP TRIGGER jobs_count_delete;
DROP TABLE job_counts;
CREATE TABLE job_type_counts (
  type TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (type, status)
) WITHOUT ROWID;
INSERT INTO job_type_counts (type, status, n) SELECT type, status, count(*) FROM jobs GROUP BY 1, 2;
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
  INSERT INTO job_type_counts (type, status, n) VALUES (NEW.type, NEW.status, 1)
    ON CONFLICT (type, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs WHEN OLD.status <> NEW.status BEGIN
  UPDATE job_type_counts SET n = n - 1 WHERE type = OLD.type AND status = OLD.status;
  INSERT INTO job_type_counts (type, status, n) VALUES (NEW.type, NEW.status, 1)
    ON CONFLICT (type, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
  UPDATE job_type_counts SET n = n - 1 WHERE type = OLD.type AND status = OLD.status;
END;

CREATE TABLE job_stats (
  bucket INTEGER NOT NULL,  -- Unix ms / 10000
  type TEXT NOT NULL,
  created INTEGER NOT NULL DEFAULT 0,
  completed INTEGER NOT NULL DEFAULT 0,
  failed INTEGER NOT NULL DEFAULT 0,
  cancelled INTEGER NOT NULL DEFAULT 0,
  timeout INTEGER NOT NULL DEFAULT 0,
  retried INTEGER NOT NULL DEFAULT 0,
  run_count INTEGER NOT NULL DEFAULT 0,
  run_ms_sum INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (bucket, type)
) WITHOUT ROWID;
CREATE TABLE job_run_hist (
  bucket INTEGER NOT NULL, type TEXT NOT NULL, bin INTEGER NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY (bucket, type, bin)
) WITHOUT ROWID;
)sql";


// Workflows: unique keys (enforced by a unique index, so across processes), how long a key stays
// taken after its job ended, batch parents (running while their children run; progress_current
// counts final children), dependencies (a job waits in 'created' until deps_pending reaches 0),
// cron schedules (next_fire_at moves by compare-and-set in the same transaction as the insert of
// the fired job), token buckets of rate limits, and the jobs' queue for claims by queue.
inline constexpr const char* kMigration7 = R"sql(
ALTER TABLE jobs ADD COLUMN unique_for_ms INTEGER;
ALTER TABLE jobs ADD COLUMN batch_policy TEXT;
ALTER TABLE jobs ADD COLUMN deps_pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN on_dependency_failure TEXT;
CREATE UNIQUE INDEX idx_jobs_unique_key ON jobs(unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX idx_jobs_batches ON jobs(batch_policy) WHERE batch_policy IS NOT NULL;
CREATE TABLE job_dependencies (
  depends_on TEXT NOT NULL,
  job_id TEXT NOT NULL,
  PRIMARY KEY (depends_on, job_id)
) WITHOUT ROWID;
CREATE INDEX idx_job_dependencies_job ON job_dependencies(job_id);
CREATE TABLE schedules (
  name TEXT PRIMARY KEY,
  cron TEXT NOT NULL,
  timezone TEXT NOT NULL DEFAULT 'UTC',
  type TEXT NOT NULL,
  payload TEXT NOT NULL,
  priority INTEGER,
  queue TEXT NOT NULL DEFAULT 'default',
  misfire TEXT NOT NULL DEFAULT 'run_once',
  next_fire_at INTEGER NOT NULL,
  last_fire_at INTEGER,
  last_job_id TEXT,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE rate_limits (
  key TEXT PRIMARY KEY,
  tokens REAL NOT NULL,
  updated_at INTEGER NOT NULL
) WITHOUT ROWID;
)sql";

// Counts recomputed from the rows: by migration 8, and by `recount` after jobs were written by
// other means than the store (by hand, by a tool).
#define JOBFORGE_RECOUNT_SQL                                   \
  "DELETE FROM job_type_counts;\n"                             \
  "INSERT INTO job_type_counts (type, status, n) "             \
  "SELECT type, status, count(*) FROM jobs GROUP BY 1, 2;\n"

// The counts per (type, status) are kept by the store, one upsert per (type, status) and
// transaction, instead of by row triggers on insert and update: a row trigger costs more than the
// update it follows (measured with the raw program: the one-write drain ran at half the rate with
// it). Deletes keep their trigger: retention is rare, and rows deleted by hand stay counted.
inline constexpr const char* kMigration8 =
    "DROP TRIGGER jobs_count_insert;\n"
    "DROP TRIGGER jobs_count_update;\n" JOBFORGE_RECOUNT_SQL;

// The children of a parent in list order (created_at, then rowid, the index's own tail): a page
// of children, or all 10,000 of a batch, is read in order instead of sorted in a temporary B-tree
// (W6: the sort of full rows was a third of the query).
inline constexpr const char* kMigration9 = R"sql(
DROP INDEX IF EXISTS idx_jobs_parent_id;
CREATE INDEX idx_jobs_parent_id ON jobs(parent_job_id, created_at) WHERE parent_job_id IS NOT NULL;
)sql";

// The job types each worker serves and its processor's options (a JSON object), published at its
// start and refreshed with its heartbeats: producers that never registered the processor enqueue
// with them (docs/workers.md). A rowid table, so `db repair` copies it like the others.
inline constexpr const char* kMigration10 = R"sql(
CREATE TABLE worker_types (
  worker_id TEXT NOT NULL,
  type TEXT NOT NULL,
  options TEXT NOT NULL,
  published_at INTEGER NOT NULL,
  refreshed_at INTEGER NOT NULL,
  PRIMARY KEY (worker_id, type)
);
)sql";

inline constexpr const char* kMigrations[] = {kMigration1, kMigration2, kMigration3, kMigration4,
                                              kMigration5, kMigration6, kMigration7, kMigration8,
                                              kMigration9, kMigration10};
inline constexpr int kSchemaVersion = 10;

// The store's counters: one upsert per (type, status) a transaction changed.
inline constexpr const char* kAddCount = R"sql(
INSERT INTO job_type_counts (type, status, n) VALUES (?1, ?2, ?3)
ON CONFLICT (type, status) DO UPDATE SET n = n + excluded.n
)sql";
inline constexpr const char* kRecount = JOBFORGE_RECOUNT_SQL;

// Columns read into a Job, in the order read_job expects.
#define JOBFORGE_JOB_COLUMNS                                                                 \
  "rowid, id, type, status, priority, payload, progress, progress_current, progress_total, " \
  "progress_message, result, error, error_detail, attempts, max_attempts, timeout_ms, "      \
  "timeout_seconds, retry_delay_ms, parent_job_id, user_initiated, cancel_requested, "      \
  "created_at, queued_at, started_at, completed_at, run_at, timeout_at, lease_owner, "       \
  "lease_expires_at, backoff, progress_stage, outcome, queue, unique_key"

inline constexpr const char* kInsertJob = R"sql(
INSERT INTO jobs (id, type, status, priority, payload, max_attempts, parent_job_id,
                  user_initiated, timeout_seconds, timeout_ms, retry_delay_ms, created_at,
                  queued_at, run_at, updated_at, backoff)
VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, (?8 + 999) / 1000, ?8, ?9, ?10, ?10, ?11, ?10,
        NULLIF(?12, 'fixed'))
)sql";

inline constexpr const char* kJobExists = "SELECT 1 FROM jobs WHERE id = ?1";

// Claim: the inner SELECT walks idx_jobs_claim in priority order; `+type` keeps the planner on
// that index. RETURNING does not promise order, so the store sorts what it returns.
inline constexpr const char* kClaimPrefix =
    "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?1, "
    "updated_at = ?1, lease_owner = ?2, lease_expires_at = ?3, cancel_requested = 0, "
    "timeout_at = ?1 + COALESCE(timeout_ms, timeout_seconds * 1000, 300000) "
    "WHERE rowid IN (SELECT rowid FROM jobs INDEXED BY idx_jobs_claim "
    "WHERE status = 'queued' AND run_at <= ?1 "
    "AND +type IN (";
inline constexpr const char* kClaimSuffix =
    ") ORDER BY priority, run_at LIMIT ?4) RETURNING " JOBFORGE_JOB_COLUMNS;

// A claim in memory reads the due jobs in claim order; the store skips those it already holds.
inline constexpr const char* kSelectDuePrefix =
    "SELECT " JOBFORGE_JOB_COLUMNS " FROM jobs INDEXED BY idx_jobs_claim "
    "WHERE status = 'queued' AND run_at <= ?1 AND +type IN (";
inline constexpr const char* kSelectDueSuffix = ") ORDER BY priority, run_at LIMIT ?2";

// The running state of a job claimed in memory, written once it outlasts a commit.
inline constexpr const char* kMarkStarted = R"sql(
UPDATE jobs SET status = 'running', attempts = ?1, started_at = ?2, updated_at = ?2,
       lease_owner = ?3, lease_expires_at = ?4, cancel_requested = 0,
       timeout_at = ?2 + COALESCE(timeout_ms, timeout_seconds * 1000, 300000)
WHERE rowid = ?5 AND status = 'queued' AND queued_at IS ?6
)sql";

inline constexpr const char* kNextRunAtPrefix =
    "SELECT MIN(run_at) FROM jobs WHERE status = 'queued' AND +type IN (";

// The end of an attempt; only the lease holder's update matches. Two forms, so the store knows
// which status the row left (for its counters): a job running under this owner's lease, and a
// job claimed in memory whose running state was never written (still 'queued' in the store, with
// the claim's token ?21 as queued_at; its attempt count is set, ?12). ?17 is 1 when the attempt
// is not counted. ?22 is the attempt that ended (a fencing token): the end of a stale attempt
// (the job was taken back and claimed again since, even by the same owner) matches nothing.
#define JOBFORGE_FINISH_SET                                                                      \
  "UPDATE jobs SET status = ?1, result = ?2, error = ?3, error_detail = ?4, progress = ?5, "      \
  "progress_current = ?6, progress_total = ?7, progress_message = ?8, completed_at = ?9, "       \
  "progress_stage = ?19, outcome = ?20, run_at = COALESCE(?10, run_at), "                        \
  "queued_at = COALESCE(?11, queued_at), started_at = COALESCE(?18, started_at), "               \
  "updated_at = ?13, lease_owner = NULL, lease_expires_at = NULL, cancel_requested = 0, "
inline constexpr const char* kFinishRunning =
    JOBFORGE_FINISH_SET "attempts = attempts - ?17 "
    "WHERE rowid = ?14 AND status = 'running' AND lease_owner = ?15 AND attempts = ?22";
inline constexpr const char* kFinishHeld =
    JOBFORGE_FINISH_SET "attempts = ?12 "
    "WHERE rowid = ?14 AND status = 'queued' AND queued_at IS ?21";

inline constexpr const char* kSaveProgress = R"sql(
UPDATE jobs SET progress = ?1, progress_current = ?2, progress_total = ?3,
       progress_message = ?4, updated_at = ?5, progress_stage = ?7, outcome = ?8
WHERE rowid = ?6 AND status = 'running' AND (?9 = 0 OR attempts = ?9)
)sql";

inline constexpr const char* kInsertLog = R"sql(
INSERT INTO job_logs (job_id, attempt, at, level, stage, message, fields)
VALUES (?1, ?2, ?3, ?4, NULLIF(?5, ''), ?6, NULLIF(?7, ''))
)sql";
inline constexpr const char* kLogsPrefix =
    "SELECT id, job_id, attempt, at, level, COALESCE(stage, ''), message, COALESCE(fields, '') "
    "FROM job_logs WHERE job_id = ?1 AND id > ?2 AND level >= ?3";

inline constexpr const char* kAddStats = R"sql(
INSERT INTO job_stats (bucket, type, created, completed, failed, cancelled, timeout, retried,
                       run_count, run_ms_sum)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (bucket, type) DO UPDATE SET
  created = created + excluded.created, completed = completed + excluded.completed,
  failed = failed + excluded.failed, cancelled = cancelled + excluded.cancelled,
  timeout = timeout + excluded.timeout, retried = retried + excluded.retried,
  run_count = run_count + excluded.run_count, run_ms_sum = run_ms_sum + excluded.run_ms_sum
)sql";
inline constexpr const char* kAddRunHist = R"sql(
INSERT INTO job_run_hist (bucket, type, bin, n) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (bucket, type, bin) DO UPDATE SET n = n + excluded.n
)sql";
inline constexpr const char* kPruneStats = "DELETE FROM job_stats WHERE bucket < ?1";
inline constexpr const char* kPruneRunHist = "DELETE FROM job_run_hist WHERE bucket < ?1";
inline constexpr const char* kWindowStats = R"sql(
SELECT type, bucket >= ?2, sum(created), sum(completed), sum(failed), sum(cancelled), sum(timeout),
       sum(retried), sum(run_count), sum(run_ms_sum)
FROM job_stats WHERE bucket >= ?1 GROUP BY 1, 2
)sql";
inline constexpr const char* kWindowRunHist =
    "SELECT type, bin, sum(n) FROM job_run_hist WHERE bucket >= ?1 GROUP BY 1, 2";
inline constexpr const char* kTypeCounts = "SELECT type, status, n FROM job_type_counts WHERE n <> 0";
// The oldest due job waiting, per priority (ten seeks on the claim index rather than a scan).
inline constexpr const char* kOldestDue =
    "SELECT MIN(run_at) FROM jobs INDEXED BY idx_jobs_claim "
    "WHERE status = 'queued' AND priority = ?1 AND run_at <= ?2";
// Queued jobs not yet due, per priority: delayed jobs are usually few where a backlog of due jobs
// may be millions, so `due` is the queued count minus this.
inline constexpr const char* kDelayedCount =
    "SELECT count(*) FROM jobs INDEXED BY idx_jobs_claim "
    "WHERE status = 'queued' AND priority = ?1 AND run_at > ?2";

inline constexpr const char* kStatusById = "SELECT rowid, type, status, attempts FROM jobs WHERE id = ?1";

inline constexpr const char* kCancelQueued = R"sql(
UPDATE jobs SET status = 'cancelled', error = 'cancelled', completed_at = ?1, updated_at = ?1
WHERE rowid = ?2 AND status = ?3
)sql";

inline constexpr const char* kRequestCancel = R"sql(
UPDATE jobs SET cancel_requested = 1, updated_at = ?1 WHERE rowid = ?2 AND status = 'running'
)sql";

inline constexpr const char* kCancelAllWithStatus = R"sql(
UPDATE jobs SET status = 'cancelled', error = 'cancelled', completed_at = ?1, updated_at = ?1
WHERE status = ?2 RETURNING id, type, attempts
)sql";

inline constexpr const char* kRequestCancelAllRunning = R"sql(
UPDATE jobs SET cancel_requested = 1, updated_at = ?1 WHERE status = 'running' RETURNING id
)sql";

inline constexpr const char* kRetry = R"sql(
UPDATE jobs SET status = 'queued', attempts = 0, result = NULL, error = NULL,
       error_detail = NULL, progress = 0, progress_current = 0, progress_total = 0,
       progress_message = NULL, run_at = ?1, queued_at = ?1, started_at = NULL,
       completed_at = NULL, timeout_at = NULL, cancel_requested = 0, updated_at = ?1
WHERE rowid = ?2 AND status = ?3
)sql";

inline constexpr const char* kUpsertWorker = R"sql(
INSERT INTO workers (id, hostname, pid, version, started_at, heartbeat_at, state, claim_mode,
                     singleton_role)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, NULLIF(?8, ''))
ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, state = 'running',
                              claim_mode = excluded.claim_mode,
                              singleton_role = excluded.singleton_role
)sql";
inline constexpr const char* kSetClaimMode = "UPDATE workers SET claim_mode = ?1 WHERE id = ?2";

// A worker declared dead (frozen past its lease, say) that heartbeats again is live again: its
// taken-back jobs stay taken (their ends no longer match its lease), its new claims are its own.
inline constexpr const char* kHeartbeatWorker =
    "UPDATE workers SET heartbeat_at = ?1, state = 'running' WHERE id = ?2";
inline constexpr const char* kExtendLeases =
    "UPDATE jobs SET lease_expires_at = ?1 WHERE status = 'running' AND lease_owner = ?2";
inline constexpr const char* kSetWorkerState = "UPDATE workers SET state = ?1 WHERE id = ?2";
inline constexpr const char* kDeleteOldWorkers =
    "DELETE FROM workers WHERE state <> 'running' AND heartbeat_at < ?1";
inline constexpr const char* kListWorkers =
    "SELECT id, hostname, pid, version, started_at, heartbeat_at, state, claim_mode, "
    "COALESCE(singleton_role, '') FROM workers ORDER BY started_at";

// Published types (kMigration10). Unchanged options keep their published_at.
inline constexpr const char* kPublishType = R"sql(
INSERT INTO worker_types (worker_id, type, options, published_at, refreshed_at)
VALUES (?1, ?2, ?3, ?4, ?4)
ON CONFLICT (worker_id, type) DO UPDATE SET
  published_at = CASE WHEN worker_types.options = excluded.options THEN worker_types.published_at
                      ELSE excluded.published_at END,
  options = excluded.options, refreshed_at = excluded.refreshed_at
)sql";
// The worker's rows it did not publish this time.
inline constexpr const char* kUnpublishTypes =
    "DELETE FROM worker_types WHERE worker_id = ?1 AND refreshed_at <> ?2";
// Entries of workers no longer running, for the types this worker now publishes.
inline constexpr const char* kDeleteSupersededTypes = R"sql(
DELETE FROM worker_types WHERE worker_id <> ?1
  AND type IN (SELECT type FROM worker_types WHERE worker_id = ?1)
  AND worker_id NOT IN (SELECT id FROM workers WHERE state = 'running')
)sql";
inline constexpr const char* kListPublishedTypes =
    "SELECT worker_id, type, options, published_at, refreshed_at FROM worker_types "
    "ORDER BY type, worker_id";

// Running jobs whose owner is not a live worker go back to the queue, or fail when no attempt is
// left. A lease is not judged by a timestamp: the owner is dead or alive (the engine's is_dead
// marks dead rows first), so no clock step and no outage can expire a live owner's lease.
inline constexpr const char* kRecoverOrphans = R"sql(
UPDATE jobs SET
  status = CASE WHEN attempts < max_attempts THEN 'queued' ELSE 'failed' END,
  error = 'worker ' || COALESCE(lease_owner, '(unknown)') || ' was lost while running the job',
  run_at = ?1, queued_at = ?1, updated_at = ?1,
  completed_at = CASE WHEN attempts < max_attempts THEN NULL ELSE ?1 END,
  lease_owner = NULL, lease_expires_at = NULL, cancel_requested = 0
WHERE status = 'running' AND COALESCE(lease_owner, '') <> ?2 AND batch_policy IS NULL
  AND (lease_owner IS NULL OR lease_owner NOT IN (SELECT id FROM workers WHERE state = 'running'))
RETURNING id, type, status, attempts
)sql";

inline constexpr const char* kCancelRequests =
    "SELECT id FROM jobs WHERE status = 'running' AND lease_owner = ?1 AND cancel_requested = 1";

inline constexpr const char* kGetJob = "SELECT " JOBFORGE_JOB_COLUMNS " FROM jobs WHERE id = ?1";
inline constexpr const char* kListPrefix = "SELECT " JOBFORGE_JOB_COLUMNS " FROM jobs";
inline constexpr const char* kStats =
    "SELECT status, sum(n) FROM job_type_counts GROUP BY status";

// ---- workflows (kMigration7) ----------------------------------------------------------------

// Inserts a job with any workflow option: its queue, unique key, status ('queued', 'created' while
// dependencies are pending, 'cancelled' when one already failed, 'running' for a batch parent,
// 'completed' for an empty batch), pending dependency count, batch policy and child count.
inline constexpr const char* kInsertWorkflowJob = R"sql(
INSERT INTO jobs (id, type, status, priority, payload, max_attempts, parent_job_id,
                  user_initiated, timeout_seconds, timeout_ms, retry_delay_ms, created_at,
                  queued_at, run_at, updated_at, backoff, queue, unique_key, unique_for_ms,
                  deps_pending, on_dependency_failure, batch_policy, progress_total, error,
                  completed_at, started_at, result, progress)
VALUES (?1, ?2, ?13, ?3, ?4, ?5, ?6, ?7, (?8 + 999) / 1000, ?8, ?9, ?10, ?10, ?11, ?10,
        NULLIF(?12, 'fixed'), ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)
)sql";

inline constexpr const char* kUniqueHolder =
    "SELECT rowid, id, status, COALESCE(completed_at, 0), COALESCE(unique_for_ms, 0) "
    "FROM jobs WHERE unique_key = ?1";
inline constexpr const char* kReleaseUniqueKey = "UPDATE jobs SET unique_key = NULL WHERE rowid = ?1";

// Queued jobs in one queue, counted up to a bound (?2): the cost of max_queue_size is at most
// the limit, and only for callers that set one.
inline constexpr const char* kCountQueuedInQueue =
    "SELECT count(*) FROM (SELECT 1 FROM jobs INDEXED BY idx_jobs_claim "
    "WHERE status = 'queued' AND queue = ?1 LIMIT ?2)";

inline constexpr const char* kDependencyState = "SELECT status FROM jobs WHERE id = ?1";
inline constexpr const char* kInsertDependency =
    "INSERT OR IGNORE INTO job_dependencies (depends_on, job_id) VALUES (?1, ?2)";
inline constexpr const char* kAnyDependency = "SELECT 1 FROM job_dependencies LIMIT 1";
inline constexpr const char* kDependents =
    "SELECT job_id FROM job_dependencies WHERE depends_on = ?1";
inline constexpr const char* kWaitingJob =
    "SELECT rowid, type, deps_pending, COALESCE(on_dependency_failure, '') FROM jobs "
    "WHERE id = ?1 AND status = 'created'";
inline constexpr const char* kDependencyDone = R"sql(
UPDATE jobs SET deps_pending = deps_pending - 1,
       status = CASE WHEN deps_pending <= 1 THEN 'queued' ELSE status END,
       queued_at = CASE WHEN deps_pending <= 1 THEN ?1 ELSE queued_at END,
       run_at = CASE WHEN deps_pending <= 1 THEN MAX(COALESCE(run_at, ?1), ?1) ELSE run_at END,
       updated_at = ?1
WHERE rowid = ?2 AND status = 'created'
RETURNING status
)sql";
inline constexpr const char* kCancelWaiting = R"sql(
UPDATE jobs SET status = 'cancelled', error = ?1, completed_at = ?2, updated_at = ?2
WHERE rowid = ?3 AND status = 'created'
)sql";
inline constexpr const char* kDependencies =
    "SELECT " JOBFORGE_JOB_COLUMNS " FROM jobs WHERE id IN "
    "(SELECT depends_on FROM job_dependencies WHERE job_id = ?1)";

inline constexpr const char* kAnyBatch =
    "SELECT 1 FROM jobs INDEXED BY idx_jobs_batches WHERE batch_policy IS NOT NULL LIMIT 1";
inline constexpr const char* kParentAndPolicy =
    "SELECT parent_job_id, batch_policy FROM jobs WHERE id = ?1";
// A child reached (+1) or left (-1) a final state: the open batch parent counts it.
inline constexpr const char* kBatchChildFinal = R"sql(
UPDATE jobs SET progress_current = progress_current + ?2,
       progress = CAST(100 * (progress_current + ?2) / MAX(progress_total, 1) AS INTEGER),
       updated_at = ?3
WHERE id = ?1 AND batch_policy IS NOT NULL AND status = 'running'
RETURNING rowid, type, progress_current, progress_total, batch_policy, attempts
)sql";
inline constexpr const char* kBatchChildCounts =
    "SELECT status, count(*) FROM jobs WHERE parent_job_id = ?1 GROUP BY status";
inline constexpr const char* kEndBatch = R"sql(
UPDATE jobs SET status = ?1, result = ?2, error = ?3, completed_at = ?4, updated_at = ?4,
       progress = CASE WHEN ?1 = 'completed' THEN 100 ELSE progress END
WHERE rowid = ?5 AND status = 'running'
)sql";
// Run once per status a child may leave (?4: 'created', 'queued'), so each change is known.
inline constexpr const char* kCancelChildren = R"sql(
UPDATE jobs SET status = 'cancelled', error = ?1, completed_at = ?2, updated_at = ?2
WHERE parent_job_id = ?3 AND status = ?4
RETURNING id, type, attempts
)sql";
inline constexpr const char* kRequestCancelChildren =
    "UPDATE jobs SET cancel_requested = 1, updated_at = ?1 WHERE parent_job_id = ?2 "
    "AND status = 'running' AND batch_policy IS NULL";
inline constexpr const char* kIsBatchParent = "SELECT batch_policy IS NOT NULL FROM jobs WHERE rowid = ?1";

// Retention: finished jobs older than the cutoff (?2), in batches (?3), never the children of a
// batch that is still running (its summary counts them). Logs go with them (jobs_delete_logs).
inline constexpr const char* kDeleteFinished = R"sql(
DELETE FROM jobs WHERE rowid IN (
  SELECT j.rowid FROM jobs AS j INDEXED BY idx_jobs_status_created
  WHERE j.status = ?1 AND j.created_at < ?2 AND COALESCE(j.completed_at, j.created_at) < ?2
    AND (j.parent_job_id IS NULL OR NOT EXISTS (
      SELECT 1 FROM jobs AS p WHERE p.id = j.parent_job_id AND p.status = 'running'))
  LIMIT ?3)
RETURNING id
)sql";
inline constexpr const char* kDeleteDependenciesOf =
    "DELETE FROM job_dependencies WHERE job_id = ?1 OR depends_on = ?1";

// Concurrency limits: jobs running now, across every worker on the file.
inline constexpr const char* kRunningOfType =
    "SELECT COALESCE(SUM(n), 0) FROM job_type_counts WHERE type = ?1 AND status = 'running'";
inline constexpr const char* kRunningInQueue =
    "SELECT count(*) FROM jobs INDEXED BY idx_jobs_running_owner "
    "WHERE status = 'running' AND queue = ?1";
inline constexpr const char* kReadBucket = "SELECT tokens, updated_at FROM rate_limits WHERE key = ?1";
inline constexpr const char* kWriteBucket =
    "INSERT INTO rate_limits (key, tokens, updated_at) VALUES (?1, ?2, ?3) "
    "ON CONFLICT(key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at";

inline constexpr const char* kUpsertSchedule = R"sql(
INSERT INTO schedules (name, cron, timezone, type, payload, priority, queue, misfire,
                       next_fire_at, created_at, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)
ON CONFLICT(name) DO UPDATE SET cron = excluded.cron, timezone = excluded.timezone,
  type = excluded.type, payload = excluded.payload, priority = excluded.priority,
  queue = excluded.queue, misfire = excluded.misfire, next_fire_at = excluded.next_fire_at,
  updated_at = excluded.updated_at
)sql";
inline constexpr const char* kDeleteSchedule = "DELETE FROM schedules WHERE name = ?1";
inline constexpr const char* kListSchedules =
    "SELECT name, cron, timezone, type, payload, priority, queue, misfire, next_fire_at, "
    "COALESCE(last_fire_at, 0), COALESCE(last_job_id, ''), created_at FROM schedules ORDER BY name";
inline constexpr const char* kNextScheduleFire = "SELECT MIN(next_fire_at) FROM schedules";
// Compare-and-set: only the process that still sees the old fire time moves it (and inserts).
inline constexpr const char* kAdvanceSchedule = R"sql(
UPDATE schedules SET next_fire_at = ?1, last_fire_at = ?2, last_job_id = COALESCE(?3, last_job_id),
       updated_at = ?4
WHERE name = ?5 AND next_fire_at = ?2
)sql";

}  // namespace jobforge::sqlite::sql
