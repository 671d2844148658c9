#include "tokenizer/chunker.h"

#include <filesystem>

namespace scratchlm {

namespace {
bool ascii_nonspace(unsigned char c) { return c > ' ' && c < 0x7F; }
bool ascii_letter(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// True if a special token occurrence straddles p — or might: when fewer than L-1 bytes follow p,
// an occurrence could continue past the end of the text read so far, so p is not safe yet.
bool inside_special(std::string_view text, std::size_t p, const std::vector<std::string>& specials) {
  for (const auto& s : specials) {
    if (s.size() < 2) continue;
    if (p + s.size() - 1 > text.size()) return true;
    // Any occurrence inside this window of 2L-2 bytes around p straddles p.
    std::size_t from = p >= s.size() - 1 ? p - (s.size() - 1) : 0;
    if (text.substr(from, p + s.size() - 1 - from).find(s) != std::string_view::npos) return true;
  }
  return false;
}
}  // namespace

std::size_t find_safe_cut(std::string_view text, const std::vector<std::string>& specials) {
  const auto* t = reinterpret_cast<const unsigned char*>(text.data());
  for (std::size_t p = text.size() >= 2 ? text.size() - 2 : 0; p >= 2; --p) {
    bool newline_cut = t[p - 1] == '\n' && ascii_nonspace(t[p - 2]) && ascii_nonspace(t[p]);
    bool space_cut = t[p] == ' ' && ascii_letter(t[p - 1]) && ascii_letter(t[p + 1]);
    if ((newline_cut || space_cut) && !inside_special(text, p, specials)) return p;
  }
  return 0;
}

ChunkReader::ChunkReader(std::vector<std::string> paths, std::size_t chunk_bytes, std::vector<std::string> specials)
    : paths_(std::move(paths)), chunk_bytes_(chunk_bytes), specials_(std::move(specials)) {
  for (const auto& p : paths_) {
    FileReader check(p);  // fail early, naming the file, if one cannot be opened
    if (std::filesystem::is_regular_file(p)) total_bytes_ += file_size(p);  // pipes: size unknown
  }
}

bool ChunkReader::next(std::string& chunk, std::size_t& file_index) {
  while (file_index_ < paths_.size()) {
    if (!reader_) {
      reader_ = std::make_unique<FileReader>(paths_[file_index_]);
      file_eof_ = false;
      buffer_.clear();
    }
    // Read until the buffer holds a chunk's worth, then look for a cut in it; grow if none.
    std::size_t want = chunk_bytes_;
    while (true) {
      while (!file_eof_ && buffer_.size() < want) {
        std::size_t old = buffer_.size();
        buffer_.resize(want);
        std::size_t got = reader_->read(buffer_.data() + old, want - old);
        buffer_.resize(old + got);
        if (got == 0) file_eof_ = true;
      }
      if (file_eof_) break;
      std::size_t cut = find_safe_cut(buffer_, specials_);
      if (cut > 0) {
        chunk.assign(buffer_, 0, cut);
        buffer_.erase(0, cut);
        file_index = file_index_;
        bytes_done_ += static_cast<std::int64_t>(chunk.size());
        return true;
      }
      want = buffer_.size() * 2;
    }
    // End of this file: the rest is the last chunk.
    file_index = file_index_;
    ++file_index_;
    reader_.reset();
    if (buffer_.empty()) continue;
    chunk.swap(buffer_);
    buffer_.clear();
    bytes_done_ += static_cast<std::int64_t>(chunk.size());
    return true;
  }
  return false;
}

}  // namespace scratchlm
