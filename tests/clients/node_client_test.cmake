# Compiles clients/node (src and tests) with the pinned TypeScript that clients_node_npm_ci put in
# WORK_DIR, then runs the compiled tests with `node --test` against the daemon in env
# LANEGUARD_BIN. Everything happens in WORK_DIR (the build tree), never in the source tree.
#   cmake -DSOURCE_DIR=<clients/node> -DWORK_DIR=<build dir with node_modules> -P node_client_test.cmake
foreach(var SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "node_client_test.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT EXISTS "${WORK_DIR}/node_modules/.bin/tsc")
  message(FATAL_ERROR "no ${WORK_DIR}/node_modules/.bin/tsc: run the clients_node_npm_ci test first")
endif()

# A fresh copy each run, so a file deleted from the source does not linger in the build tree.
file(REMOVE_RECURSE "${WORK_DIR}/src" "${WORK_DIR}/test" "${WORK_DIR}/dist")
file(COPY "${SOURCE_DIR}/src" "${SOURCE_DIR}/test" DESTINATION "${WORK_DIR}")
file(COPY "${SOURCE_DIR}/tsconfig.json" "${SOURCE_DIR}/package.json" DESTINATION "${WORK_DIR}")

execute_process(COMMAND "${WORK_DIR}/node_modules/.bin/tsc" -p "${WORK_DIR}"
  WORKING_DIRECTORY "${WORK_DIR}" RESULT_VARIABLE tsc_result)
if(NOT tsc_result EQUAL 0)
  message(FATAL_ERROR "tsc failed (${tsc_result})")
endif()

# The test files by name: a directory argument would also run the helpers beside them.
file(GLOB test_files "${WORK_DIR}/dist/test/*.test.js")
if(NOT test_files)
  message(FATAL_ERROR "no compiled tests in ${WORK_DIR}/dist/test")
endif()
execute_process(COMMAND node --test ${test_files}
  WORKING_DIRECTORY "${WORK_DIR}" RESULT_VARIABLE test_result)
if(NOT test_result EQUAL 0)
  message(FATAL_ERROR "node --test failed (${test_result})")
endif()
