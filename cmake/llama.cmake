# Locates (and if needed builds) llama.cpp, then offers it as imported targets imx::llama and imx::ggml.
#
# Default: scripts/llama.sh fetches the pinned commit from npm and builds static libraries into a cache outside
# the source tree (~/.cache/imx), reused by every later configure. Overrides:
#   -DIMX_LLAMA_SOURCE=/path/to/llama.cpp   build a checkout of yours instead (same API expected; your risk)
#   -DIMX_LLAMA_BUILD_DIR=/path/to/build    use an existing static build of llama.cpp as it is
#   -DIMX_CUDA=ON                           build ggml's CUDA backend too (separate cache)

# scripts/llama.sh runs at every configure (instantly when its cache is complete), so that a cache made before a
# tool was added gets it; only a build directory given by the user is taken as it is.
if(NOT IMX_LLAMA_BUILD_DIR OR IMX_LLAMA_BUILD_DIR_FROM_SCRIPT)
    set(_args)
    if(IMX_CUDA)
        list(APPEND _args --cuda)
    endif()
    if(IMX_LLAMA_SOURCE)
        list(APPEND _args --source ${IMX_LLAMA_SOURCE})
    endif()
    message(STATUS "imx: preparing llama.cpp with scripts/llama.sh ${_args} (cold build: several minutes)")
    execute_process(COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/scripts/llama.sh ${_args}
                    OUTPUT_VARIABLE _out RESULT_VARIABLE _rc OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(NOT _rc EQUAL 0)
        message(FATAL_ERROR "imx: scripts/llama.sh failed (${_rc}); see the messages above")
    endif()
    string(REGEX REPLACE ".*\n" "" _dir "${_out}")
    set(IMX_LLAMA_BUILD_DIR ${_dir} CACHE PATH "llama.cpp build directory" FORCE)
    set(IMX_LLAMA_BUILD_DIR_FROM_SCRIPT ON CACHE INTERNAL "")
endif()

if(NOT EXISTS ${IMX_LLAMA_BUILD_DIR}/CMakeCache.txt)
    message(FATAL_ERROR "imx: ${IMX_LLAMA_BUILD_DIR} is not a llama.cpp build directory")
endif()
# The source tree that build came from (its CMakeCache knows).
load_cache(${IMX_LLAMA_BUILD_DIR} READ_WITH_PREFIX _llama_ CMAKE_HOME_DIRECTORY GGML_CUDA GGML_RPC GGML_OPENMP
           NCCL_LIBRARY)
set(IMX_LLAMA_SOURCE_DIR ${_llama_CMAKE_HOME_DIRECTORY})
# What `imx --version` names: the llama.cpp commit and the ggml backends built in.
execute_process(COMMAND git -C ${IMX_LLAMA_SOURCE_DIR} rev-parse HEAD OUTPUT_VARIABLE IMX_LLAMA_COMMIT
                OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT IMX_LLAMA_COMMIT)
    set(IMX_LLAMA_COMMIT unknown)
endif()
set(IMX_BACKENDS CPU)
if(_llama_GGML_CUDA)
    string(APPEND IMX_BACKENDS " CUDA")
endif()
if(_llama_GGML_RPC)
    string(APPEND IMX_BACKENDS " RPC")
endif()
message(STATUS "imx: llama.cpp source ${IMX_LLAMA_SOURCE_DIR}, build ${IMX_LLAMA_BUILD_DIR}")

set(_b ${IMX_LLAMA_BUILD_DIR})
foreach(_lib ${_b}/src/libllama.a ${_b}/ggml/src/libggml.a ${_b}/ggml/src/libggml-base.a
             ${_b}/ggml/src/libggml-cpu.a)
    if(NOT EXISTS ${_lib})
        message(FATAL_ERROR "imx: ${_lib} is missing: llama.cpp must be built static (BUILD_SHARED_LIBS=OFF)")
    endif()
endforeach()

find_package(Threads REQUIRED)
add_library(imx_ggml INTERFACE)
target_include_directories(imx_ggml INTERFACE ${IMX_LLAMA_SOURCE_DIR}/ggml/include)
set(_ggml_libs ${_b}/ggml/src/libggml.a ${_b}/ggml/src/libggml-cpu.a)
if(_llama_GGML_CUDA)
    find_package(CUDAToolkit REQUIRED)
    list(APPEND _ggml_libs ${_b}/ggml/src/ggml-cuda/libggml-cuda.a)
    set(_cuda_libs CUDA::cudart CUDA::cublas CUDA::cublasLt CUDA::cuda_driver)
    if(_llama_NCCL_LIBRARY)  # ggml-cuda uses NCCL where its build found it
        list(APPEND _cuda_libs ${_llama_NCCL_LIBRARY})
    endif()
    target_compile_definitions(imx_ggml INTERFACE IMX_HAVE_CUDA=1)
endif()
if(_llama_GGML_RPC)  # collect --rpc: layers on rpc-server processes of other machines
    list(APPEND _ggml_libs ${_b}/ggml/src/ggml-rpc/libggml-rpc.a)
    target_compile_definitions(imx_ggml INTERFACE IMX_HAVE_RPC=1)
endif()
list(APPEND _ggml_libs ${_b}/ggml/src/libggml-base.a)
# static archives reference each other: let the linker revisit them
# (shared CUDA libraries after the archives that need them, or an as-needed linker drops them)
target_link_libraries(imx_ggml INTERFACE "$<LINK_GROUP:RESCAN,${_ggml_libs}>" ${_cuda_libs} Threads::Threads
                                         ${CMAKE_DL_LIBS} m)
if(_llama_GGML_OPENMP)
    find_package(OpenMP REQUIRED)
    target_link_libraries(imx_ggml INTERFACE OpenMP::OpenMP_CXX)
endif()

add_library(imx_llama INTERFACE)
target_include_directories(imx_llama INTERFACE ${IMX_LLAMA_SOURCE_DIR}/include)
target_link_libraries(imx_llama INTERFACE ${_b}/src/libllama.a imx_ggml)
add_library(imx::llama ALIAS imx_llama)
add_library(imx::ggml ALIAS imx_ggml)

# Upstream's tools: the reference in tests and benchmarks. Copied next to our binary so both run side by side.
set(IMX_UPSTREAM_BIN_DIR ${CMAKE_BINARY_DIR}/upstream)
file(MAKE_DIRECTORY ${IMX_UPSTREAM_BIN_DIR})
foreach(_tool llama-imatrix llama-quantize llama-perplexity llama-gguf-split ggml-rpc-server)
    if(EXISTS ${_b}/bin/${_tool})
        file(COPY ${_b}/bin/${_tool} DESTINATION ${IMX_UPSTREAM_BIN_DIR})
    else()
        message(WARNING "imx: upstream ${_tool} not found in ${_b}/bin; tests that compare with it will fail")
    endif()
endforeach()
