// imx collect --rpc HOST:PORT,...: llama.cpp's RPC backend, the ecosystem's way to spread one model over several
// machines (rpc-server on each; the layers placed there by -ngl as llama.cpp does).
//
// ggml's RPC client aborts the process when a server cannot be reached or stops answering. imx checks every
// server before any work (a TCP connection, bounded in time) and, while a run uses them, turns ggml's abort into
// one line that names the server that stopped answering and what the run keeps, exit code 2.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace imx::engine {

// "host:port,host:port" → endpoints; throws imx::Error on a malformed one.
std::vector<std::string> parse_rpc_servers(const std::string & list);

// Throws imx::Error naming the first endpoint that does not accept a connection within `seconds`.
void check_rpc_servers(const std::vector<std::string> & endpoints, double seconds = 5);

// Registers the servers' devices with ggml, as llama.cpp's --rpc does; load_model then places layers on them.
void add_rpc_servers(const std::vector<std::string> & endpoints);

// While alive: a ggml abort (a server gone) prints "imx: error: rpc-server HOST:PORT stopped answering (<where>)"
// with <where> from the callback, removes temporary files and exits with 2.
class RpcFailureReport {
public:
    RpcFailureReport(std::vector<std::string> endpoints, std::function<std::string()> where);
    ~RpcFailureReport();
    RpcFailureReport(const RpcFailureReport &) = delete;
    RpcFailureReport & operator=(const RpcFailureReport &) = delete;
};

}  // namespace imx::engine
