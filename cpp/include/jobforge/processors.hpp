// The built-in native processors for files and commands: scan, stat, checksum and exec. Every
// engine registers them (beside noop and sleep), exec only when EngineConfig::allow_exec; their
// payload and result schemas are in docs/native-processors.md. They run on worker threads without
// the GIL, poll ctx.cancelled() and report progress, log lines and outcome counters through their
// Context.
#pragma once

#include <memory>

#include "jobforge/processor.hpp"

namespace jobforge {

// "scan": walks directories and reports the files found (path, size, mtime).
std::shared_ptr<Processor> make_scan_processor();
// "checksum": hashes files (sha256 and other OpenSSL digests, xxh3/xxh64/xxh128 from xxHash).
std::shared_ptr<Processor> make_checksum_processor();
// "stat": one file's path, size and mtime now ({"path"} -> {"path", "size", "mtime"}).
std::shared_ptr<Processor> make_stat_processor();
// "exec": runs a command in its own process group, streams its output into the job's log. The
// command sees a minimal environment (PATH, HOME, USER, LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ,
// TMPDIR) plus the payload's `env`, unless the payload's `inherit_env` says otherwise (true: the
// whole environment of this process, false: only `env`) or `inherit_env` is true here.
std::shared_ptr<Processor> make_exec_processor(bool inherit_env = false);

}  // namespace jobforge
