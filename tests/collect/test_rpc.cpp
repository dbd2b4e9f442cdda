// imx collect --rpc through real rpc-server processes on 127.0.0.1 (started and stopped here, bounded in time):
// the layers live on two servers, the sums equal a local run's, only per-column sums come back; a server that
// is not there fails before any work; one that dies mid-run ends the run with one line naming it, the
// checkpoint kept, and --resume finishes once it is back.
#include "core/format/imatrix_file.h"
#include "helpers.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <chrono>
#include <csignal>
#include <netinet/in.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

using namespace imx;
using namespace imx::test;

namespace {


int free_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
    close(fd);
    return ntohs(a.sin_port);
}

bool accepts(int port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t) port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0;
    close(fd);
    return ok;
}

// An rpc-server on 127.0.0.1; stopped when this goes out of scope.
struct RpcServer {
    int        port = 0;
    Background process{-1, ""};

    explicit RpcServer(const std::string & dir, int on_port = 0) {
        port = on_port ? on_port : free_port();
        process = start(upstream("ggml-rpc-server") + " -H 127.0.0.1 -p " + std::to_string(port) + " -t 1",
                        dir + "/rpc-" + std::to_string(port) + ".log");
        for (int i = 0; i < 200 && !accepts(port); ++i) {  // up to 20 s
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    }
    void kill() {
        if (process.pid > 0) {
            ::kill(process.pid, SIGKILL);
            finish(process);
            process.pid = -1;
        }
    }
    ~RpcServer() { kill(); }
    std::string endpoint() const { return "127.0.0.1:" + std::to_string(port); }
};

// outputs named relative to `dir` (-o NAME): the command has no "cd", so it can run in the background too
std::string collect(const std::string & dir, const std::string & args) {
    std::string a = args;
    const size_t o = a.find("-o ");
    if (o != std::string::npos) {
        a.insert(o + 3, dir + "/");
    }
    return "timeout 300 " + imx_bin() + " collect -m " + shared("models/qwen3moe-tiny.gguf") + " -f " +
           shared("data/calibration.txt") + " -c 256 -t 2 " + a;
}

nlohmann::json json_of(const RunResult & r) {
    const size_t at = r.output.find("{\n");
    return at == std::string::npos ? nlohmann::json{} : nlohmann::json::parse(r.output.substr(at), nullptr, false);
}

void expect_same_sums(const Imatrix & a, const Imatrix & b, double tolerance) {
    ASSERT_EQ(a.tensors.size(), b.tensors.size());
    for (const auto & [name, ta] : a.tensors) {
        const TensorStats & tb = b.tensors.at(name);
        EXPECT_EQ(ta.counts, tb.counts) << name;
        ASSERT_EQ(ta.sums.size(), tb.sums.size()) << name;
        for (size_t i = 0; i < ta.sums.size(); ++i) {
            ASSERT_NEAR(ta.sums[i], tb.sums[i], tolerance * std::max(1.0, std::fabs(tb.sums[i]))) << name << " " << i;
        }
    }
}

}  // namespace

TEST(Rpc, TwoServersOnLoopbackGiveTheLocalSums) {
    const std::string dir = fresh_dir("rpc");
    RpcServer a(dir), b(dir);
    ASSERT_TRUE(accepts(a.port) && accepts(b.port)) << "rpc-server did not start";
    RunResult local = run(collect(dir, "--chunks 3 -o local.gguf"));
    ASSERT_EQ(local.exit_code, 0) << tail(local.output);
    RunResult r = run(collect(dir, "--chunks 3 -ngl 99 --rpc " + a.endpoint() + "," + b.endpoint() +
                                       " -o rpc.gguf --json"));
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    // device sums are float sums of the device's float activations: agreement within float accumulation
    expect_same_sums(load_imatrix(dir + "/rpc.gguf"), load_imatrix(dir + "/local.gguf"), 1e-4);
    const nlohmann::json j = json_of(r);
    EXPECT_GT(j["device_input_bytes"].get<uint64_t>(), 0u) << "the layers were not on the servers";
    EXPECT_LT(j["read_back_bytes"].get<uint64_t>() * 20, j["device_input_bytes"].get<uint64_t>())
        << "more than sums came back";
    EXPECT_NE(r.output.find("device traffic:"), std::string::npos);

    // covariance needs every activation here: refused with the reason
    r = run(collect(dir, "--chunks 1 --rpc " + a.endpoint() + " --covariance -o cov.gguf"));
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("every activation would cross the network"), std::string::npos) << r.output;
}

TEST(Rpc, ServerNotThereFailsBeforeAnyWork) {
    const std::string dir = fresh_dir("rpc-absent");
    const int port = free_port();
    const auto t0 = std::chrono::steady_clock::now();
    const RunResult r = run(collect(dir, "--rpc 127.0.0.1:" + std::to_string(port) + " -o x.gguf"));
    EXPECT_EQ(r.exit_code, 2) << tail(r.output);
    EXPECT_NE(r.output.find("rpc-server 127.0.0.1:" + std::to_string(port) + ": cannot connect"), std::string::npos)
        << r.output;
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
    EXPECT_FALSE(file_exists(dir + "/x.gguf"));
    const RunResult bad = run(collect(dir, "--rpc localhost -o x.gguf"));
    EXPECT_EQ(bad.exit_code, 2);
    EXPECT_NE(bad.output.find("is not HOST:PORT"), std::string::npos) << bad.output;
}

TEST(Rpc, ServerDyingMidRunKeepsTheCheckpointAndResumeFinishes) {
    const std::string dir = fresh_dir("rpc-dies");
    RpcServer a(dir), b(dir);
    ASSERT_TRUE(accepts(a.port) && accepts(b.port));
    const std::string args = "--chunks 40 -ngl 99 --save-every 1 -o out.gguf --rpc " + a.endpoint() + "," + b.endpoint();
    const Background run_ = start(collect(dir, args), dir + "/run.log");
    ASSERT_FALSE(wait_for_file(dir + "/out.gguf.ckpt", true).empty()) << "no checkpoint appeared";
    b.kill();
    const RunResult died = finish(run_);
    EXPECT_EQ(died.exit_code, 2) << tail(died.output);
    EXPECT_NE(died.output.find("rpc-server " + b.endpoint() + " stopped answering at chunk "), std::string::npos)
        << tail(died.output);
    EXPECT_NE(died.output.find("--resume continues"), std::string::npos) << tail(died.output);
    EXPECT_TRUE(file_exists(dir + "/out.gguf.ckpt"));
    EXPECT_FALSE(file_exists(dir + "/out.gguf"));

    RpcServer back(dir, b.port);  // the same server, back on its port
    ASSERT_TRUE(accepts(back.port));
    const RunResult resumed = run(collect(dir, args + " --resume"));
    ASSERT_EQ(resumed.exit_code, 0) << tail(resumed.output);
    EXPECT_NE(resumed.output.find("resumed after chunk"), std::string::npos);
    const RunResult local = run(collect(dir, "--chunks 40 -o local.gguf"));
    ASSERT_EQ(local.exit_code, 0);
    expect_same_sums(load_imatrix(dir + "/out.gguf"), load_imatrix(dir + "/local.gguf"), 1e-4);
}
