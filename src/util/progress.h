// Progress reporting for long work. On a terminal: one line redrawn in place (at most 10 times a
// second) with a bar, rate and ETA. Otherwise: a plain line every `plain_interval_s` seconds, so
// logs stay readable. Thread-safe: update() may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace scratchlm {

class Progress {
 public:
  // total <= 0 means unknown (no bar, no ETA). `unit` is "B" for bytes (shown as MB) or a word.
  Progress(std::string label, std::int64_t total, std::string unit, bool enabled = true);
  ~Progress();
  void set(std::int64_t done, const std::string& extra = "");
  // Work already done before this run (a resumed training run): counted in the bar, not the rate.
  void set_initial(std::int64_t done) { initial_ = done; }
  // Prints a whole line (to stderr) without garbling the bar: the bar is redrawn by the next set().
  void print(const std::string& line);
  void finish(const std::string& extra = "");

 private:
  void draw(std::int64_t done, const std::string& extra, bool final_line);

  std::string label_, unit_;
  std::int64_t total_;
  bool enabled_, tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
  std::int64_t last_done_ = 0;
  std::int64_t initial_ = 0;
  std::mutex mutex_;
};

// Seconds since an arbitrary start, monotonic.
double now_seconds();

// Peak resident set size of this process in bytes.
std::int64_t peak_rss_bytes();

// "12.3 MB", "1.2 GB" for byte counts.
std::string human_bytes(double bytes);

}  // namespace scratchlm
