// `indexcache distill` end to end on a golden model: the written directory loads in info, dump and
// eval under its own plan, and calibrate starts its search from that plan; bad input is a one-line error with exit 2.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>

#include "test_util.h"

namespace indexcache {
namespace {

using test::run_cli;

const std::string kModel = test::test_data_dir() + "/golden/glm_a";

std::string ids_file(const std::string& dir, int n) {
  std::mt19937 rng(5);
  std::string text;
  for (int i = 0; i < n; ++i) text += std::to_string(rng() % 256) + " ";
  test::write_file(dir + "/train.ids", text + "\n");
  return dir + "/train.ids";
}

int lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

TEST(DistillCli, WritesAModelEveryCommandLoads) {
  const std::string dir = test::make_temp_dir("distill-cli");
  const std::string data = ids_file(dir, 200), out = dir + "/out";
  auto r = run_cli("distill -m " + kModel + " --plan FSSFSF --data " + data + " --ctx 48 --steps 3 --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("wrote  " + out), std::string::npos) << r.output;
  r = run_cli("info -m " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("FSSFSF (3 F / 6 layers)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("indexers     present in 3 layers"), std::string::npos) << r.output;
  r = run_cli("dump -m " + out + " --ids " + data + " --out " + dir + "/d.safetensors");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = run_cli("eval -m " + out + " --data " + data + " --ctx 48");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = run_cli("calibrate -m " + out + " --data " + data + " --ctx 48 --keep-layers 2 --out " + dir + "/calib");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("start        FSSFSF"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("vs start plan"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("1/2 "), std::string::npos) << "a plan needing missing indexers was scored\n" << r.output;
  EXPECT_NE(test::read_file(dir + "/calib/report.json").find("\"start_plan\": \"FSSFSF\""), std::string::npos);
  EXPECT_NE(test::read_file(out + "/report.json").find("\"curve\""), std::string::npos);
  EXPECT_NE(test::read_file(out + "/loss_curve.svg").find("</svg>"), std::string::npos);
}

// The state file is written, `--resume` of a finished run reads it back (same fingerprint in a
// second process) and writes the same model; a state from other settings or no state is an error.
TEST(DistillCli, ResumeContinuesFromTheStateFile) {
  const std::string dir = test::make_temp_dir("distill-cli-resume");
  const std::string data = ids_file(dir, 200), out = dir + "/out";
  const std::string base = "distill -m " + kModel + " --plan FSSFSF --data " + data + " --ctx 48 --steps 4 --lr 0.01 ";
  auto r = run_cli(base + "--save-every 2 --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string model = test::read_file(out + "/model.safetensors");
  ASSERT_TRUE(std::filesystem::is_regular_file(out + "/distill_state.safetensors"));
  std::filesystem::remove(out + "/model.safetensors");
  r = run_cli(base + "--resume --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resume from step 4 of 4"), std::string::npos) << r.output;
  EXPECT_TRUE(test::read_file(out + "/model.safetensors") == model) << "the resumed run wrote another model";
  r = run_cli("distill -m " + kModel + " --plan FSSFSF --data " + data + " --ctx 48 --steps 4 --lr 0.02 --resume --out " + out);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("other settings"), std::string::npos) << r.output;
  EXPECT_EQ(lines(r.output), 1) << r.output;
  r = run_cli(base + "--resume --out " + dir + "/fresh");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("no distill_state.safetensors"), std::string::npos) << r.output;
  EXPECT_EQ(lines(r.output), 1) << r.output;
}

TEST(DistillCli, BadInputIsOneLineAndExit2) {
  const std::string dir = test::make_temp_dir("distill-cli-bad");
  const std::string data = ids_file(dir, 200), tiny = dir + "/tiny.ids";
  test::write_file(tiny, "7\n");
  std::filesystem::create_directories(dir + "/full");
  test::write_file(dir + "/full/keep.txt", "user file\n");
  const std::string base = "distill -m " + kModel + " --data " + data + " --ctx 48 ";
  struct Case {
    std::string args, message;
  } cases[] = {
      {base + "--plan FSSFSF --steps 0 --out " + dir + "/a", "--steps"},
      {base + "--plan FSS --out " + dir + "/b", "plan"},
      {base + "--plan SFFFFF --out " + dir + "/c", "layer 0"},
      {base + "--plan FSSFSF --out " + kModel, "is the model directory; refusing to write into it"},
      {base + "--plan FSSFSF --out " + dir + "/full", "was not written by indexcache distill"},
      {"distill -m " + kModel + " --data " + tiny + " --ctx 48 --plan FSSFSF --out " + dir + "/e", tiny},
      {base + "--plan FSSFSF --lr -1 --out " + dir + "/f", "--lr"},
      {base + "--plan FSSFSF --stage medium --out " + dir + "/g", "--stage"},
      {base + "--plan FSSFSF", "--out"},
  };
  for (const Case& c : cases) {
    const auto r = run_cli(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_EQ(lines(r.output), 1) << c.args << "\n" << r.output;
    EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
  }
  EXPECT_EQ(test::read_file(dir + "/full/keep.txt"), "user file\n");
}

}  // namespace
}  // namespace indexcache
