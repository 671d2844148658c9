#include "util/progress.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

namespace scratchlm {

namespace {
constexpr double kPlainIntervalSeconds = 10.0;

std::string format_duration(double s) {
  char buf[32];
  if (s < 0 || s > 1e7) return "?";
  int total = static_cast<int>(s + 0.5);
  if (total >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", total / 3600, total / 60 % 60);
  else
    std::snprintf(buf, sizeof buf, "%dm%02ds", total / 60, total % 60);
  return buf;
}
}  // namespace

std::string human_bytes(double bytes) {
  char buf[32];
  if (bytes >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  else if (bytes >= 1e6)
    std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
  else
    std::snprintf(buf, sizeof buf, "%.1f KB", bytes / 1e3);
  return buf;
}

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::int64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<std::int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

Progress::Progress(std::string label, std::int64_t total, std::string unit, bool enabled)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), enabled_(enabled),
      tty_(::isatty(STDERR_FILENO) != 0), start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

Progress::~Progress() {
  if (!finished_) finish();
}

void Progress::set(std::int64_t done, const std::string& extra) {
  if (!enabled_) return;
  std::lock_guard lock(mutex_);
  last_done_ = done;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_draw_).count();
  if (since < (tty_ ? 0.1 : kPlainIntervalSeconds)) return;
  last_draw_ = now;
  draw(done, extra, false);
}

void Progress::finish(const std::string& extra) {
  std::lock_guard lock(mutex_);
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  draw(total_ > 0 ? total_ : last_done_, extra, true);
}

void Progress::print(const std::string& line) {
  std::lock_guard lock(mutex_);
  std::fprintf(stderr, "%s%s\n", enabled_ && tty_ ? "\r\033[K" : "", line.c_str());
  std::fflush(stderr);
}

void Progress::draw(std::int64_t done, const std::string& extra, bool final_line) {
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = elapsed > 0 ? static_cast<double>(done - initial_) / elapsed : 0;
  char rate_text[48];
  if (unit_ == "B")
    std::snprintf(rate_text, sizeof rate_text, "%.1f MB/s", rate / 1e6);
  else
    std::snprintf(rate_text, sizeof rate_text, rate < 10 ? "%.2f %s/s" : "%.0f %s/s", rate, unit_.c_str());
  std::string amount = unit_ == "B" ? human_bytes(static_cast<double>(done)) : std::to_string(done);
  std::string line = label_ + " ";
  if (total_ > 0) {
    double frac = std::min(1.0, static_cast<double>(done) / total_);
    constexpr int kWidth = 24;
    int filled = static_cast<int>(frac * kWidth);
    line += "[" + std::string(filled, '#') + std::string(kWidth - filled, '.') + "] ";
    char pct[16];
    std::snprintf(pct, sizeof pct, "%3.0f%% ", frac * 100);
    line += pct;
    line += amount + "/" + (unit_ == "B" ? human_bytes(static_cast<double>(total_)) : std::to_string(total_));
  } else {
    line += amount;
  }
  line += "  " + std::string(rate_text);
  if (final_line)
    line += "  " + format_duration(elapsed);
  else if (total_ > 0 && rate > 0)
    line += "  ETA " + format_duration((total_ - done) / rate);
  if (!extra.empty()) line += "  " + extra;
  if (tty_)
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final_line ? "\n" : "");
  else
    std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

}  // namespace scratchlm
