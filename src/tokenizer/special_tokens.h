// Finding special tokens in text: leftmost match first, and the longest special token when
// several match at the same position ("<|endoftext|><|endoftext|>" beats "<|endoftext|>").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace scratchlm {

class SpecialMatcher {
 public:
  SpecialMatcher() = default;
  explicit SpecialMatcher(std::vector<std::string> specials);

  bool empty() const { return specials_.empty(); }
  std::size_t max_length() const { return max_length_; }

  struct Match {
    std::size_t pos;    // text.size() if none
    std::size_t length;
    int index;          // into the specials given to the constructor; -1 if none
  };
  // The first special token in text at or after `from`.
  Match find(std::string_view text, std::size_t from) const;

  // Splits text into ordinary pieces and special tokens, in order: on_text(piece) for each
  // non-empty stretch between matches, on_special(index) for each match.
  template <class OnText, class OnSpecial>
  void split(std::string_view text, OnText&& on_text, OnSpecial&& on_special) const {
    // next[k]: where special k next occurs at or after some earlier position (npos: never);
    // refreshed only once we have moved past it, so each special is scanned for once per match.
    std::vector<std::size_t> next(specials_.size(), 0);
    bool first = true;
    std::size_t pos = 0;
    while (pos < text.size()) {
      Match m{text.size(), 0, -1};
      for (std::size_t k = 0; k < specials_.size(); ++k) {
        if (first || (next[k] != std::string_view::npos && next[k] < pos)) next[k] = text.find(specials_[k], pos);
        if (next[k] == std::string_view::npos) continue;
        if (next[k] < m.pos || (next[k] == m.pos && specials_[k].size() > m.length))
          m = {next[k], specials_[k].size(), static_cast<int>(k)};
      }
      first = false;
      if (m.pos > pos) on_text(text.substr(pos, m.pos - pos));
      if (m.index < 0) break;
      on_special(m.index);
      pos = m.pos + m.length;
    }
  }

 private:
  std::vector<std::string> specials_;
  std::size_t max_length_ = 0;
};

}  // namespace scratchlm
