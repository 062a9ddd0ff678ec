# SPDX-License-Identifier: MIT
# Strings from files reach the terminal escaped: copies of MODEL (in WORK) whose folder name and
# scheduler _class_name carry terminal escape sequences (ESC [2J clears the screen, ESC ]0;...BEL
# retitles the window), then `PROGRAM info` on each. Checks the exit code, that the output shows
# the sequence escaped (\x1b...), and that no ESC or BEL byte is printed.
string(ASCII 27 _esc)
string(ASCII 7 _bel)
file(REMOVE_RECURSE "${WORK}")

function(check what rc out err expect_rc stream pattern)
  if(NOT rc STREQUAL expect_rc)
    message(FATAL_ERROR "${what}: exit code ${rc}, expected ${expect_rc}\nstdout: ${out}\nstderr: ${err}")
  endif()
  if(stream STREQUAL "stdout")
    set(_text "${out}")
  else()
    set(_text "${err}")
  endif()
  string(FIND "${_text}" "${pattern}" _at)
  if(_at EQUAL -1)
    message(FATAL_ERROR "${what}: ${stream} does not contain '${pattern}':\n${_text}")
  endif()
  foreach(_c IN ITEMS "${_esc}" "${_bel}")
    string(FIND "${out}${err}" "${_c}" _raw)
    if(NOT _raw EQUAL -1)
      message(FATAL_ERROR "${what}: a raw control character reached the output")
    endif()
  endforeach()
  message(STATUS "${what}: exit ${rc} as expected, ${stream} shows '${pattern}'")
endfunction()

# 1. The folder name (printed by `info` as the model's name and path).
set(_dir "${WORK}/evil${_esc}[2Jname")
file(COPY "${MODEL}/" DESTINATION "${_dir}")
execute_process(COMMAND ${PROGRAM} info "${_dir}" RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
check("folder name" "${_rc}" "${_out}" "${_err}" 0 stdout "model         evil\\x1b[2Jname (")

# 2. A config string quoted in an error message: an unknown scheduler class.
set(_dir2 "${WORK}/bad-scheduler")
file(COPY "${MODEL}/" DESTINATION "${_dir2}")
file(READ "${_dir2}/scheduler_config.json" _json)
string(REGEX REPLACE "\"_class_name\": \"[A-Za-z]+\"" "\"_class_name\": \"\\\\u001b]0;pwned\\\\u0007Bogus\"" _json "${_json}")
file(WRITE "${_dir2}/scheduler_config.json" "${_json}")
execute_process(COMMAND ${PROGRAM} info "${_dir2}" RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
check("scheduler _class_name" "${_rc}" "${_out}" "${_err}" 1 stderr "\\x1b]0;pwned\\x07Bogus")
