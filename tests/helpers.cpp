#include "helpers.h"

#include "core/format/atomic_file.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <thread>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace imx::test {

std::string shared(const std::string & rel) { return std::string(IMX_SHARED_DIR) + "/" + rel; }
std::string upstream(const std::string & tool) { return std::string(IMX_UPSTREAM_BIN_DIR) + "/" + tool; }
std::string imx_bin() { return IMX_BIN; }

std::string work_dir(const std::string & sub) {
    const fs::path p = fs::path(IMX_TEST_WORK_DIR) / sub;
    fs::create_directories(p);
    return p.string();
}

std::string fresh_dir(const std::string & sub) {
    const std::string d = work_dir(sub);
    for (const auto & e : fs::directory_iterator(d)) {
        fs::remove_all(e.path());
    }
    return d;
}

RunResult run(const std::string & command) {
    RunResult r{-1, ""};
    FILE * p = popen((command + " 2>&1").c_str(), "r");
    if (!p) {
        return r;
    }
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) {
        r.output.append(buf.data(), n);
    }
    const int status = pclose(p);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

std::string upstream_imatrix(const std::string & model, const std::string & extra, const std::string & ext) {
    const std::string key = std::to_string(std::hash<std::string>{}(model + "|" + extra));
    const std::string dir = work_dir("upstream-imatrix");
    const std::string out = dir + "/" + fs::path(model).stem().string() + "-" + key + ext;
    if (!file_exists(out)) {
        // a private temporary name: tests running in parallel may make the same file at once
        const std::string part = out + ".part" + std::to_string(getpid());
        const std::string cmd = upstream("llama-imatrix") + " -m " + shared("models/" + model) + " -f " +
                                shared("data/calibration.txt") + " -o " + part + " -c 512 -t 2 " + extra;
        const RunResult r = run(cmd);
        if (r.exit_code != 0) {
            ADD_FAILURE() << cmd << "\n" << r.output.substr(r.output.size() > 3000 ? r.output.size() - 3000 : 0);
            return out;
        }
        fs::rename(part, out);
    }
    return out;
}

Background start(const std::string & command, const std::string & log) {
    const pid_t pid = fork();
    if (pid == 0) {
        const std::string line = "exec " + command + " >" + log + " 2>&1";
        execl("/bin/sh", "sh", "-c", line.c_str(), (char *) nullptr);
        _exit(127);
    }
    return {pid, log};
}

std::string wait_for_file(const std::string & prefix, bool exact, int seconds) {
    const fs::path p(prefix);
    const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
    const std::string start = p.filename().string();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
        std::error_code ec;
        for (const auto & e : fs::directory_iterator(dir, ec)) {
            const std::string name = e.path().filename().string();
            if (exact ? name == start : name.rfind(start, 0) == 0) {
                return e.path().string();
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return "";
}

RunResult finish(const Background & b) {
    int status = 0;
    waitpid(b.pid, &status, 0);
    RunResult r{WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1, ""};
    std::error_code ec;
    if (fs::exists(b.log, ec)) {
        const auto bytes = imx::read_file(b.log);
        r.output.assign(bytes.begin(), bytes.end());
    }
    return r;
}

bool kill_after_checkpoint(const std::string & command, const std::string & checkpoint) {
    const Background b = start(command, "/dev/null");
    const bool appeared = !wait_for_file(checkpoint, true).empty();
    ::kill(b.pid, SIGKILL);
    finish(b);
    return appeared;
}

RunResult run_perplexity(const std::string & args) {
    RunResult r{};
    for (int attempt = 0; attempt < 3; ++attempt) {
        r = run(upstream("llama-perplexity") + " " + args);
        if (r.exit_code != 0 || r.output.find("Final estimate: PPL = ") != std::string::npos) {
            break;
        }
    }
    return r;
}

std::vector<uint8_t> bytes_of(const std::string & path) { return imx::read_file(path); }
bool file_exists(const std::string & path) { return fs::exists(path); }

std::vector<std::string> file_names(const std::string & dir) {
    std::vector<std::string> names;
    for (const auto & e : std::filesystem::directory_iterator(dir)) {
        names.push_back(e.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
}

std::string tail(const std::string & output) { return output.substr(output.size() > 2000 ? output.size() - 2000 : 0); }

}  // namespace imx::test
