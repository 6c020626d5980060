// A minimal stand-in for GoogleTest, enough for tests/test_cuda_ops.cpp on the GPU machine, whose
// image has no GoogleTest. Supports TEST, GTEST_SKIP, ASSERT_TRUE, EXPECT_TRUE, EXPECT_EQ (each
// taking `<< message`); main() runs every test and returns nonzero if any failed.
#pragma once

#include <cstdio>
#include <exception>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace mini_gtest {

struct TestInfo {
  const char* suite;
  const char* name;
  void (*fn)();
};

inline std::vector<TestInfo>& registry() {
  static std::vector<TestInfo> r;
  return r;
}
struct State {
  bool failed = false, skipped = false;
};
inline State& state() {
  static State s;
  return s;
}

struct Registrar {
  Registrar(const char* suite, const char* name, void (*fn)()) { registry().push_back({suite, name, fn}); }
};

class Message {
 public:
  template <class T>
  Message& operator<<(const T& v) {
    os_ << v;
    return *this;
  }
  std::string str() const { return os_.str(); }

 private:
  std::ostringstream os_;
};

// `helper = Message() << ...` reports when the assignment runs (after the message is built).
struct FailHelper {
  const char* file;
  int line;
  std::string cond;
  void operator=(const Message& m) const {
    state().failed = true;
    std::printf("%s:%d: Failure\n  %s\n%s\n", file, line, cond.c_str(), m.str().c_str());
  }
};
struct SkipHelper {
  void operator=(const Message& m) const {
    state().skipped = true;
    std::printf("  %s\n", m.str().c_str());
  }
};

template <class A, class B>
std::string eq_text(const A& a, const B& b, const char* ea, const char* eb) {
  std::ostringstream o;
  o << "Expected equality of " << ea << " (" << a << ") and " << eb << " (" << b << ")";
  return o.str();
}

inline int run_all() {
  int failed = 0, skipped = 0, passed = 0;
  for (const TestInfo& t : registry()) {
    state() = State{};
    std::printf("[ RUN      ] %s.%s\n", t.suite, t.name);
    std::fflush(stdout);
    try {
      t.fn();
    } catch (const std::exception& e) {
      state().failed = true;
      std::printf("  uncaught exception: %s\n", e.what());
    }
    const char* tag = state().failed ? "[  FAILED  ]" : state().skipped ? "[  SKIPPED ]" : "[       OK ]";
    std::printf("%s %s.%s\n", tag, t.suite, t.name);
    std::fflush(stdout);
    if (state().failed) ++failed;
    else if (state().skipped) ++skipped;
    else ++passed;
  }
  std::printf("[==========] %d passed, %d skipped, %d failed\n", passed, skipped, failed);
  return failed ? 1 : 0;
}

}  // namespace mini_gtest

#define TEST(suite, name)                                                                  \
  static void suite##_##name##_body();                                                     \
  static ::mini_gtest::Registrar suite##_##name##_reg(#suite, #name, &suite##_##name##_body); \
  static void suite##_##name##_body()

#define GTEST_SKIP() return ::mini_gtest::SkipHelper{} = ::mini_gtest::Message()
#define ASSERT_TRUE(c) \
  if (c) ;             \
  else return ::mini_gtest::FailHelper{__FILE__, __LINE__, "ASSERT_TRUE(" #c ")"} = ::mini_gtest::Message()
#define EXPECT_TRUE(c) \
  if (c) ;             \
  else ::mini_gtest::FailHelper{__FILE__, __LINE__, "EXPECT_TRUE(" #c ")"} = ::mini_gtest::Message()
#define EXPECT_EQ(a, b)  \
  if ((a) == (b)) ;      \
  else ::mini_gtest::FailHelper{__FILE__, __LINE__, ::mini_gtest::eq_text((a), (b), #a, #b)} = ::mini_gtest::Message()
