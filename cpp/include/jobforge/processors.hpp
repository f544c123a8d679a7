// The built-in native processors for files and commands: scan, stat, checksum and exec. Every engine
// registers them (beside noop and sleep); their payload and result schemas are in
// docs/native-processors.md. They run on worker threads without the GIL, poll ctx.cancelled()
// and report progress, log lines and outcome counters through their Context.
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
// "exec": runs a command in its own process group, streams its output into the job's log.
std::shared_ptr<Processor> make_exec_processor();

}  // namespace jobforge
