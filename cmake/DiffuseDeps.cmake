# SPDX-License-Identifier: MIT
# Dependencies, all from Debian's packages (scripts/install-deps.sh installs them).
find_package(xtensor REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(Eigen3 3.3 REQUIRED NO_MODULE)

# stb ships as single headers; we compile the implementation once in src/io.
find_path(STB_INCLUDE_DIR stb_image_write.h PATH_SUFFIXES stb REQUIRED)

# CLI11 (header-only) for the `diffuse` program only; the library does not use it.
if(DIFFUSE_BUILD_CLI)
  find_package(CLI11 CONFIG REQUIRED)
endif()
