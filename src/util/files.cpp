#include "util/files.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "util/error.h"

namespace scratchlm {

namespace {
std::string why() { return std::strerror(errno); }
}  // namespace

std::string read_file(const std::string& path) {
  FileReader reader(path);
  std::string out;
  char buf[1 << 16];
  while (std::size_t n = reader.read(buf, sizeof buf)) out.append(buf, n);
  return out;
}

std::int64_t file_size(const std::string& path) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  if (ec) fail(path, ": ", ec.message());
  return static_cast<std::int64_t>(size);
}

FileReader::FileReader(const std::string& path) : path_(path) {
  if (std::filesystem::is_directory(path)) fail(path, ": is a directory, expected a file");
  file_ = std::fopen(path.c_str(), "rb");
  if (!file_) fail(path, ": cannot open for reading: ", why());
}

FileReader::FileReader(FileReader&& other) noexcept
    : path_(std::move(other.path_)), file_(other.file_) {
  other.file_ = nullptr;
}

FileReader::~FileReader() {
  if (file_) std::fclose(file_);
}

std::size_t FileReader::read(char* buf, std::size_t n) {
  std::size_t got = std::fread(buf, 1, n, file_);
  if (got < n && std::ferror(file_)) fail(path_, ": read error: ", why());
  return got;
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  tmp_path_ = path_ + ".tmp-" + std::to_string(::getpid());
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  if (!file_) fail(path_, ": cannot open for writing: ", why());
}

AtomicFile::~AtomicFile() {
  if (file_) std::fclose(file_);
  if (!committed_) std::remove(tmp_path_.c_str());
}

void AtomicFile::write(const void* data, std::size_t n) {
  if (n && std::fwrite(data, 1, n, file_) != n) fail(path_, ": write failed: ", why());
}

void AtomicFile::commit() {
  SLM_CHECK(!committed_);
  bool ok = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
  ok = (std::fclose(file_) == 0) && ok;
  file_ = nullptr;
  if (!ok) fail(path_, ": write failed: ", why());
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) fail(path_, ": cannot rename into place: ", why());
  committed_ = true;
}

void write_file_atomic(const std::string& path, std::string_view contents) {
  AtomicFile file(path);
  file.write(contents);
  file.commit();
}

void make_directories(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec || !std::filesystem::is_directory(path)) fail(path, ": cannot create directory: ", ec ? ec.message() : "not a directory");
}

}  // namespace scratchlm
