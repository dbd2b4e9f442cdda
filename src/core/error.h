// Errors that reach the user: one line that names the file, tensor or chunk and the problem.
#pragma once

#include <stdexcept>
#include <string>

namespace imx {

// Thrown for bad input or failed I/O. The CLI prints what() on one line and exits with code 2.
class Error : public std::runtime_error {
public:
    explicit Error(const std::string & message) : std::runtime_error(message) {}
};

}  // namespace imx
