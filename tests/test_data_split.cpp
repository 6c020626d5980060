// The embedded model's data files keep their splits apart: data/distill.txt (training documents and
// training-pool synthetic examples, scripts/train/make_distill.py) shares no document with
// data/heldout.txt or data/calibration.txt, and none of its lines of >= 120 characters occurs in
// either. The check itself is tested on a copy with a held-out document and a held-out line pasted in.
// And `distill`'s default data (DataUse::kDistill) is distill*.txt, else calibration*.txt.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "indexcache/dataset.h"
#include "indexcache/error.h"
#include "test_util.h"

namespace indexcache {
namespace {

constexpr std::string_view kEot = "<|endoftext|>";
constexpr size_t kLongLine = 120;

std::string repo_data(const std::string& name) { return std::string(INDEXCACHE_REPO_DATA) + "/" + name; }

std::vector<std::string_view> split_docs(std::string_view text) {
  std::vector<std::string_view> out;
  for (size_t p = 0;;) {
    const size_t q = text.find(kEot, p);
    const std::string_view d = text.substr(p, q == std::string_view::npos ? std::string_view::npos : q - p);
    if (!d.empty()) out.push_back(d);
    if (q == std::string_view::npos) return out;
    p = q + kEot.size();
  }
}

struct Overlap {
  std::vector<std::string> docs;   // "distill doc i = / contains <file> doc j"
  std::vector<std::string> lines;  // "distill doc i line: <start of the line> in <file>"
};

// What distill.txt shares with each evaluation file (name, contents).
Overlap overlap(std::string_view distill, const std::vector<std::pair<std::string, std::string>>& eval) {
  Overlap o;
  const auto mine = split_docs(distill);
  for (const auto& [name, text] : eval) {
    const auto theirs = split_docs(text);
    for (size_t i = 0; i < mine.size(); ++i) {
      for (size_t j = 0; j < theirs.size(); ++j) {
        if (mine[i] == theirs[j])
          o.docs.push_back("distill doc " + std::to_string(i) + " = " + name + " doc " + std::to_string(j));
        else if (mine[i].find(theirs[j]) != std::string_view::npos)
          o.docs.push_back("distill doc " + std::to_string(i) + " contains " + name + " doc " + std::to_string(j));
      }
      std::string_view d = mine[i];
      for (size_t p = 0; p <= d.size();) {
        const size_t q = std::min(d.find('\n', p), d.size());
        const std::string_view line = d.substr(p, q - p);
        if (line.size() >= kLongLine && std::string_view(text).find(line) != std::string_view::npos)
          o.lines.push_back("distill doc " + std::to_string(i) + " line '" + std::string(line.substr(0, 60)) +
                            "...' in " + name);
        p = q + 1;
      }
    }
  }
  return o;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < 10; ++i) s += "\n  " + v[i];
  if (v.size() > 10) s += "\n  ... (" + std::to_string(v.size()) + " in all)";
  return s;
}

std::vector<std::pair<std::string, std::string>> eval_files() {
  return {{"heldout.txt", test::read_file(repo_data("heldout.txt"))},
          {"calibration.txt", test::read_file(repo_data("calibration.txt"))}};
}

TEST(DataSplit, DistillSharesNoDocumentAndNoLongLineWithHeldoutOrCalibration) {
  const std::string distill = test::read_file(repo_data("distill.txt"));
  const auto eval = eval_files();
  const auto docs = split_docs(distill);
  ASSERT_GE(docs.size(), 10u) << "data/distill.txt: too few documents";
  for (const auto& [name, text] : eval) ASSERT_GE(split_docs(text).size(), 10u) << name;
  const Overlap o = overlap(distill, eval);
  EXPECT_TRUE(o.docs.empty()) << "documents shared:" << join(o.docs);
  EXPECT_TRUE(o.lines.empty()) << "lines of >= " << kLongLine << " chars shared:" << join(o.lines);
}

TEST(DataSplit, CheckFindsAPastedHeldoutDocumentAndLine) {
  const auto eval = eval_files();
  const std::string distill = test::read_file(repo_data("distill.txt"));
  const auto held = split_docs(eval[0].second);
  const auto calib = split_docs(eval[1].second);
  // A copy of distill.txt with the fourth held-out document appended as its own document.
  const std::string dir = test::make_temp_dir("data-split");
  test::write_file(dir + "/distill.txt", distill + std::string(kEot) + std::string(held[3]));
  const Overlap a = overlap(test::read_file(dir + "/distill.txt"), eval);
  ASSERT_EQ(a.docs.size(), 1u) << join(a.docs);
  EXPECT_NE(a.docs[0].find("= heldout.txt doc 3"), std::string::npos) << a.docs[0];
  // A held-out document inside a training document is found too.
  const auto mine = split_docs(distill);
  const std::string inside = std::string(mine[0]) + "\n" + std::string(calib[1]) + "\n" + std::string(mine[1]);
  const Overlap b = overlap(inside, eval);
  ASSERT_EQ(b.docs.size(), 1u) << join(b.docs);
  EXPECT_NE(b.docs[0].find("contains calibration.txt doc 1"), std::string::npos) << b.docs[0];
  // One long line of a held-out document, pasted into a training document, is found; the same line
  // cut to 119 characters is not.
  std::string_view line;
  for (const auto d : held) {
    for (size_t p = 0; p < d.size() && line.empty();) {
      const size_t q = std::min(d.find('\n', p), d.size());
      if (q - p >= kLongLine) line = d.substr(p, q - p);
      p = q + 1;
    }
    if (!line.empty()) break;
  }
  ASSERT_FALSE(line.empty()) << "heldout.txt has no line of >= 120 characters";
  const std::string pasted = std::string(mine[0]) + "\n" + std::string(line) + "\n";
  const Overlap c = overlap(pasted, eval);
  EXPECT_TRUE(c.docs.empty()) << join(c.docs);
  EXPECT_GE(c.lines.size(), 1u);
  const std::string shorter = std::string(mine[0]) + "\n" + std::string(line.substr(0, kLongLine - 1)) + "\n";
  EXPECT_TRUE(overlap(shorter, eval).lines.empty());
}

TEST(DataSplit, DistillDefaultIsDistillTxtElseCalibration) {
  namespace fs = std::filesystem;
  const auto names = [](const std::vector<std::string>& paths) {
    std::vector<std::string> out;
    for (const auto& p : paths) out.push_back(fs::path(p).filename().string());
    return out;
  };
  EXPECT_EQ(names(default_data_files(INDEXCACHE_REPO_DATA, DataUse::kDistill)), std::vector<std::string>{"distill.txt"});
  const std::string dir = test::make_temp_dir("distill-default");
  EXPECT_THROW(default_data_files(dir, DataUse::kDistill), Error);
  test::write_file(dir + "/calibration.txt", "x");
  test::write_file(dir + "/heldout.txt", "x");
  EXPECT_EQ(names(default_data_files(dir, DataUse::kDistill)), std::vector<std::string>{"calibration.txt"});
  test::write_file(dir + "/distill.txt", "x");
  test::write_file(dir + "/distill_code.txt", "x");
  EXPECT_EQ(names(default_data_files(dir, DataUse::kDistill)), (std::vector<std::string>{"distill.txt", "distill_code.txt"}));
  // The other uses do not pick it up.
  EXPECT_EQ(names(default_data_files(dir, DataUse::kCalibration)), std::vector<std::string>{"calibration.txt"});
  EXPECT_EQ(names(default_data_files(dir, DataUse::kEval)), std::vector<std::string>{"heldout.txt"});
}

}  // namespace
}  // namespace indexcache
