# SPDX-License-Identifier: MIT
# Runs PROGRAM with ARGS ("|"-separated) and checks its exit code is EXPECT and, if given, that
# its stderr contains STDERR_HAS.
string(REPLACE "|" ";" _args "${ARGS}")
execute_process(COMMAND ${PROGRAM} ${_args} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
if(NOT _rc STREQUAL EXPECT)
  message(FATAL_ERROR "exit code ${_rc}, expected ${EXPECT}\nstdout: ${_out}\nstderr: ${_err}")
endif()
if(DEFINED STDERR_HAS AND NOT _err MATCHES "${STDERR_HAS}")
  message(FATAL_ERROR "stderr does not match '${STDERR_HAS}':\n${_err}")
endif()
message(STATUS "exit ${_rc} as expected; stderr: ${_err}")
