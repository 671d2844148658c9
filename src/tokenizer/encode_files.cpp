#include "tokenizer/encode_files.h"

#include <atomic>
#include <condition_variable>
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
  std::mutex read_mutex, write_mutex;
  std::condition_variable turn;
  std::int64_t next_to_read = 0, next_to_write = 0, tokens = 0;
  std::exception_ptr error;
  std::atomic<bool> failed = false;

  auto work = [&] {
    Tokenizer local = tokenizer;  // shares the tables, owns its cache
    std::string chunk;
    std::vector<std::uint32_t> ids;
    std::size_t file_index;
    while (true) {
      std::int64_t seq, done;
      try {
        std::lock_guard lock(read_mutex);
        if (failed || !reader.next(chunk, file_index)) return;
        seq = next_to_read++;
        done = reader.bytes_done();
      } catch (...) {
        std::lock_guard lock(write_mutex);
        if (!error) error = std::current_exception();
        failed = true;
        turn.notify_all();
        return;
      }
      ids.clear();
      local.encode(chunk, ids);
      std::unique_lock lock(write_mutex);
      turn.wait(lock, [&] { return next_to_write == seq || failed; });
      if (failed) return;
      try {
        sink(ids);
      } catch (...) {
        if (!error) error = std::current_exception();
        failed = true;
        turn.notify_all();
        return;
      }
      tokens += static_cast<std::int64_t>(ids.size());
      ++next_to_write;
      turn.notify_all();
      progress.set(done);
    }
  };
  int threads = std::max(1, options.threads);
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
  progress.finish();
  return {reader.bytes_done(), tokens, now_seconds() - start};
}

}  // namespace scratchlm
