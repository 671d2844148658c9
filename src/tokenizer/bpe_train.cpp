#include "tokenizer/bpe_train.h"

#include <algorithm>
#include <mutex>
#include <queue>
#include <thread>

#include "tokenizer/chunker.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/special_tokens.h"
#include "util/error.h"
#include "util/progress.h"

namespace scratchlm {

void count_pretokens(std::string_view text, const std::vector<std::string>& specials, PretokenCounts& counts) {
  SpecialMatcher matcher(specials);
  matcher.split(
      text, [&](std::string_view piece) { pretokenize(piece, [&](std::string_view p) { ++counts[p]; }); },
      [](int) {});
}

namespace {

std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

struct PairStat {
  std::int64_t count = 0;
  std::vector<std::int32_t> words;  // pieces that contain (or once contained) the pair
  std::int32_t dirty_stamp = -1;    // last merge step that changed count
};

// The merge loop's state: distinct pieces as symbol sequences with their counts, pair counts and
// the pair → pieces index.
class Merger {
 public:
  Merger(const PretokenCounts& counts, Vocab& vocab) : vocab_(vocab) {
    for (const auto& e : counts.entries()) {
      std::string_view piece = counts.key(e);
      if (piece.size() < 2) continue;  // no pair inside
      std::vector<std::int32_t> symbols(piece.size());
      for (std::size_t i = 0; i < piece.size(); ++i) symbols[i] = static_cast<unsigned char>(piece[i]);
      words_.push_back(std::move(symbols));
      word_counts_.push_back(e.value);
    }
    word_stamp_.assign(words_.size(), -1);
    for (std::size_t w = 0; w < words_.size(); ++w) {
      const auto& s = words_[w];
      for (std::size_t i = 0; i + 1 < s.size(); ++i) {
        PairStat& stat = pairs_[pair_key(s[i], s[i + 1])];
        stat.count += word_counts_[w];
        if (stat.words.empty() || stat.words.back() != static_cast<std::int32_t>(w))
          stat.words.push_back(static_cast<std::int32_t>(w));
      }
    }
    pairs_.for_each([&](std::uint64_t key, PairStat& stat) { heap_.push({stat.count, key}); });
  }

  // Performs one merge; false if no pair is left.
  bool merge_once(std::int32_t step) {
    std::uint64_t key;
    while (true) {
      if (heap_.empty()) return false;
      HeapEntry top = heap_.top();
      heap_.pop();
      const PairStat* stat = pairs_.find(top.key);
      if (top.count > 0 && stat && stat->count == top.count) {
        key = top.key;
        break;
      }
    }
    auto a = static_cast<std::int32_t>(key >> 32), b = static_cast<std::int32_t>(key & 0xFFFFFFFFu);
    auto z = static_cast<std::int32_t>(vocab_.tokens.size());
    vocab_.tokens.push_back(vocab_.tokens[a] + vocab_.tokens[b]);
    vocab_.merges.emplace_back(a, b);

    std::vector<std::int32_t> holders = std::move(pairs_[key].words);
    pairs_[key].words = {};
    for (std::int32_t w : holders) {
      if (word_stamp_[w] == step) continue;  // listed twice
      word_stamp_[w] = step;
      apply(w, a, b, z, step);
    }
    for (std::uint64_t k : dirty_) {
      const PairStat* stat = pairs_.find(k);
      if (stat->count > 0) heap_.push({stat->count, k});
    }
    dirty_.clear();
    return true;
  }

 private:
  struct HeapEntry {
    std::int64_t count;
    std::uint64_t key;
  };
  // Max-heap order: higher count first; on ties, the greater (bytes(left), bytes(right)).
  struct Less {
    const Vocab* vocab;
    bool operator()(const HeapEntry& x, const HeapEntry& y) const {
      if (x.count != y.count) return x.count < y.count;
      const auto& t = vocab->tokens;
      const std::string& xa = t[x.key >> 32];
      const std::string& ya = t[y.key >> 32];
      if (int c = xa.compare(ya)) return c < 0;
      return t[x.key & 0xFFFFFFFFu] < t[y.key & 0xFFFFFFFFu];
    }
  };

  void add(std::int32_t left, std::int32_t right, std::int64_t delta, std::int32_t word, std::int32_t step) {
    std::uint64_t k = pair_key(left, right);
    PairStat& stat = pairs_[k];
    stat.count += delta;
    if (delta > 0 && (stat.words.empty() || stat.words.back() != word)) stat.words.push_back(word);
    if (stat.dirty_stamp != step) {
      stat.dirty_stamp = step;
      dirty_.push_back(k);
    }
  }

  // Replaces every (a, b) in word w, left to right, by z, and updates the pair counts of the
  // neighbours: (L, a) → (L, z) on the left, (b, R) → (z, R) on the right.
  void apply(std::int32_t w, std::int32_t a, std::int32_t b, std::int32_t z, std::int32_t step) {
    std::vector<std::int32_t>& s = words_[w];
    const std::int64_t c = word_counts_[w];
    scratch_.clear();
    std::size_t n = s.size();
    for (std::size_t i = 0; i < n;) {
      if (i + 1 < n && s[i] == a && s[i + 1] == b) {
        if (!scratch_.empty()) {
          add(scratch_.back(), a, -c, w, step);
          add(scratch_.back(), z, c, w, step);
        }
        if (i + 2 < n) {
          add(b, s[i + 2], -c, w, step);
          add(z, s[i + 2], c, w, step);
        }
        add(a, b, -c, w, step);
        scratch_.push_back(z);
        i += 2;
      } else {
        scratch_.push_back(s[i]);
        i += 1;
      }
    }
    if (scratch_.size() != n) s.assign(scratch_.begin(), scratch_.end());
  }

  Vocab& vocab_;
  std::vector<std::vector<std::int32_t>> words_;
  std::vector<std::int64_t> word_counts_;
  std::vector<std::int32_t> word_stamp_;
  U64Map<PairStat> pairs_{1 << 16};
  std::priority_queue<HeapEntry, std::vector<HeapEntry>, Less> heap_{Less{&vocab_}};
  std::vector<std::uint64_t> dirty_;
  std::vector<std::int32_t> scratch_;
};

void check_vocab_size(const BpeTrainOptions& options) {
  auto minimum = 256 + static_cast<std::int64_t>(options.special_tokens.size());
  if (options.vocab_size < minimum)
    fail("--vocab-size ", options.vocab_size, " is too small: it must be at least 256 bytes + ",
         options.special_tokens.size(), " special token(s) = ", minimum);
  for (const auto& s : options.special_tokens)
    if (s.empty()) fail("--special-token: a special token cannot be empty");
}

}  // namespace

Vocab train_bpe_from_counts(const PretokenCounts& counts, const BpeTrainOptions& options, BpeTrainStats* stats) {
  check_vocab_size(options);
  double start = now_seconds();
  Vocab vocab;
  for (int b = 0; b < 256; ++b) vocab.tokens.emplace_back(1, static_cast<char>(b));
  std::int64_t wanted = options.vocab_size - 256 - static_cast<std::int64_t>(options.special_tokens.size());
  {
    Merger merger(counts, vocab);
    Progress progress("merges", wanted, "merges", options.progress);
    std::int64_t done = 0;
    for (; done < wanted; ++done) {
      if (!merger.merge_once(static_cast<std::int32_t>(done))) break;
      if ((done & 63) == 0) progress.set(done);
    }
    progress.finish();
    if (stats) stats->merges = done;
  }
  for (const auto& s : options.special_tokens) vocab.add_special(s);
  if (stats) stats->merge_seconds = now_seconds() - start;
  return vocab;
}

Vocab train_bpe(const std::vector<std::string>& files, const BpeTrainOptions& options, BpeTrainStats* stats) {
  check_vocab_size(options);
  if (files.empty()) fail("--input: give at least one file to train on");
  double start = now_seconds();
  ChunkReader reader(files, options.chunk_bytes, options.special_tokens);
  int threads = std::max(1, options.threads);
  std::vector<PretokenCounts> counts(threads);
  std::mutex read_mutex;
  std::exception_ptr error;
  {
    Progress progress("pre-tokenizing", reader.total_bytes(), "B", options.progress);
    auto work = [&](int t) {
      std::string chunk;
      std::size_t file_index;
      try {
        while (true) {
          std::int64_t done;
          {
            std::lock_guard lock(read_mutex);
            if (error || !reader.next(chunk, file_index)) return;
            done = reader.bytes_done();
          }
          count_pretokens(chunk, options.special_tokens, counts[t]);
          progress.set(done);
        }
      } catch (...) {
        std::lock_guard lock(read_mutex);
        if (!error) error = std::current_exception();
      }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
    work(0);
    for (auto& th : pool) th.join();
    if (error) std::rethrow_exception(error);
    progress.finish();
  }
  // Fold the per-thread counts into the first.
  for (int t = 1; t < threads; ++t) {
    for (const auto& e : counts[t].entries()) counts[0][counts[t].key(e)] += e.value;
    counts[t] = PretokenCounts();
  }
  if (stats) {
    stats->pretokenize_seconds = now_seconds() - start;
    stats->input_bytes = reader.total_bytes();
    stats->distinct_pretokens = static_cast<std::int64_t>(counts[0].size());
    stats->pretokens = 0;
    for (const auto& e : counts[0].entries()) stats->pretokens += e.value;
  }
  return train_bpe_from_counts(counts[0], options, stats);
}

}  // namespace scratchlm
