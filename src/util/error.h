// Errors in three tiers (see ../shared/STYLE.md):
//   - scratchlm::Error: bad user input at a file/CLI boundary; thrown, caught in main, printed, exit 1.
//   - SLM_CHECK: always-on invariant of our own code; aborts with file and line.
//   - CUDA/cuBLAS checks live with the CUDA code.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

namespace scratchlm {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Joins any streamable values into one message: str("line ", 3, ": bad").
template <class... Args>
std::string str(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(str(args...));
}

}  // namespace scratchlm

#define SLM_CHECK(cond, ...)                                                              \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "internal error at %s:%d: %s %s\n", __FILE__, __LINE__, #cond, \
                   ::scratchlm::str("" __VA_OPT__(, ) __VA_ARGS__).c_str());              \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)
