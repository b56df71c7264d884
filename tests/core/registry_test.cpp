// Plugin loading: plugins.toml entries, register_parallel_backend, and every
// way a plugin can fail to load.
#include "registry.hpp"
#include "test_backends.hpp"

#include <joblib/joblib.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <ranges>
#include <thread>

namespace {

namespace fs = std::filesystem;
const fs::path kPluginDir = JOBLIB_TEST_PLUGIN_DIR;

double twice(int x) { return 2.0 * x; }

std::string load_error(const std::string& name, const fs::path& path) {
  try {
    joblib::register_parallel_backend(name, path);
  } catch (const joblib::BackendError& e) {
    return e.what();
  }
  return "(no error)";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(RegistryTest, ListsSequentialAndTheBuiltPlugins) {
  auto names = joblib::available_backends();
  EXPECT_NE(std::find(names.begin(), names.end(), "sequential"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "threading"), names.end());
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
}

TEST(RegistryTest, ReadsTheInstalledPluginsToml) {
  auto files = joblib::detail::plugin_files();
  ASSERT_FALSE(files.empty());
  EXPECT_EQ(files.front().filename(), "plugins.toml");
}

TEST(RegistryTest, MissingLibraryNamesThePath) {
  const std::string msg = load_error("ghost", "/nonexistent/libghost.so");
  EXPECT_TRUE(contains(msg, "/nonexistent/libghost.so")) << msg;
  EXPECT_TRUE(contains(msg, "does not exist")) << msg;
}

TEST(RegistryTest, WrongAbiIsRefused) {
  const fs::path p = kPluginDir / "libtest_bad_abi.so";
  const std::string msg = load_error("bad_abi", p);
  EXPECT_TRUE(contains(msg, p.string())) << msg;
  EXPECT_TRUE(contains(msg, "ABI version " + std::to_string(joblib::plugin_abi_version + 1000))) << msg;
}

TEST(RegistryTest, MissingFactoryIsRefused) {
  const std::string msg = load_error("no_factory", kPluginDir / "libtest_no_factory.so");
  EXPECT_TRUE(contains(msg, "no joblib_backend_factory symbol")) << msg;
}

TEST(RegistryTest, ASharedObjectThatIsNotAPluginIsRefused) {
  const std::string msg = load_error("not_plugin", kPluginDir / "libtest_not_a_plugin.so");
  EXPECT_TRUE(contains(msg, "not a joblib-cpp plugin")) << msg;
}

TEST(RegistryTest, AFileThatIsNotASharedObjectIsRefused) {
  const fs::path p = fs::temp_directory_path() / "joblib_not_elf.so";
  std::ofstream(p) << "not an ELF file";
  const std::string msg = load_error("garbage", p);
  fs::remove(p);
  EXPECT_TRUE(contains(msg, p.string())) << msg;
  EXPECT_TRUE(contains(msg, "cannot load backend 'garbage'")) << msg;
}

TEST(RegistryTest, AFailedRegistrationLeavesNoEntry) {
  (void)load_error("ghost2", "/nonexistent/libghost2.so");
  auto names = joblib::available_backends();
  EXPECT_EQ(std::find(names.begin(), names.end(), "ghost2"), names.end());
}

TEST(RegistryTest, ThrowingBackendConstructorIsABackendError) {
  joblib::register_parallel_backend("throws", kPluginDir / "libtest_throwing_factory.so");
  try {
    joblib::Parallel({.n_jobs = 2, .backend = "throws"}).map(twice, std::vector{1});
    FAIL();
  } catch (const joblib::BackendError& e) {
    EXPECT_TRUE(contains(e.what(), "cannot reach the cluster")) << e.what();
    EXPECT_TRUE(contains(e.what(), "'throws'")) << e.what();
  }
}

TEST(RegistryTest, UnknownBackendInParallelListsTheNames) {
  try {
    joblib::Parallel({.n_jobs = 2, .backend = "nope"}).map(twice, std::vector{1});
    FAIL();
  } catch (const joblib::BackendError& e) {
    EXPECT_TRUE(contains(e.what(), "Invalid backend: 'nope', expected one of [")) << e.what();
    EXPECT_TRUE(contains(e.what(), "\"threading\"")) << e.what();
  }
}

TEST(RegistryTest, RegisteredFactoryIsUsedFromAScope) {
  joblib_test::register_fake_backends();
  joblib::parallel_backend scope("fake_threads", {.n_jobs = 2});
  std::vector<double> r = joblib::Parallel().map(twice, std::vector{1, 2, 3});
  EXPECT_EQ(r, (std::vector<double>{2, 4, 6}));
}

TEST(RegistryTest, MakeDefaultChangesTheDefaultBackend) {
  joblib::register_parallel_backend(
      "default_probe",
      [](const joblib::BackendInit& i) {
        return std::make_unique<joblib_test::FakeBackend>(i, "default_probe", true, true);
      },
      true);
  EXPECT_EQ(joblib::detail::default_backend(), "default_probe");
  // Put the shipped default back for the other tests.
  joblib::register_parallel_backend("default_probe", [](const joblib::BackendInit& i) {
    return std::make_unique<joblib_test::FakeBackend>(i, "default_probe", true, true);
  });
  joblib::load_plugins_file(joblib::detail::plugin_files().front());
  EXPECT_EQ(joblib::detail::default_backend(), "threading");
}

// ---- a user's own backend (examples/custom_backend) ----------------------

TEST(CustomBackendTest, LoadsByPathAndRunsFromAScope) {
  joblib::register_parallel_backend("mine", fs::path(JOBLIB_TEST_MY_BACKEND));
  joblib::parallel_backend scope("mine", {.n_jobs = 2});
  std::vector<std::thread::id> ids = joblib::Parallel()(
      std::views::iota(0, 8) | std::views::transform([](int) {
        return joblib::delayed([] { return std::this_thread::get_id(); })();
      }));
  ASSERT_EQ(ids.size(), 8u);
  for (auto id : ids) EXPECT_NE(id, std::this_thread::get_id());  // ran on the plugin's threads
}

TEST(CustomBackendTest, LoadsFromAPluginsTomlEntry) {
  const fs::path toml = fs::temp_directory_path() / "joblib_test_plugins.toml";
  std::ofstream(toml) << "[plugins.mine_from_toml]\nlibrary = \"" << JOBLIB_TEST_MY_BACKEND
                      << "\"\nserves = [\"threads\", \"sharedmem\"]\n";
  joblib::load_plugins_file(toml);
  fs::remove(toml);
  auto names = joblib::available_backends();
  EXPECT_NE(std::find(names.begin(), names.end(), "mine_from_toml"), names.end());
  joblib::parallel_backend scope("mine_from_toml", {.n_jobs = 2});
  std::vector<double> r = joblib::Parallel().map(twice, std::vector{5, 6});
  EXPECT_EQ(r, (std::vector<double>{10, 12}));
}

TEST(CustomBackendTest, TomlEntryWithAMissingLibraryFailsOnUseNamingThePath) {
  const fs::path toml = fs::temp_directory_path() / "joblib_test_missing.toml";
  std::ofstream(toml) << "[plugins.missing_lib]\nlibrary = \"libdoes_not_exist.so\"\nserves = [\"threads\"]\n";
  joblib::load_plugins_file(toml);
  fs::remove(toml);
  // Not listed as available: its library is not there.
  auto names = joblib::available_backends();
  EXPECT_EQ(std::find(names.begin(), names.end(), "missing_lib"), names.end());
  try {
    joblib::Parallel({.n_jobs = 2, .backend = "missing_lib"}).map(twice, std::vector{1});
    FAIL();
  } catch (const joblib::BackendError& e) {
    EXPECT_TRUE(contains(e.what(), (fs::temp_directory_path() / "libdoes_not_exist.so").string())) << e.what();
  }
}

TEST(CustomBackendTest, BadTomlIsABackendErrorNamingTheFile) {
  const fs::path toml = fs::temp_directory_path() / "joblib_test_bad.toml";
  std::ofstream(toml) << "[plugins.x\nlibrary = 3\n";
  try {
    joblib::load_plugins_file(toml);
    FAIL();
  } catch (const joblib::BackendError& e) {
    EXPECT_TRUE(contains(e.what(), toml.string())) << e.what();
  }
  fs::remove(toml);
  EXPECT_THROW(joblib::load_plugins_file("/nonexistent/plugins.toml"), joblib::BackendError);
}

}  // namespace
