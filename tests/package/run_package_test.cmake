# Installs joblib-cpp into a temporary prefix, then builds a consumer program
# and the custom backend example (examples/custom_backend) the way a user
# would, with find_package(joblib CONFIG): once against the build tree, once
# against the install prefix. Runs the consumer each time.
#   cmake -DJOBLIB_SOURCE_DIR=... -DJOBLIB_BINARY_DIR=... -DWORK_DIR=... -DGENERATOR=Ninja -P run_package_test.cmake
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

# With -DCONSUMER_CXX=<compiler>, only the install is consumed, built with
# that compiler (the library itself was built with the project's compiler),
# together with the docs' quickstart and structs examples.
file(REMOVE_RECURSE ${WORK_DIR})
run(${CMAKE_COMMAND} --install ${JOBLIB_BINARY_DIR} --prefix ${WORK_DIR}/prefix)

set(modes build_tree install_prefix)
set(compiler_args)
if(CONSUMER_CXX)
  set(modes install_prefix)
  set(compiler_args -DCMAKE_CXX_COMPILER=${CONSUMER_CXX} -DJOBLIB_DOC_EXAMPLES_DIR=${JOBLIB_SOURCE_DIR}/docs/examples)
endif()

foreach(mode ${modes})
  if(mode STREQUAL "build_tree")
    set(prefix ${JOBLIB_BINARY_DIR})
  else()
    set(prefix ${WORK_DIR}/prefix)
  endif()
  set(dir ${WORK_DIR}/${mode})
  run(${CMAKE_COMMAND} -S ${JOBLIB_SOURCE_DIR}/examples/custom_backend -B ${dir}/custom -G ${GENERATOR}
      -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release ${compiler_args})
  run(${CMAKE_COMMAND} --build ${dir}/custom)
  run(${CMAKE_COMMAND} -S ${JOBLIB_SOURCE_DIR}/tests/package/consumer -B ${dir}/consumer -G ${GENERATOR}
      -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release ${compiler_args})
  run(${CMAKE_COMMAND} --build ${dir}/consumer)
  # The custom backend is reachable both by path and through a plugins.toml entry.
  file(WRITE ${dir}/extra_plugins.toml
       "[plugins.mine_toml]\nlibrary = \"${dir}/custom/libmy_backend.so\"\nserves = [\"threads\", \"sharedmem\"]\n")
  run(${CMAKE_COMMAND} -E env JOBLIB_PLUGINS=${dir}/extra_plugins.toml
      ${dir}/consumer/consumer ${dir}/custom/libmy_backend.so)
  if(CONSUMER_CXX)
    run(${dir}/consumer/doc_quickstart)
    run(${dir}/consumer/doc_structs)
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
