// Safetensors reading/writing, the sharded WeightStore, and dtype conversion.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "indexcache/dtype.h"
#include "indexcache/error.h"
#include "indexcache/safetensors.h"
#include "indexcache/weight_store.h"
#include "test_util.h"

namespace indexcache {
namespace {

using nlohmann::json;
using test::make_temp_dir;
using test::read_file;
using test::write_file;

std::string le64(uint64_t n) { return std::string(reinterpret_cast<const char*>(&n), 8); }  // little-endian x86-64
std::string image(const std::string& header, const std::string& data = "") { return test::safetensors_image(header, data); }

std::string entry(const std::string& dtype, const std::string& shape, uint64_t begin,
                  uint64_t end) {
  return R"({"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":[)" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

template <typename T>
std::span<const std::byte> as_bytes(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

std::string test_name() { return testing::UnitTest::GetInstance()->current_test_info()->name(); }

// Writes `contents` to a fresh file and expects open() to throw a one-line bad-input error
// that names the file and contains every string in `needles`.
void expect_bad_file(const std::string& contents, const std::vector<std::string>& needles) {
  const std::string path = make_temp_dir("st") + "/" + test_name() + ".safetensors";
  write_file(path, contents);
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << msg;
    EXPECT_EQ(msg.rfind(path, 0), 0u) << "message does not start with the path: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << n << " in " << msg;
  }
}

// A header with one entry `name` and a data block of `data_size` bytes.
void expect_bad_entry(const std::string& entry_json, size_t data_size,
                      const std::vector<std::string>& needles) {
  expect_bad_file(image(R"({"x":)" + entry_json + "}", std::string(data_size, '\0')), needles);
}

// ---------------------------------------------------------------- round trips

TEST(SafetensorsWrite, RoundTripsEveryDtype) {
  const std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 1e-20f, -0.0f, 7.0f};
  const std::vector<uint16_t> bf16 = {0x3F80, 0xC000, 0x7F80, 0x0001};
  const std::vector<uint16_t> f16 = {0x3C00, 0x0001, 0xFC00};
  const std::vector<int32_t> i32 = {-1, 0, std::numeric_limits<int32_t>::max(), 42};
  const std::vector<int32_t> scalar = {9};
  const std::string path = make_temp_dir("st") + "/rt.safetensors";
  write_safetensors(path, {{"w.f32", DType::kF32, {2, 3}, as_bytes(f32)},
                           {"b.bf16", DType::kBF16, {4}, as_bytes(bf16)},
                           {"c.f16", DType::kF16, {3, 1}, as_bytes(f16)},
                           {"a.i32", DType::kI32, {2, 2}, as_bytes(i32)},
                           {"s", DType::kI32, {}, as_bytes(scalar)},
                           {"empty", DType::kF32, {0, 5}, {}}});

  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->path(), path);
  ASSERT_EQ(f->tensors().size(), 6u);
  auto check = [&](const std::string& name, DType dt, std::vector<int64_t> shape,
                   std::span<const std::byte> want) {
    const TensorInfo* t = f->find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->name, name);
    EXPECT_EQ(t->dtype, dt);
    EXPECT_EQ(t->shape, shape);
    EXPECT_EQ(t->nbytes, want.size());
    EXPECT_EQ(static_cast<size_t>(t->numel()) * dtype_size(dt), want.size());
    if (!want.empty()) {
      EXPECT_EQ(std::memcmp(f->data(*t), want.data(), want.size()), 0) << name;
    }
  };
  check("w.f32", DType::kF32, {2, 3}, as_bytes(f32));
  check("b.bf16", DType::kBF16, {4}, as_bytes(bf16));
  check("c.f16", DType::kF16, {3, 1}, as_bytes(f16));
  check("a.i32", DType::kI32, {2, 2}, as_bytes(i32));
  check("s", DType::kI32, {}, as_bytes(scalar));
  check("empty", DType::kF32, {0, 5}, {});
  EXPECT_EQ(f->find("missing"), nullptr);
  EXPECT_TRUE(f->metadata().empty());
}

TEST(SafetensorsWrite, SortsByNameAlignsDataAndPacksTensors) {
  const std::vector<uint16_t> a = {1, 2, 3};  // 6 bytes: the next tensor starts unaligned
  const std::vector<float> b = {4.0f};
  const std::string path = make_temp_dir("st") + "/order.safetensors";
  write_safetensors(path,
                    {{"b", DType::kF32, {1}, as_bytes(b)}, {"a", DType::kBF16, {3}, as_bytes(a)}});
  const std::string raw = read_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(raw[i]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw.size(), 8 + n + 10);  // no gaps, no trailing bytes
  const json header = json::parse(raw.substr(8, n));
  EXPECT_EQ(header["a"]["data_offsets"], json({0, 6}));
  EXPECT_EQ(header["b"]["data_offsets"], json({6, 10}));
  EXPECT_EQ(header["a"]["dtype"], "BF16");
  EXPECT_FALSE(header.contains("__metadata__"));

  auto f = SafetensorsFile::open(path);
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[0].name, "a");
  EXPECT_EQ(f->tensors()[1].name, "b");
  float got;
  std::memcpy(&got, f->data(f->tensors()[1]), 4);
  EXPECT_EQ(got, 4.0f);
}

TEST(SafetensorsWrite, RoundTripsMetadata) {
  const std::vector<float> x = {1.0f};
  const std::string path = make_temp_dir("st") + "/meta.safetensors";
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "a \"q\"\n"}};
  write_safetensors(path, {{"x", DType::kF32, {1}, as_bytes(x)}}, meta);
  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->metadata(), meta);
  ASSERT_EQ(f->tensors().size(), 1u);  // __metadata__ is not a tensor
  EXPECT_EQ(f->find("__metadata__"), nullptr);
}

TEST(SafetensorsWrite, EmptyFileIsValid) {
  const std::string path = make_temp_dir("st") + "/empty.safetensors";
  write_safetensors(path, {});
  auto f = SafetensorsFile::open(path);
  EXPECT_TRUE(f->tensors().empty());
}

TEST(SafetensorsWrite, RejectsSizeMismatchAndDuplicates) {
  const std::vector<float> x = {1.0f, 2.0f};
  const std::string path = make_temp_dir("st") + "/bad.safetensors";
  EXPECT_THROW(write_safetensors(path, {{"x", DType::kF32, {3}, as_bytes(x)}}), std::logic_error);
  EXPECT_THROW(write_safetensors(path, {{"x", DType::kBF16, {2}, as_bytes(x)}}), std::logic_error);
  EXPECT_THROW(write_safetensors(path, {{"x", DType::kF32, {-2}, as_bytes(x)}}), std::logic_error);
  EXPECT_THROW(write_safetensors(path, {{"x", DType::kF32, {2}, as_bytes(x)},
                                        {"x", DType::kF32, {2}, as_bytes(x)}}),
               std::logic_error);
  EXPECT_THROW(write_safetensors(path, {{"__metadata__", DType::kF32, {2}, as_bytes(x)}}),
               std::logic_error);
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(SafetensorsWrite, IoFailureIsRuntimeErrorNamingThePath) {
  const std::string path = make_temp_dir("st") + "/no/such/dir/x.safetensors";
  try {
    write_safetensors(path, {});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRuntime);
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(SafetensorsWrite, ReplacesExistingFile) {
  const std::string path = make_temp_dir("st") + "/re.safetensors";
  write_file(path, "old contents that are not safetensors");
  const std::vector<float> x = {3.0f};
  write_safetensors(path, {{"x", DType::kF32, {1}, as_bytes(x)}});
  EXPECT_NE(SafetensorsFile::open(path)->find("x"), nullptr);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

// ---------------------------------------------------------------- hostile files

TEST(SafetensorsHostile, MissingFile) {
  const std::string path = make_temp_dir("st") + "/absent.safetensors";
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos);
  }
}

TEST(SafetensorsHostile, Truncated) {
  expect_bad_file("", {"truncated"});
  expect_bad_file(std::string("\x10\0\0\0\0\0\0", 7), {"truncated", "7 bytes"});
}

TEST(SafetensorsHostile, HeaderLengthPastEnd) {
  expect_bad_file(le64(100) + "{}", {"header length 100", "past the end"});
  expect_bad_file(le64(3) + "{}", {"header length 3", "past the end"});
}

TEST(SafetensorsHostile, HeaderLengthAbsurd) {
  expect_bad_file(le64(std::numeric_limits<uint64_t>::max()) + "{}", {"header length"});
  expect_bad_file(le64(std::numeric_limits<uint64_t>::max() - 7) + "{}", {"header length"});
  expect_bad_file(le64(1ull << 40) + "{}", {"exceeds the limit"});
}

TEST(SafetensorsHostile, InvalidJson) {
  expect_bad_file(image("{\"x\": "), {"invalid JSON (byte 7)"});
  expect_bad_file(image(""), {"empty, expected JSON"});
  expect_bad_file(image(std::string("{\"a\0\":1}", 9)), {"invalid JSON (NUL byte at byte 3"});
  expect_bad_file(image("{\"\xff\xfe\":{}}"), {"invalid JSON"});  // not UTF-8
}

TEST(SafetensorsHostile, HeaderNotAnObject) {
  expect_bad_file(image("[]"), {"not a JSON object"});
  expect_bad_file(image("42"), {"not a JSON object"});
  expect_bad_file(image("\"str\""), {"not a JSON object"});
}

TEST(SafetensorsHostile, DeepNesting) {
  expect_bad_file(image(std::string(100000, '[') + std::string(100000, ']')), {"deeper"});
  expect_bad_file(image(R"({"x":{"dtype":"F32","shape":[[[[[[[[[1]]]]]]]]],"data_offsets":[0,4]}})",
                        std::string(4, '\0')),
                  {"deeper"});
}

TEST(SafetensorsHostile, EntryNotAnObject) {
  expect_bad_entry("[1,2]", 0, {"tensor 'x'", "not a JSON object"});
}

TEST(SafetensorsHostile, MissingFields) {
  expect_bad_entry(R"({"shape":[1],"data_offsets":[0,4]})", 4, {"tensor 'x'", "missing 'dtype'"});
  expect_bad_entry(R"({"dtype":"F32","data_offsets":[0,4]})", 4, {"tensor 'x'", "'shape'"});
  expect_bad_entry(R"({"dtype":"F32","shape":[1]})", 4, {"tensor 'x'", "'data_offsets'"});
}

TEST(SafetensorsHostile, WrongFieldTypes) {
  expect_bad_entry(R"({"dtype":5,"shape":[1],"data_offsets":[0,4]})", 4, {"tensor 'x'", "dtype"});
  expect_bad_entry(R"({"dtype":"F32","shape":"1","data_offsets":[0,4]})", 4, {"'shape'"});
  expect_bad_entry(R"({"dtype":"F32","shape":[1.0],"data_offsets":[0,4]})", 4, {"non-integer"});
  expect_bad_entry(R"({"dtype":"F32","shape":[true],"data_offsets":[0,4]})", 4, {"non-integer"});
  expect_bad_entry(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})", 8, {"data_offsets"});
  expect_bad_entry(R"({"dtype":"F32","shape":[1],"data_offsets":{"a":0}})", 4, {"data_offsets"});
  expect_bad_entry(R"({"dtype":"F32","shape":[1],"data_offsets":["0","4"]})", 4, {"data_offsets"});
  expect_bad_entry(R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})", 4, {"data_offsets"});
  expect_bad_entry(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4.0]})", 4, {"data_offsets"});
}

TEST(SafetensorsHostile, UnknownDtype) {
  expect_bad_entry(entry("F128", "[1]", 0, 16), 16, {"tensor 'x'", "unknown dtype 'F128'"});
  expect_bad_entry(entry("f32", "[1]", 0, 4), 4, {"unknown dtype"});
}

TEST(SafetensorsHostile, NegativeAndOverflowingShapes) {
  expect_bad_entry(entry("F32", "[-1]", 0, 0), 0, {"tensor 'x'", "negative"});
  expect_bad_entry(entry("F32", "[2,-2]", 0, 0), 0, {"negative"});
  expect_bad_entry(entry("F32", "[18446744073709551615]", 0, 4), 4, {"overflow"});
  expect_bad_entry(entry("F32", "[4294967296,4294967296]", 0, 4), 4, {"overflow"});
  // numel fits in int64 but numel * 4 bytes does not fit in 64 bits.
  expect_bad_entry(entry("F32", "[4611686018427387904,2]", 0, 4), 4, {"overflow"});
  expect_bad_entry(entry("F32", "[4611686018427387904]", 0, 4), 4, {"overflow"});
}

TEST(SafetensorsHostile, ShapeSizeMismatch) {
  expect_bad_entry(entry("F32", "[2]", 0, 4), 8, {"tensor 'x'", "need 8 bytes", "span 4"});
  expect_bad_entry(entry("BF16", "[2,2]", 0, 16), 16, {"need 8 bytes", "span 16"});
  expect_bad_entry(entry("F32", "[0]", 0, 4), 4, {"need 0 bytes"});
}

TEST(SafetensorsHostile, BeginAfterEnd) {
  expect_bad_entry(entry("F32", "[1]", 8, 4), 8, {"tensor 'x'", "begin 8 is after end 4"});
}

TEST(SafetensorsHostile, EndBeyondDataBlock) {
  expect_bad_entry(entry("F32", "[2]", 0, 8), 7, {"tensor 'x'", "beyond the data block"});
  expect_bad_entry(entry("F32", "[1]", 18446744073709551608ull, 18446744073709551612ull), 8,
                   {"beyond the data block"});
}

TEST(SafetensorsHostile, OverlappingTensors) {
  const std::string data(16, '\0');
  expect_bad_file(
      image("{\"a\":" + entry("F32", "[2]", 0, 8) + ",\"b\":" + entry("F32", "[2]", 4, 12) + "}",
            data),
      {"'a' and 'b' overlap"});
  // Same range twice.
  expect_bad_file(
      image("{\"a\":" + entry("F32", "[1]", 4, 8) + ",\"b\":" + entry("F32", "[1]", 4, 8) + "}",
            data),
      {"overlap"});
  // A small tensor inside a big one listed after a tensor in between.
  expect_bad_file(
      image("{\"big\":" + entry("F32", "[4]", 0, 16) + ",\"mid\":" + entry("F32", "[1]", 4, 8) +
                ",\"z\":" + entry("F32", "[1]", 12, 16) + "}",
            data),
      {"overlap"});
}

TEST(SafetensorsHostile, MetadataMustBeObjectOfStrings) {
  expect_bad_file(image(R"({"__metadata__":[1]})"), {"__metadata__", "not a JSON object"});
  expect_bad_file(image(R"({"__metadata__":{"a":"ok","b":1}})"), {"__metadata__", "'b'"});
  expect_bad_file(image(R"({"__metadata__":{"a":{"x":"y"}}})"), {"not a string"});
  expect_bad_file(image(R"({"__metadata__":{"a":null}})"), {"not a string"});
}

TEST(SafetensorsHostile, ControlCharactersInNamesStayOnOneLine) {
  expect_bad_file(image(R"({"bad\nname":)" + entry("F32", "[-1]", 0, 0) + "}"),
                  {"tensor 'bad\\x0aname'"});
}

TEST(SafetensorsLenient, DataBlockLargerThanTensorsAndPaddedHeader) {
  const std::string header = "{\"x\":" + entry("F32", "[1]", 4, 8) + "}    ";
  const std::string path = make_temp_dir("st") + "/lenient.safetensors";
  write_file(path, image(header, std::string("\0\0\0\0\0\0\x80\x3f\0\0\0\0", 12)));
  auto f = SafetensorsFile::open(path);
  const TensorInfo* x = f->find("x");
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(x->offset, 4u);
  float v;
  std::memcpy(&v, f->data(*x), 4);
  EXPECT_EQ(v, 1.0f);
}

TEST(SafetensorsLenient, EmptyTensorsMayShareOffsets) {
  const std::string header = "{\"a\":" + entry("F32", "[1]", 0, 4) +
                             ",\"e\":" + entry("F32", "[0]", 4, 4) +
                             ",\"f\":" + entry("F32", "[0]", 4, 4) + "}";
  auto bytes = image(header, std::string(8, '\0'));
  auto f = SafetensorsFile::parse(std::as_bytes(std::span(bytes.data(), bytes.size())), "mem");
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->find("a")->nbytes, 4u);
  EXPECT_EQ(f->find("e")->numel(), 0);
  EXPECT_EQ(f->path(), "mem");
}

// A name listed twice used to keep the last entry (nlohmann's choice), hiding the first.
TEST(SafetensorsHostile, DuplicateKeysAreRefused) {
  expect_bad_file(image("{\"a\":" + entry("F32", "[2]", 0, 8) + ",\"a\":" + entry("F32", "[1]", 0, 4) + "}",
                        std::string(8, '\0')),
                  {"tensor 'a': listed twice in the header"});
}

TEST(SafetensorsParse, ErrorsNameTheSource) {
  const std::string bytes = image("{\"w\":" + entry("F32", "[3]", 0, 4) + "}", "abcd");
  try {
    SafetensorsFile::parse(std::as_bytes(std::span(bytes.data(), bytes.size())), "buf.st");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("buf.st: tensor 'w': ", 0), 0u) << e.what();
  }
}

// ---------------------------------------------------------------- WeightStore

class WeightStoreTest : public testing::Test {
 protected:
  void SetUp() override { dir_ = make_temp_dir("ws"); }
  void write_shard(const std::string& file, const std::vector<std::string>& names) {
    std::vector<TensorToWrite> ts;
    for (const auto& n : names) ts.push_back({n, DType::kF32, {2}, as_bytes(values_)});
    write_safetensors(dir_ + "/" + file, ts);
  }
  void write_index(const json& weight_map) {
    json index = {{"metadata", {{"total_size", 24}}}, {"weight_map", weight_map}};
    write_file(dir_ + "/model.safetensors.index.json", index.dump());
  }
  Error open_error() {
    try {
      WeightStore::open_dir(dir_);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kBadInput) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
      return e;
    }
    ADD_FAILURE() << "no error";
    return Error(ErrorKind::kRuntime, "", "");
  }
  std::string dir_;
  std::vector<float> values_ = {1.0f, 2.0f};
};

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

TEST_F(WeightStoreTest, SingleFile) {
  write_shard("model.safetensors", {"b", "a"});
  write_shard("other.safetensors", {"a"});  // ignored: model.safetensors takes precedence
  auto store = WeightStore::open_dir(dir_);
  EXPECT_EQ(store.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(store.files().size(), 1u);
  auto e = store.find("b");
  ASSERT_NE(e.info, nullptr);
  EXPECT_EQ(e.file->path(), dir_ + "/model.safetensors");
  EXPECT_EQ(e.info->name, "b");
  float v;
  std::memcpy(&v, e.file->data(*e.info) + 4, 4);
  EXPECT_EQ(v, 2.0f);
  EXPECT_FALSE(store.has("c"));
  EXPECT_EQ(store.find("c").file, nullptr);
}

TEST_F(WeightStoreTest, ShardedWithIndex) {
  write_shard("model-00001-of-00002.safetensors", {"layers.0.w", "embed"});
  write_shard("model-00002-of-00002.safetensors", {"layers.1.w", "head", "unlisted"});
  write_index({{"embed", "model-00001-of-00002.safetensors"},
               {"layers.0.w", "model-00001-of-00002.safetensors"},
               {"layers.1.w", "model-00002-of-00002.safetensors"},
               {"head", "model-00002-of-00002.safetensors"}});
  auto store = WeightStore::open_dir(dir_);
  EXPECT_EQ(store.files().size(), 2u);  // each shard opened once
  EXPECT_EQ(store.names(), (std::vector<std::string>{"embed", "head", "layers.0.w", "layers.1.w"}));
  EXPECT_EQ(store.find("head").file->path(), dir_ + "/model-00002-of-00002.safetensors");
  EXPECT_EQ(store.find("embed").file->path(), dir_ + "/model-00001-of-00002.safetensors");
  EXPECT_EQ(store.find("layers.1.w").info->shape, (std::vector<int64_t>{2}));
  for (const auto& n : store.names()) EXPECT_TRUE(store.has(n)) << n;
  EXPECT_FALSE(store.has("unlisted"));
}

TEST_F(WeightStoreTest, IndexedTensorMissingFromShard) {
  write_shard("s1.safetensors", {"a"});
  write_index({{"a", "s1.safetensors"}, {"ghost", "s1.safetensors"}});
  Error e = open_error();
  EXPECT_CONTAINS(e.what(), dir_ + "/s1.safetensors: tensor 'ghost'");
  EXPECT_CONTAINS(e.what(), "missing");
}

TEST_F(WeightStoreTest, IndexNamesMissingShardFile) {
  write_index({{"a", "nope.safetensors"}});
  EXPECT_CONTAINS(open_error().what(), dir_ + "/nope.safetensors");
}

TEST_F(WeightStoreTest, BadIndexJson) {
  write_file(dir_ + "/model.safetensors.index.json", "{\"weight_map\": ");
  EXPECT_CONTAINS(open_error().what(), "model.safetensors.index.json: invalid JSON (byte 16)");
  write_file(dir_ + "/model.safetensors.index.json", "{\"metadata\": {}}");
  EXPECT_CONTAINS(open_error().what(), "missing 'weight_map'");
  write_file(dir_ + "/model.safetensors.index.json", "{\"weight_map\": []}");
  EXPECT_CONTAINS(open_error().what(), "'weight_map' is not a JSON object");
  write_index({{"a", 3}});
  EXPECT_CONTAINS(open_error().what(), "entry for 'a' is not a string");
  write_index({{"a", "../outside.safetensors"}});
  EXPECT_CONTAINS(open_error().what(), "not a plain file name");
}

TEST_F(WeightStoreTest, BadShardNamesFile) {
  write_file(dir_ + "/s1.safetensors", image("{\"a\":" + entry("F32", "[9]", 0, 4) + "}", "xxxx"));
  write_index({{"a", "s1.safetensors"}});
  EXPECT_CONTAINS(open_error().what(), dir_ + "/s1.safetensors: tensor 'a'");
}

TEST_F(WeightStoreTest, GlobWithoutIndex) {
  write_shard("b.safetensors", {"y"});
  write_shard("a.safetensors", {"x", "z"});
  write_file(dir_ + "/notes.txt", "not a shard");
  auto store = WeightStore::open_dir(dir_);
  ASSERT_EQ(store.files().size(), 2u);
  EXPECT_EQ(store.files()[0]->path(), dir_ + "/a.safetensors");  // sorted
  EXPECT_EQ(store.names(), (std::vector<std::string>{"x", "y", "z"}));
  EXPECT_EQ(store.find("y").file->path(), dir_ + "/b.safetensors");
}

TEST_F(WeightStoreTest, TensorInTwoFiles) {
  write_shard("a.safetensors", {"x", "dup"});
  write_shard("b.safetensors", {"dup"});
  Error e = open_error();
  EXPECT_CONTAINS(e.what(), "tensor 'dup'");
  EXPECT_CONTAINS(e.what(), "a.safetensors");
  EXPECT_CONTAINS(e.what(), "b.safetensors");
}

TEST_F(WeightStoreTest, EmptyDirectory) {
  EXPECT_CONTAINS(open_error().what(), dir_ + ": no .safetensors files");
}

TEST_F(WeightStoreTest, NotADirectory) {
  dir_ += "/absent";
  EXPECT_CONTAINS(open_error().what(), dir_ + ": not a directory");
}

// The golden fixtures were written by the Python safetensors library (sharded and single).
TEST(WeightStoreGolden, OpensFixturesWrittenByTransformers) {
  const std::filesystem::path root = test::test_data_dir() + "/golden";
  if (!std::filesystem::exists(root / "glm_a")) GTEST_SKIP() << "no fixtures in " << root;
  for (const char* model : {"glm_a", "glm_b", "dsv_a", "dsv_b"}) {
    const std::filesystem::path dir = root / model;
    if (!std::filesystem::exists(dir)) continue;
    auto store = WeightStore::open_dir(dir.string());
    auto embed = store.find("model.embed_tokens.weight");
    ASSERT_NE(embed.info, nullptr) << model;
    EXPECT_EQ(embed.info->shape.size(), 2u) << model;
    for (const auto& name : store.names()) {
      const TensorInfo& t = *store.find(name).info;
      EXPECT_EQ(static_cast<size_t>(t.numel()) * dtype_size(t.dtype), t.nbytes) << name;
    }
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      if (e.path().filename().string().starts_with("expected.")) {
        EXPECT_FALSE(SafetensorsFile::open(e.path().string())->tensors().empty()) << e.path();
      }
    }
  }
  auto sharded = WeightStore::open_dir((root / "dsv_a").string());
  EXPECT_EQ(sharded.files().size(), 2u);
}

// ---------------------------------------------------------------- dtype conversion

float from_bits(uint32_t b) { return std::bit_cast<float>(b); }

TEST(Dtype, Bf16ToF32KnownValues) {
  const std::vector<uint16_t> in = {0x3F80, 0xC000, 0x0000, 0x8000, 0x7F80, 0xFF80, 0x3E20, 0x0001};
  std::vector<float> out(in.size());
  convert_to_f32(DType::kBF16, in.data(), in.size(), out.data());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_TRUE(std::signbit(out[3]));
  EXPECT_EQ(out[4], std::numeric_limits<float>::infinity());
  EXPECT_EQ(out[5], -std::numeric_limits<float>::infinity());
  EXPECT_EQ(out[6], 0.15625f);
  EXPECT_EQ(out[7], from_bits(0x00010000));  // f32 subnormal
  EXPECT_TRUE(std::isnan(bf16_to_f32(0x7FC0)));
}

TEST(Dtype, F16ToF32KnownValues) {
  const std::vector<uint16_t> in = {0x3C00, 0xC000, 0x7BFF, 0x3555, 0x0400, 0x8000};
  std::vector<float> out(in.size());
  convert_to_f32(DType::kF16, in.data(), in.size(), out.data());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 65504.0f);
  EXPECT_EQ(out[3], 0.333251953125f);
  EXPECT_EQ(out[4], std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_TRUE(std::signbit(out[5]));
  EXPECT_EQ(out[5], 0.0f);
}

TEST(Dtype, F16SubnormalsInfNan) {
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x0200), std::ldexp(1.0f, -15));
  EXPECT_EQ(f16_to_f32(0x03FF), 1023.0f * std::ldexp(1.0f, -24));  // largest subnormal
  EXPECT_EQ(f16_to_f32(0x0003), 3.0f * std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_f32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7C01)));
}

TEST(Dtype, ConvertHandlesUnalignedSourceAndF32) {
  const uint16_t vals[] = {0x3C00, 0x4000, 0x4200};  // f16: 1, 2, 3
  std::vector<unsigned char> buf(1 + sizeof(vals));
  std::memcpy(buf.data() + 1, vals, sizeof(vals));
  float out[3];
  convert_to_f32(DType::kF16, buf.data() + 1, 3, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 2.0f);
  EXPECT_EQ(out[2], 3.0f);
  const float f[] = {0.5f, -7.25f};
  std::vector<unsigned char> fb(3 + sizeof(f));
  std::memcpy(fb.data() + 3, f, sizeof(f));
  convert_to_f32(DType::kF32, fb.data() + 3, 2, out);
  EXPECT_EQ(out[0], 0.5f);
  EXPECT_EQ(out[1], -7.25f);
}

TEST(Dtype, F32ToBf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xC000);
  // bf16 ulp at 1.0 is 2^-7; 2^-8 is the halfway point.
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F808000)), 0x3F80);  // tie, even below
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F818000)), 0x3F82);  // tie, even above
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F808001)), 0x3F81);  // just above half
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F807FFF)), 0x3F80);  // just below half
  EXPECT_EQ(f32_to_bf16(from_bits(0xBF808001)), 0xBF81);  // negative rounds by magnitude
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // overflows to inf
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(from_bits(0x7F800001)))));  // sNaN stays NaN
  for (uint32_t h = 0; h < 0x10000; h += 7) {  // exact bf16 values survive the round trip
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (!std::isnan(f)) {
      EXPECT_EQ(f32_to_bf16(f), h);
    }
  }
}

}  // namespace
}  // namespace indexcache
