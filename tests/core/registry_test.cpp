// Plugin loading: plugins.toml entries, register_parallel_backend, and every
// way a plugin can fail to load.
#include "registry.hpp"
#include "test_backends.hpp"

#include <joblib/joblib.hpp>

#include <gtest/gtest.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <ranges>
#include <sstream>
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

// ---- plugin lists that cannot be used, plugins that are not trusted ------
//
// The registry is built once per process, on first use, from the
// environment (JOBLIB_PLUGINS_TOML, JOBLIB_PLUGINS). A test that needs it
// built from another environment runs this binary again with
// RegistryChild.DISABLED_Scenario and JOBLIB_TEST_SCENARIO, and gives it
// 20 s (a child that hangs is killed and the test fails).

using namespace std::chrono_literals;

struct Child {
  bool finished = false;  // false: it hung and the watchdog killed it
  int status = -1;        // its exit code, -1 if killed by a signal
  std::string output;     // its stdout and stderr
};

Child run_child(const std::string& scenario, const std::map<std::string, std::string>& set = {},
                const std::vector<std::string>& unset = {}) {
  static int counter = 0;
  auto dropped = [&](const std::string& key) {
    return key == "JOBLIB_PLUGINS" || key == "JOBLIB_ALLOW_UNSAFE_PLUGINS" || key.rfind("GTEST_", 0) == 0 ||
           key.rfind("JOBLIB_WORKER_", 0) == 0 || key.rfind("JOBLIB_TEST_", 0) == 0 || set.count(key) > 0 ||
           std::find(unset.begin(), unset.end(), key) != unset.end();
  };
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) {
    const std::string kv = *e;
    if (!dropped(kv.substr(0, kv.find('=')))) env.push_back(kv);
  }
  env.push_back("JOBLIB_TEST_SCENARIO=" + scenario);
  for (const auto& [k, v] : set) env.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& kv : env) envp.push_back(kv.data());
  envp.push_back(nullptr);
  std::string self = fs::read_symlink("/proc/self/exe").string();
  std::string filter = "--gtest_filter=RegistryChild.DISABLED_Scenario";
  std::string disabled = "--gtest_also_run_disabled_tests";
  std::vector<char*> argv{self.data(), filter.data(), disabled.data(), nullptr};
  const fs::path out = fs::temp_directory_path() /
                       ("joblib_registry_child_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, self.c_str(), &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  Child c;
  if (rc != 0) {
    c.output = std::string("posix_spawn failed: ") + std::strerror(rc);
    return c;
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!c.finished && std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) c.finished = true;
    else std::this_thread::sleep_for(20ms);
  }
  if (!c.finished) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  } else if (WIFEXITED(status)) {
    c.status = WEXITSTATUS(status);
  }
  std::ifstream in(out);
  std::stringstream text;
  text << in.rdbuf();
  c.output = text.str();
  std::error_code ec;
  fs::remove(out, ec);
  return c;
}

// The message a child printed as MESSAGE[...].
std::string child_message(const Child& c) {
  const auto at = c.output.find("MESSAGE[");
  if (at == std::string::npos) return "(no message)";
  const auto end = c.output.find("]END", at);
  return c.output.substr(at + 8, end == std::string::npos ? std::string::npos : end - at - 8);
}

std::size_t count_of(const std::string& text, const std::string& part) {
  std::size_t n = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

// docs/<name>, from the source tree.
std::string read_doc(const std::string& name) {
  const fs::path p = fs::path(__FILE__).parent_path().parent_path().parent_path() / "docs" / name;
  std::ifstream in(p);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A message a doc quotes must be, exactly, the one the code prints.
void expect_doc_quotes(const std::string& doc, const std::string& message) {
  EXPECT_TRUE(contains(read_doc(doc), message)) << "docs/" << doc << " should quote, exactly:\n" << message;
}

// A folder of its own under the temporary folder (mode 0700, owned by us).
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "joblib_registry_XXXXXX").string();
    if (::mkdtemp(tmpl.data())) path = fs::canonical(tmpl);  // as the messages name it
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// A copy of the user's test plugin in `dir`, with permissions `mode`.
fs::path plugin_copy(const fs::path& dir, fs::perms mode) {
  const fs::path p = dir / "libmy_backend.so";
  fs::copy_file(JOBLIB_TEST_MY_BACKEND, p, fs::copy_options::overwrite_existing);
  fs::permissions(p, mode);
  return p;
}

std::string refusal_of(const fs::path& offender, const std::string& why) {
  return "refused: '" + offender.string() + "' " + why +
         "; make it owned by you or root and not writable by group or others (chmod go-w), or set "
         "JOBLIB_ALLOW_UNSAFE_PLUGINS=1 to trust it anyway";
}

bool fork_works() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(42);
  if (pid < 0) return false;
  int status = 0;
  for (auto deadline = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < deadline;) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) && WEXITSTATUS(status) == 42;
    std::this_thread::sleep_for(10ms);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return false;
}

std::vector<std::string> names_in(const char* var) {
  std::vector<std::string> names;
  if (const char* v = std::getenv(var)) {
    std::stringstream ss(v);
    for (std::string n; std::getline(ss, n, ',');)
      if (!n.empty()) names.push_back(n);
  }
  return names;
}

void expect_runs_on_threads(const joblib::ParallelOptions& options) {
  std::vector<std::thread::id> ids = joblib::Parallel(options)(
      std::views::iota(0, 4) | std::views::transform([](int) {
        return joblib::delayed([] { return std::this_thread::get_id(); })();
      }));
  ASSERT_EQ(ids.size(), 4u);
  for (auto id : ids) EXPECT_NE(id, std::this_thread::get_id());
}

// The scenarios, run in a child by run_child().
TEST(RegistryChild, DISABLED_Scenario) {
  const char* scenario_env = std::getenv("JOBLIB_TEST_SCENARIO");
  ASSERT_NE(scenario_env, nullptr) << "run by run_child() only";
  const std::string scenario = scenario_env;
  const std::string arg = std::getenv("JOBLIB_TEST_ARG") ? std::getenv("JOBLIB_TEST_ARG") : "";
  if (scenario == "survives") {
    // The lists that could not be used were ignored: the shipped backends
    // and defaults work, and fork() works after the registry was built.
    std::vector<std::string> names;
    EXPECT_NO_THROW(names = joblib::available_backends());
    EXPECT_TRUE(fork_works()) << "fork() after the registry was built";
    EXPECT_NO_THROW(expect_runs_on_threads({.n_jobs = 2}));  // the default backend
    EXPECT_NO_THROW(expect_runs_on_threads({.n_jobs = 2, .backend = "threading"}));
    EXPECT_EQ(joblib::detail::default_backend(), "threading");
    for (const auto& n : names_in("JOBLIB_TEST_PRESENT"))
      EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
    for (const auto& n : names_in("JOBLIB_TEST_ABSENT"))
      EXPECT_EQ(std::find(names.begin(), names.end(), n), names.end()) << n;
    EXPECT_TRUE(fork_works()) << "fork() after the threading backend ran";
  } else if (scenario == "default_unavailable") {
    try {
      joblib::Parallel({.n_jobs = 2}).map(twice, std::vector{1});
      ADD_FAILURE() << "the default backend should not be available";
    } catch (const joblib::BackendError& e) {
      std::printf("MESSAGE[%s]END\n", e.what());
    }
    EXPECT_TRUE(fork_works());
  } else if (scenario == "load_library") {
    joblib::register_parallel_backend("child_lib", fs::path(arg));
    expect_runs_on_threads({.n_jobs = 2, .backend = "child_lib"});
  } else if (scenario == "library_error") {
    std::printf("MESSAGE[%s]END\n", load_error("child_lib", arg).c_str());
  } else if (scenario == "unknown_backend") {
    try {
      joblib::Parallel({.n_jobs = 2, .backend = "no_such_backend"}).map(twice, std::vector{1});
      ADD_FAILURE() << "no_such_backend was found";
    } catch (const joblib::BackendError& e) {
      std::printf("MESSAGE[%s]END\n", e.what());
    }
  } else if (scenario == "prefer_processes") {
    std::vector<double> r;
    EXPECT_NO_THROW(r = joblib::Parallel({.n_jobs = 2, .prefer = joblib::Prefer::processes}).map(twice, std::vector{1, 2}));
    EXPECT_EQ(r, (std::vector<double>{2, 4}));
  } else if (scenario == "load_list") {
    try {
      joblib::load_plugins_file(arg);
      std::printf("MESSAGE[(no error)]END\n");
    } catch (const joblib::BackendError& e) {
      std::printf("MESSAGE[%s]END\n", e.what());
    }
  } else {
    FAIL() << "unknown scenario " << scenario;
  }
  std::fflush(stdout);
}

// JOBLIB_PLUGINS names `list`: the child still runs threading and fork(),
// and says once on stderr that it ignores the file, and why.
void expect_list_ignored(const fs::path& list, const std::string& reason, std::map<std::string, std::string> env = {}) {
  env.emplace("JOBLIB_PLUGINS", list.string());
  const Child c = run_child("survives", env);
  ASSERT_TRUE(c.finished) << "the child hung:\n" << c.output;
  EXPECT_EQ(c.status, 0) << c.output;
  const std::string line = "joblib: ignoring plugin list '" + list.string() + "': " + reason;
  EXPECT_TRUE(contains(c.output, line)) << "expected: " << line << "\n" << c.output;
  EXPECT_EQ(count_of(c.output, "joblib: ignoring plugin list '" + list.string() + "'"), 1u) << c.output;
}

TEST(RegistryTest, AMissingListInJoblibPluginsIsReportedAndIgnored) {
  TempDir d;
  const fs::path list = d.path / "extra.toml";
  expect_list_ignored(list, "no such file");
  expect_doc_quotes("plugins.md", "joblib: ignoring plugin list '/tmp/extra.toml': no such file");
  expect_doc_quotes("errors.md", "joblib: ignoring plugin list '/tmp/extra.toml': no such file");
}

TEST(RegistryTest, ADirectoryInJoblibPluginsIsReportedAndIgnored) {
  TempDir d;
  expect_list_ignored(d.path, "is a directory, not a regular file");
}

TEST(RegistryTest, AFifoInJoblibPluginsIsReportedAndIgnoredWithoutBlocking) {
  TempDir d;
  const fs::path fifo = d.path / "plugins.toml";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_list_ignored(fifo, "is a FIFO, not a regular file");
}

TEST(RegistryTest, BadTomlInJoblibPluginsIsReportedAndIgnored) {
  TempDir d;
  const fs::path list = d.path / "bad.toml";
  std::ofstream(list) << "[plugins.x\nlibrary = 3\n";
  expect_list_ignored(list, "Error while parsing table header");
}

TEST(RegistryTest, AListWithABadEntryIsIgnoredWholeAndTheGoodListsAreRead) {
  TempDir d;
  const fs::path bad = d.path / "bad_entry.toml";
  std::ofstream(bad) << "[defaults]\nbackend = \"half\"\n[plugins.half]\nlibrary = \"" << JOBLIB_TEST_MY_BACKEND
                     << "\"\n[plugins.broken]\nserves = [\"threads\"]\n";
  const fs::path good = d.path / "good.toml";
  std::ofstream(good) << "[plugins.from_good_list]\nlibrary = \"" << JOBLIB_TEST_MY_BACKEND << "\"\n";
  const Child c = run_child("survives", {{"JOBLIB_PLUGINS", bad.string() + ":" + good.string()},
                                         {"JOBLIB_TEST_PRESENT", "from_good_list"},
                                         {"JOBLIB_TEST_ABSENT", "half"}});
  ASSERT_TRUE(c.finished) << "the child hung:\n" << c.output;
  EXPECT_EQ(c.status, 0) << c.output;
  EXPECT_TRUE(contains(c.output, "joblib: ignoring plugin list '" + bad.string() +
                                     "': [plugins.broken] has no library = \"...\""))
      << c.output;
}

TEST(RegistryTest, AMissingJoblibPluginsTomlFallsBackToTheInstalledList) {
  TempDir d;
  const fs::path list = d.path / "plugins.toml";
  const Child c = run_child("survives", {{"JOBLIB_PLUGINS_TOML", list.string()}});
  ASSERT_TRUE(c.finished) << "the child hung:\n" << c.output;
  EXPECT_EQ(c.status, 0) << c.output;
  EXPECT_TRUE(contains(c.output, "joblib: ignoring plugin list '" + list.string() + "': no such file")) << c.output;
}

// The path of the libjoblib this process runs.
fs::path loaded_libjoblib() {
  void* h = ::dlopen("libjoblib.so.0", RTLD_LAZY | RTLD_NOLOAD);
  if (!h) return {};
  struct link_map* map = nullptr;
  fs::path p;
  if (::dlinfo(h, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name) p = fs::canonical(map->l_name);
  ::dlclose(h);
  return p;
}

TEST(RegistryTest, WithNoPluginListTheDefaultBackendSaysWhereItLooked) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the child preloads a copy of libjoblib, which cannot come before a sanitizer's runtime";
#endif
  // A copy of libjoblib in a folder with no joblib/plugins.toml beside it.
  TempDir d;
  const fs::path lib = loaded_libjoblib();
  ASSERT_FALSE(lib.empty());
  fs::create_directories(d.path / "lib");
  fs::copy_file(lib, d.path / "lib" / "libjoblib.so.0");
  const Child c = run_child("default_unavailable", {{"LD_PRELOAD", (d.path / "lib" / "libjoblib.so.0").string()}},
                            {"JOBLIB_PLUGINS_TOML"});
  ASSERT_TRUE(c.finished) << "the child hung:\n" << c.output;
  EXPECT_EQ(c.status, 0) << c.output;
  const std::string expected = "the default backend 'threading' is not available: no plugin list was found "
                               "(looked for '" + (d.path / "lib" / "joblib" / "plugins.toml").string() +
                               "'); set JOBLIB_PLUGINS_TOML to the plugins.toml installed with joblib-cpp";
  EXPECT_EQ(child_message(c), expected) << c.output;
  expect_doc_quotes("plugins.md", replace_all(expected, d.path.string(), "/opt/joblib"));
  expect_doc_quotes("errors.md", replace_all(expected, d.path.string(), "/opt/joblib"));
}

bool unsafe_allowed_here() { return std::getenv("JOBLIB_ALLOW_UNSAFE_PLUGINS") != nullptr; }

TEST(RegistryTest, APluginWritableByOthersIsRefused) {
  if (unsafe_allowed_here()) GTEST_SKIP() << "JOBLIB_ALLOW_UNSAFE_PLUGINS is set";
  TempDir d;
  const fs::path p = plugin_copy(d.path, fs::perms(0666));
  const std::string msg = load_error("mine", p);
  const std::string expected =
      "cannot load backend 'mine' from '" + p.string() + "': " + refusal_of(p, "is writable by others (mode 0666)");
  EXPECT_EQ(msg, expected);
  expect_doc_quotes("plugins.md", replace_all(expected, d.path.string(), "/tmp/plugins"));
  expect_doc_quotes("errors.md", replace_all(expected, d.path.string(), "/tmp/plugins"));
}

TEST(RegistryTest, APluginWritableByItsGroupIsRefused) {
  if (unsafe_allowed_here()) GTEST_SKIP() << "JOBLIB_ALLOW_UNSAFE_PLUGINS is set";
  TempDir d;
  const fs::path p = plugin_copy(d.path, fs::perms(0664));
  const std::string msg = load_error("group_writable", p);
  EXPECT_TRUE(contains(msg, "'" + p.string() + "' is writable by its group (mode 0664)")) << msg;
}

TEST(RegistryTest, APluginInAFolderWritableByOthersIsRefusedUnlessTheFolderIsSticky) {
  if (unsafe_allowed_here()) GTEST_SKIP() << "JOBLIB_ALLOW_UNSAFE_PLUGINS is set";
  TempDir d;
  const fs::path p = plugin_copy(d.path, fs::perms(0755));
  fs::permissions(d.path, fs::perms(0777));
  const std::string msg = load_error("in_open_folder", p);
  EXPECT_TRUE(contains(msg, p.string())) << msg;
  EXPECT_TRUE(contains(msg, refusal_of(d.path, "is writable by others (mode 0777)"))) << msg;
  // With the sticky bit (as /tmp), others cannot replace our file there.
  fs::permissions(d.path, fs::perms(01777));
  EXPECT_EQ(load_error("in_sticky_folder", p), "(no error)");
}

TEST(RegistryTest, APluginOwnedByAnotherUserIsRefused) {
  if (unsafe_allowed_here()) GTEST_SKIP() << "JOBLIB_ALLOW_UNSAFE_PLUGINS is set";
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give a file away";
  TempDir d;
  const fs::path p = plugin_copy(d.path, fs::perms(0755));
  ASSERT_EQ(::chown(p.c_str(), 12345, 12345), 0);
  const std::string msg = load_error("given_away", p);
  EXPECT_TRUE(contains(msg, refusal_of(p, "is owned by uid 12345"))) << msg;
}

TEST(RegistryTest, AnUnsafePluginListedInAPluginsTomlFailsWhenUsed) {
  if (unsafe_allowed_here()) GTEST_SKIP() << "JOBLIB_ALLOW_UNSAFE_PLUGINS is set";
  TempDir d;
  const fs::path p = plugin_copy(d.path, fs::perms(0666));
  const fs::path list = d.path / "plugins.toml";
  std::ofstream(list) << "[plugins.unsafe_listed]\nlibrary = \"libmy_backend.so\"\nserves = [\"threads\"]\n";
  joblib::load_plugins_file(list);  // the list itself is safe
  try {
    joblib::Parallel({.n_jobs = 2, .backend = "unsafe_listed"}).map(twice, std::vector{1});
    FAIL() << "an unsafe plugin was loaded";
  } catch (const joblib::BackendError& e) {
    EXPECT_TRUE(contains(e.what(), "cannot load backend 'unsafe_listed' from '" + p.string() + "'")) << e.what();
    EXPECT_TRUE(contains(e.what(), "JOBLIB_ALLOW_UNSAFE_PLUGINS=1")) << e.what();
  }
}

TEST(RegistryTest, JoblibAllowUnsafePluginsLoadsAnUnsafePlugin) {
  TempDir d;
  const fs::path p = plugin_copy(d.path, fs::perms(0666));
  const Child c = run_child("load_library", {{"JOBLIB_ALLOW_UNSAFE_PLUGINS", "1"}, {"JOBLIB_TEST_ARG", p.string()}});
  ASSERT_TRUE(c.finished) << "the child hung:\n" << c.output;
  EXPECT_EQ(c.status, 0) << c.output;
}

TEST(RegistryTest, APluginListWritableByOthersIsIgnoredUnlessAllowed) {
  TempDir d;
  const fs::path list = d.path / "extra.toml";
  std::ofstream(list) << "[plugins.from_unsafe_list]\nlibrary = \"" << JOBLIB_TEST_MY_BACKEND << "\"\n";
  fs::permissions(list, fs::perms(0666));
  const std::string reason = refusal_of(list, "is writable by others (mode 0666)");
  expect_list_ignored(list, reason, {{"JOBLIB_TEST_ABSENT", "from_unsafe_list"}});
  expect_doc_quotes("plugins.md", "joblib: ignoring plugin list '/tmp/extra.toml': " +
                                      replace_all(reason, d.path.string(), "/tmp"));
  // With the opt-out, it is read.
  const Child c = run_child("survives", {{"JOBLIB_PLUGINS", list.string()},
                                         {"JOBLIB_ALLOW_UNSAFE_PLUGINS", "1"},
                                         {"JOBLIB_TEST_PRESENT", "from_unsafe_list"}});
  ASSERT_TRUE(c.finished) << "the child hung:\n" << c.output;
  EXPECT_EQ(c.status, 0) << c.output;
  EXPECT_FALSE(contains(c.output, "joblib: ignoring plugin list")) << c.output;
}

TEST(RegistryTest, LoadPluginsFileRefusesAnUnsafeList) {
  if (unsafe_allowed_here()) GTEST_SKIP() << "JOBLIB_ALLOW_UNSAFE_PLUGINS is set";
  TempDir d;
  const fs::path list = d.path / "extra.toml";
  std::ofstream(list) << "[plugins.from_unsafe_file]\nlibrary = \"" << JOBLIB_TEST_MY_BACKEND << "\"\n";
  fs::permissions(list, fs::perms(0666));
  try {
    joblib::load_plugins_file(list);
    FAIL() << "an unsafe list was read";
  } catch (const joblib::BackendError& e) {
    const std::string expected =
        "cannot read plugin list '" + list.string() + "': " + refusal_of(list, "is writable by others (mode 0666)");
    EXPECT_EQ(std::string(e.what()), expected);
    expect_doc_quotes("errors.md", replace_all(expected, d.path.string(), "/tmp"));
  }
  auto names = joblib::available_backends();
  EXPECT_EQ(std::find(names.begin(), names.end(), "from_unsafe_file"), names.end());
}

TEST(RegistryTest, LoadPluginsFileRefusesAFifoWithoutBlocking) {
  TempDir d;
  const fs::path fifo = d.path / "plugins.toml";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const Child c = run_child("load_list", {{"JOBLIB_TEST_ARG", fifo.string()}});
  ASSERT_TRUE(c.finished) << "the child hung:\n" << c.output;
  EXPECT_EQ(c.status, 0) << c.output;
  const std::string expected = "cannot read plugin list '" + fifo.string() + "': is a FIFO, not a regular file";
  EXPECT_EQ(child_message(c), expected) << c.output;
  expect_doc_quotes("errors.md", replace_all(expected, d.path.string(), "/tmp"));
}

TEST(RegistryTest, AFifoIsNeverLoadedAsAPlugin) {
  TempDir d;
  const fs::path fifo = d.path / "libfifo.so";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const Child c = run_child("library_error", {{"JOBLIB_TEST_ARG", fifo.string()}});
  ASSERT_TRUE(c.finished) << "the child hung:\n" << c.output;
  EXPECT_EQ(c.status, 0) << c.output;
  const std::string expected = "cannot load backend 'child_lib' from '" + fifo.string() +
                               "': is a FIFO, not a regular file";
  EXPECT_EQ(child_message(c), expected) << c.output;
  expect_doc_quotes("errors.md", replace_all(replace_all(expected, fifo.string(), "<path>"), "child_lib", "x"));
}

// ---- every message docs/errors.md quotes for the registry, exactly ---------

std::string invalid_registration(const std::string& name, joblib::BackendFactory factory) {
  try {
    joblib::register_parallel_backend(name, std::move(factory));
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(RegistryDocMessagesTest, BadRegistrationsAreRefused) {
  auto factory = [](const joblib::BackendInit& i) {
    return std::make_unique<joblib_test::FakeBackend>(i, "x", true, true);
  };
  const std::string empty_name = invalid_registration("", factory);
  EXPECT_EQ(empty_name, "register_parallel_backend: name is empty");
  const std::string builtin = invalid_registration("sequential", factory);
  EXPECT_EQ(builtin, "register_parallel_backend: 'sequential' is built in");
  const std::string no_factory = invalid_registration("x", nullptr);
  EXPECT_EQ(no_factory, "register_parallel_backend: factory for 'x' is empty");
  for (const std::string& m : {empty_name, builtin, no_factory}) expect_doc_quotes("errors.md", "`" + m + "`");
  // The path overload checks the name the same way.
  try {
    joblib::register_parallel_backend("", fs::path("/nonexistent/libghost.so"));
    ADD_FAILURE() << "an empty name was registered";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), empty_name);
  }
}

TEST(RegistryDocMessagesTest, PluginsThatCannotBeLoadedAreNamedWithTheReason) {
  const std::string missing = load_error("ghost", "/nonexistent/libghost.so");
  EXPECT_EQ(missing, "cannot load backend 'ghost': plugin library '/nonexistent/libghost.so' does not exist");
  expect_doc_quotes("errors.md", "`" + missing + "`");

  const fs::path not_plugin = kPluginDir / "libtest_not_a_plugin.so";
  const std::string no_abi = load_error("x", not_plugin);
  EXPECT_EQ(no_abi, "cannot load backend 'x' from '" + not_plugin.string() +
                        "': no joblib_plugin_abi symbol (not a joblib-cpp plugin; export the backend with "
                        "JOBLIB_EXPORT_BACKEND)");
  expect_doc_quotes("errors.md", "`" + replace_all(no_abi, not_plugin.string(), "<path>") + "`");

  const fs::path bad_abi = kPluginDir / "libtest_bad_abi.so";
  const std::string abi = load_error("x", bad_abi);
  EXPECT_EQ(abi, "cannot load backend 'x' from '" + bad_abi.string() + "': plugin ABI version " +
                     std::to_string(joblib::plugin_abi_version + 1000) + " does not match this joblib-cpp's " +
                     std::to_string(joblib::plugin_abi_version) + "; rebuild the plugin");
  expect_doc_quotes("errors.md", "`" + replace_all(abi, bad_abi.string(), "<path>") + "`");

  const fs::path no_factory = kPluginDir / "libtest_no_factory.so";
  const std::string factory = load_error("x", no_factory);
  EXPECT_EQ(factory, "cannot load backend 'x' from '" + no_factory.string() +
                         "': no joblib_backend_factory symbol (export the backend with JOBLIB_EXPORT_BACKEND)");
  expect_doc_quotes("errors.md", "`" + replace_all(factory, no_factory.string(), "<path>") + "`");

  // A file the loader refuses: the loader's own words follow.
  TempDir d;
  const fs::path garbage = d.path / "libgarbage.so";
  std::ofstream(garbage) << "not an ELF file";
  fs::permissions(garbage, fs::perms(0644));
  const std::string refused = load_error("garbage", garbage);
  const std::string prefix = "cannot load backend 'garbage' from '" + garbage.string() +
                             "': boost::dll::shared_library::load() failed (dlerror system message: " +
                             garbage.string() + ": file too short)";
  EXPECT_EQ(refused.substr(0, prefix.size()), prefix) << refused;
  expect_doc_quotes("errors.md", "`" + replace_all(prefix, d.path.string(), "/tmp") + ": ...`");
}

TEST(RegistryDocMessagesTest, PluginListsThatCannotBeReadAreNamedWithTheReason) {
  auto list_error = [](const fs::path& file) -> std::string {
    try {
      joblib::load_plugins_file(file);
    } catch (const joblib::BackendError& e) {
      return e.what();
    }
    return "(no error)";
  };
  const std::string missing = list_error("/nonexistent/plugins.toml");
  EXPECT_EQ(missing, "cannot read plugin list '/nonexistent/plugins.toml': no such file");
  expect_doc_quotes("errors.md", "`" + missing + "`");

  TempDir d;
  const fs::path list = d.path / "plugins.toml";
  auto with = [&](const std::string& text) {
    std::ofstream(list, std::ios::trunc) << text;
    return replace_all(list_error(list), list.string(), "<file>");
  };
  const std::string bad_toml = with("[plugins.x\nlibrary = 3\n");
  EXPECT_EQ(bad_toml, "cannot read plugin list '<file>': Error while parsing table header: expected ']', saw '\\n' (line 1)");
  const std::string not_table = with("[plugins]\nx = 3\n");
  EXPECT_EQ(not_table, "plugin list '<file>': [plugins.x] must be a table");
  const std::string no_library = with("[plugins.x]\nserves = [\"threads\"]\n");
  EXPECT_EQ(no_library, "plugin list '<file>': [plugins.x] has no library = \"...\"");
  const std::string hint = with("[plugins.y]\nlibrary = \"liby.so\"\nserves = [\"gpu\"]\n");
  EXPECT_EQ(hint, "plugin list '<file>': [plugins.y] serves unknown hint 'gpu'");
  for (const std::string& m : {bad_toml, not_table, no_library, hint}) expect_doc_quotes("errors.md", "`" + m + "`");
  auto names = joblib::available_backends();
  EXPECT_EQ(std::find(names.begin(), names.end(), "y"), names.end()) << "a refused list left an entry";
}

TEST(RegistryDocMessagesTest, AFactoryThatThrowsIsABackendErrorWithItsMessage) {
  joblib::register_parallel_backend("throws", kPluginDir / "libtest_throwing_factory.so");
  try {
    joblib::Parallel({.n_jobs = 2, .backend = "throws"}).map(twice, std::vector{1});
    ADD_FAILURE() << "no error";
  } catch (const joblib::BackendError& e) {
    EXPECT_STREQ(e.what(), "backend 'throws' failed to start: cannot reach the cluster");
    expect_doc_quotes("errors.md", "`" + std::string(e.what()) + "`");
  }
}

TEST(RegistryDocMessagesTest, AnUnknownBackendListsTheAvailableOnes) {
  // In a fresh process: this one has test backends registered.
  const Child c = run_child("unknown_backend");
  ASSERT_TRUE(c.finished) << "the child hung:\n" << c.output;
  EXPECT_EQ(c.status, 0) << c.output;
  const auto here = joblib::available_backends();
  std::string list;
  std::size_t shipped = 0;
  for (const char* n : {"loky", "mpi", "multiprocessing", "openmp", "sequential", "tbb", "threading"}) {
    if (std::find(here.begin(), here.end(), n) == here.end()) continue;
    list += std::string(list.empty() ? "" : ", ") + "\"" + n + "\"";
    ++shipped;
  }
  const std::string expected = "Invalid backend: 'no_such_backend', expected one of [" + list + "]";
  EXPECT_EQ(child_message(c), expected) << c.output;
  if (shipped == 7) expect_doc_quotes("errors.md", "`" + expected + "`");
}

TEST(RegistryDocMessagesTest, PreferProcessesFallsBackToThreadsWithAWarningWhenLokyIsMissing) {
  // A plugin list with threading only: prefer = processes names loky, which is not there.
  TempDir d;
  const fs::path list = d.path / "plugins.toml";
  const fs::path threading = joblib::detail::plugin_files().front().parent_path() / "libjoblib_threading.so";
  std::ofstream(list) << "[plugins.threading]\nlibrary = \"" << threading.string()
                      << "\"\nserves = [\"threads\", \"sharedmem\"]\n";
  const Child c = run_child("prefer_processes", {{"JOBLIB_PLUGINS_TOML", list.string()}});
  ASSERT_TRUE(c.finished) << "the child hung:\n" << c.output;
  EXPECT_EQ(c.status, 0) << c.output;
  const std::string warning = "UserWarning: joblib backend 'loky' is not available on your system, falling back to threading.";
  EXPECT_EQ(count_of(c.output, warning + "\n"), 1u) << c.output;
  expect_doc_quotes("backends.md", "`" + warning + "`");
}

}  // namespace
