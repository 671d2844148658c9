// File helpers: whole-file reads with clear errors, block-wise streaming reads, and AtomicFile,
// which writes under a temporary name and renames on commit() so that an interrupted run never
// leaves a half-written file under the final name.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace scratchlm {

// Reads the whole file; throws Error naming the file if it cannot be opened or read.
std::string read_file(const std::string& path);

// File size in bytes; throws Error naming the file if it is missing.
std::int64_t file_size(const std::string& path);

// Sequential reader: read(buf, n) returns the bytes read (0 at end). Owns the FILE*.
class FileReader {
 public:
  explicit FileReader(const std::string& path);
  FileReader(FileReader&& other) noexcept;
  FileReader& operator=(FileReader&&) = delete;
  FileReader(const FileReader&) = delete;
  ~FileReader();
  std::size_t read(char* buf, std::size_t n);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

// Writes to "<path>.tmp-<pid>", renamed to <path> by commit(); removed if never committed.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();
  void write(const void* data, std::size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::string tmp_path_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

// Writes a whole file atomically.
void write_file_atomic(const std::string& path, std::string_view contents);

// Creates a directory (and parents) or throws Error naming it.
void make_directories(const std::string& path);

}  // namespace scratchlm
