#include "test_util.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tokenizer/bpe_train.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/token_file.h"
#include "tokenizer/unicode.h"

namespace scratchlm::test {

void write_tokens(const std::string& path, const std::vector<std::uint32_t>& ids) {
  TokenFileWriter w(path, TokenDtype::uint16);
  w.append(ids.data(), ids.size());
  w.commit({{"source_bytes", 0}});
}

namespace fs = std::filesystem;

std::string data_path(std::string_view relative) { return std::string(SCRATCHLM_TEST_DATA) + "/" + std::string(relative); }

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  path_ = (fs::path(testing::TempDir()) /
           ("scratchlm_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
              .string();
  fs::remove_all(path_);
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string TempDir::file(std::string_view name) const { return (fs::path(path_) / name).string(); }

BpeTrainOptions bpe_options(std::int64_t vocab_size, std::vector<std::string> specials, int threads,
                            std::size_t chunk_bytes) {
  BpeTrainOptions o;
  o.vocab_size = vocab_size;
  o.special_tokens = std::move(specials);
  o.threads = threads;
  o.chunk_bytes = chunk_bytes;
  return o;
}

const Vocab& gpt2_vocab() {
  static const Vocab vocab = load_tokenizer_dir(data_path("gpt2"));
  return vocab;
}

const Vocab& corpus_en_vocab() {
  static const Vocab vocab =
      train_bpe({data_path("cs336/corpus.en")}, bpe_options(500, {"<|endoftext|>"}));
  return vocab;
}

Vocab byte_vocab() {
  Vocab vocab;
  for (int b = 0; b < 256; ++b) vocab.tokens.push_back(std::string(1, static_cast<char>(b)));
  vocab.add_special("<|endoftext|>");
  return vocab;
}

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  pretokenize(text, [&](std::string_view p) { out.emplace_back(p); });
  return out;
}

std::string gpt2_bytes(std::string_view text) {
  std::string bytes;
  EXPECT_TRUE(gpt2_text_to_bytes(text, bytes)) << "not GPT-2 byte-level text: " << text;
  return bytes;
}

std::string random_unicode(std::mt19937& rng, std::size_t n) {
  struct Range {
    char32_t lo, hi;
  };
  static constexpr Range kRanges[] = {
      {0x20, 0x7E},       {0x20, 0x7E},     {0x20, 0x7E},    {'0', '9'},       {0xA0, 0xFF},
      {0x100, 0x24F},     {0x370, 0x4FF},   {0x300, 0x36F},  {0x4E00, 0x9FFF}, {0x3040, 0x30FF},
      {0x600, 0x6FF},     {0x1F300, 0x1FAFF}, {0x2000, 0x206F},
  };
  static constexpr char32_t kSpaces[] = {' ', '\n', '\t', '\r', 0xA0, 0x3000, 0x2028, 0x85, 0x2003};
  std::uniform_int_distribution<int> which(0, static_cast<int>(std::size(kRanges)));  // last = spaces
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    int k = which(rng);
    char32_t cp;
    if (k == static_cast<int>(std::size(kRanges))) {
      cp = kSpaces[std::uniform_int_distribution<std::size_t>(0, std::size(kSpaces) - 1)(rng)];
    } else {
      cp = std::uniform_int_distribution<char32_t>(kRanges[k].lo, kRanges[k].hi)(rng);
    }
    append_utf8(out, cp);
  }
  return out;
}

std::string lcg_unicode(Lcg& g, std::size_t n) {
  static constexpr std::pair<char32_t, char32_t> kRanges[] = {
      {0x20, 0x7E},   {0x20, 0x7E},   {0x20, 0x7E},     {0x30, 0x39},   {0xA0, 0xFF},     {0x100, 0x24F},   {0x370, 0x4FF},
      {0x300, 0x36F}, {0x4E00, 0x9FFF}, {0x3040, 0x30FF}, {0x600, 0x6FF}, {0x1F300, 0x1FAFF}, {0x2000, 0x206F}};
  static constexpr char32_t kSpaces[] = {0x20, 0x0A, 0x09, 0x0D, 0xA0, 0x3000, 0x2028, 0x85, 0x2003};
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t k = (g.next() >> 33) % 16;
    char32_t cp;
    if (k < 13) {
      auto [lo, hi] = kRanges[k];
      cp = lo + static_cast<char32_t>((g.next() >> 33) % (hi - lo + 1));
    } else if (k == 13) {
      cp = kSpaces[(g.next() >> 33) % 9];
    } else if (k == 14) {
      cp = 0x27;
    } else {
      cp = static_cast<char32_t>("sdmtlvre"[(g.next() >> 33) % 8]);
    }
    append_utf8(out, cp);
  }
  return out;
}

std::vector<std::string> lcg_unicode_strings(std::uint64_t seed, int count) {
  Lcg g{seed};
  std::vector<std::string> out;
  for (int i = 0; i < count; ++i) {
    std::uint64_t n = g.next() >> 58;
    out.push_back(lcg_unicode(g, n));
  }
  return out;
}

std::string random_bytes(std::mt19937& rng, std::size_t n) {
  static constexpr unsigned char kTricky[] = {0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED,
                                              0xEF, 0xF0, 0xF4, 0xF5, 0xFF, ' ', '\n', '\''};
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    unsigned r = rng();
    unsigned char b = (r & 3) == 0 ? kTricky[(r >> 2) % std::size(kTricky)] : static_cast<unsigned char>(r >> 8);
    out += static_cast<char>(b);
  }
  return out;
}

CliResult run_cli(const std::vector<std::string>& args) {
  TempDir io;
  const std::string out_path = io.file("stdout"), err_path = io.file("stderr");
  std::vector<char*> argv;
  std::string binary = SCRATCHLM_BINARY;
  argv.push_back(binary.data());
  std::vector<std::string> copies = args;
  for (auto& a : copies) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    int in = ::open("/dev/null", O_RDONLY);
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || err < 0) ::_exit(126);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  CliResult r;
  int status = 0;
  EXPECT_GT(pid, 0) << "fork failed";
  if (pid > 0 && ::waitpid(pid, &status, 0) == pid) {
    if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  }
  r.out = read_bytes(out_path);
  r.err = read_bytes(err_path);
  return r;
}

void expect_clean_failure(const CliResult& r, const std::vector<std::string>& needles) {
  EXPECT_EQ(r.signal, 0) << "killed by signal " << r.signal << "; stderr:\n" << r.err;
  EXPECT_NE(r.exit_code, 0) << "expected a failure; stderr:\n" << r.err;
  EXPECT_NE(r.exit_code, 127) << "could not run " << SCRATCHLM_BINARY;
  EXPECT_EQ(r.err.find("internal error"), std::string::npos) << "an invariant check fired:\n" << r.err;
  EXPECT_EQ(r.err.find("AddressSanitizer"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("runtime error"), std::string::npos) << r.err;
  for (const auto& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "stderr lacks \"" << n << "\":\n" << r.err;
}

}  // namespace scratchlm::test
