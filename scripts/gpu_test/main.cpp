// main() for the GoogleTest-free GPU test build (see mini_gtest/gtest/gtest.h).
#include <gtest/gtest.h>

int main() { return ::mini_gtest::run_all(); }
