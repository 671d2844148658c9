#include "tokenizer/encode_files.h"

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "tokenizer/chunker.h"
#include "util/progress.h"

namespace scratchlm {

EncodeStats encode_files(const Tokenizer& tokenizer, const std::vector<std::string>& files,
                         const EncodeFilesOptions& options, const TokenSink& sink) {
  double start = now_seconds();
  ChunkReader reader(files, options.chunk_bytes, tokenizer.special_texts());
  Progress progress("encoding", reader.total_bytes(), "B", options.progress);
  const int threads = std::max(1, options.threads);
  // Chunks are numbered in reading order. A finished chunk waits in `ready` until all before it
  // are written; whichever thread finds the next one there writes it (one writer at a time, outside
  // the lock). At most 2 × threads chunks are read but not yet written, which bounds memory.
  const std::int64_t max_in_flight = 2 * static_cast<std::int64_t>(threads);
  std::mutex mutex;
  std::condition_variable room;
  std::map<std::int64_t, std::vector<std::uint32_t>> ready;
  std::int64_t next_to_read = 0, next_to_write = 0, tokens = 0;
  bool writing = false, failed = false;
  std::exception_ptr error;

  auto work = [&] {
    Tokenizer local = tokenizer;  // shares the tables, owns its cache
    std::string chunk;
    std::size_t file_index;
    std::unique_lock lock(mutex);
    auto stop_with = [&](std::exception_ptr e) {
      if (!error) error = e;
      failed = true;
      room.notify_all();
    };
    while (true) {
      room.wait(lock, [&] { return failed || next_to_read - next_to_write < max_in_flight; });
      if (failed) return;
      std::int64_t seq;
      try {
        if (!reader.next(chunk, file_index)) return;
        seq = next_to_read++;
      } catch (...) {
        stop_with(std::current_exception());
        return;
      }
      std::int64_t done = reader.bytes_done();
      lock.unlock();
      std::vector<std::uint32_t> ids;
      local.encode(chunk, ids);
      lock.lock();
      ready.emplace(seq, std::move(ids));
      if (writing) continue;
      writing = true;
      for (auto it = ready.find(next_to_write); it != ready.end() && !failed; it = ready.find(next_to_write)) {
        std::vector<std::uint32_t> out = std::move(it->second);
        ready.erase(it);
        lock.unlock();
        std::exception_ptr sink_error;
        try {
          sink(out);
        } catch (...) {
          sink_error = std::current_exception();
        }
        lock.lock();
        if (sink_error) stop_with(sink_error);
        tokens += static_cast<std::int64_t>(out.size());
        ++next_to_write;
        room.notify_all();
      }
      writing = false;
      progress.set(done);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
  progress.finish();
  return {reader.bytes_done(), tokens, now_seconds() - start};
}

}  // namespace scratchlm
