# Included by llama.cpp's own project() (CMAKE_PROJECT_llama.cpp_INCLUDE, see the Makefile):
# llama-cpp-python forces LLAMA_BUILD_COMMON=ON, but its Python code loads only libllama,
# libggml* and (for images) libmtmd. Skipping libllama-common also skips cpp-httplib,
# nlohmann-json-heavy chat/arg parsing and the rest of common/: a large share of the compile.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama: build common utils library" FORCE)
