#include "engine/collect/rpc_servers.h"

#include "core/error.h"
#include "core/interrupt.h"

#include "ggml-backend.h"
#include "ggml.h"
#ifdef IMX_HAVE_RPC
#include "ggml-rpc.h"
#endif

#include <arpa/inet.h>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace imx::engine {

namespace {

bool split_endpoint(const std::string & e, std::string & host, std::string & port) {
    const size_t colon = e.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == e.size()) {
        return false;
    }
    host = e.substr(0, colon);
    port = e.substr(colon + 1);
    return port.find_first_not_of("0123456789") == std::string::npos;
}

// "" if a TCP connection to the endpoint opens within `seconds`, else why not.
std::string connect_error(const std::string & endpoint, double seconds) {
    std::string host, port;
    if (!split_endpoint(endpoint, host, port)) {
        return "not HOST:PORT";
    }
    addrinfo hints{}, * found = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
        return gai_strerror(rc);
    }
    std::string why = "no address";
    for (addrinfo * a = found; a; a = a->ai_next) {
        const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) {
            why = std::strerror(errno);
            continue;
        }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        int rc = connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            pollfd p{fd, POLLOUT, 0};
            rc = poll(&p, 1, (int) (seconds * 1000));
            if (rc == 0) {
                why = "no answer within " + std::to_string((int) seconds) + " s";
                close(fd);
                continue;
            }
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            rc = err == 0 ? 0 : -1;
            errno = err;
        }
        if (rc == 0) {
            close(fd);
            freeaddrinfo(found);
            return "";
        }
        why = std::strerror(errno);
        close(fd);
    }
    freeaddrinfo(found);
    return why;
}

std::mutex                            g_mutex;
std::vector<std::string>              g_endpoints;
std::function<std::string()>          g_where;

void on_ggml_abort(const char * message) {
    // a server that no longer takes connections is the one that stopped; with several, name each such (asked
    // a few times: a process being killed closes its connections a moment before its listening socket)
    std::string gone;
    for (int attempt = 0; attempt < 10 && gone.empty(); ++attempt) {
        if (attempt > 0) {
            usleep(200 * 1000);
        }
        for (const std::string & e : g_endpoints) {
            if (!connect_error(e, 1).empty()) {
                gone += (gone.empty() ? "" : ", ") + e;
            }
        }
    }
    const std::string where = g_where ? g_where() : "";
    if (gone.empty()) {  // every server still answers: not theirs to blame
        std::fprintf(stderr, "imx: error: %s%s%s", message, where.empty() ? "" : " ", where.c_str());
    } else {
        std::fprintf(stderr, "imx: error: rpc-server %s stopped answering%s%s (ggml: %s)", gone.c_str(),
                     where.empty() ? "" : " ", where.c_str(), message);
    }
    remove_temporary_files();
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
    _exit(2);
}

}  // namespace

std::vector<std::string> parse_rpc_servers(const std::string & list) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= list.size()) {
        const size_t comma = std::min(list.find(',', start), list.size());
        const std::string e = list.substr(start, comma - start);
        std::string host, port;
        if (!split_endpoint(e, host, port)) {
            throw Error("--rpc '" + list + "': '" + e + "' is not HOST:PORT");
        }
        out.push_back(e);
        start = comma + 1;
    }
    return out;
}

void check_rpc_servers(const std::vector<std::string> & endpoints, double seconds) {
    for (const std::string & e : endpoints) {
        if (const std::string why = connect_error(e, seconds); !why.empty()) {
            throw Error("rpc-server " + e + ": cannot connect (" + why + ")");
        }
    }
}

void add_rpc_servers(const std::vector<std::string> & endpoints) {
#ifdef IMX_HAVE_RPC
    for (const std::string & e : endpoints) {
        ggml_backend_reg_t reg = ggml_backend_rpc_add_server(e.c_str());
        if (!reg) {
            throw Error("rpc-server " + e + ": offers no device");
        }
        ggml_backend_register(reg);
    }
#else
    if (!endpoints.empty()) {
        throw Error("--rpc: this imx was built without llama.cpp's RPC backend (GGML_RPC)");
    }
#endif
}

RpcFailureReport::RpcFailureReport(std::vector<std::string> endpoints, std::function<std::string()> where) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_endpoints = std::move(endpoints);
    g_where = std::move(where);
    ggml_set_abort_callback(on_ggml_abort);
}

RpcFailureReport::~RpcFailureReport() {
    std::lock_guard<std::mutex> lock(g_mutex);
    ggml_set_abort_callback(nullptr);
    g_endpoints.clear();
    g_where = nullptr;
}

}  // namespace imx::engine
