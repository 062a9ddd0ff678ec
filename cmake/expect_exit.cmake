# SPDX-License-Identifier: MIT
# Test driver (cmake -P): runs PROGRAM with ARGS ("|"-separated) and checks that it exits with
# EXPECT (default 0) and, when given, that its stdout matches the regex STDOUT_HAS and its stderr
# matches STDERR_HAS, and, with NO_FILE, that the program left no file at that path (removed
# before the run). CTest's PASS_REGULAR_EXPRESSION ignores the exit code and WILL_FAIL passes
# any failure; this checks both. diffuse_add_run_test (cmake/DiffuseTesting.cmake) registers it.
if(NOT DEFINED PROGRAM)
  message(FATAL_ERROR "expect_exit.cmake: PROGRAM is not set")
endif()
if(NOT DEFINED EXPECT)
  set(EXPECT 0)
endif()
string(REPLACE "|" ";" _args "${ARGS}")
if(DEFINED NO_FILE)
  file(REMOVE "${NO_FILE}")
endif()
execute_process(COMMAND ${PROGRAM} ${_args} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
# What the program printed always goes to the log (ctest --output-on-failure shows it).
message(STATUS "exit ${_rc}\n-- stdout:\n${_out}\n-- stderr:\n${_err}")
if(NOT _rc STREQUAL EXPECT)
  message(FATAL_ERROR "exit code ${_rc}, expected ${EXPECT}")
endif()
if(DEFINED STDOUT_HAS AND NOT _out MATCHES "${STDOUT_HAS}")
  message(FATAL_ERROR "stdout does not match '${STDOUT_HAS}'")
endif()
if(DEFINED STDERR_HAS AND NOT _err MATCHES "${STDERR_HAS}")
  message(FATAL_ERROR "stderr does not match '${STDERR_HAS}'")
endif()
if(DEFINED NO_FILE AND EXISTS "${NO_FILE}")
  message(FATAL_ERROR "${NO_FILE} was written")
endif()
message(STATUS "exit ${_rc} and output as expected")
