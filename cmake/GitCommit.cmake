# indexcache_git_commit(<var> <source_dir> [FILE <path>]): the commit a bench report names.
# -DINDEXCACHE_GIT_COMMIT=... wins; else the first line of FILE when given and present; else
# `git rev-parse --short=12 HEAD` in <source_dir> (+ "-dirty" with uncommitted changes to tracked
# files); else "unknown". The value is taken at configure time; a new commit (HEAD or its branch ref
# moving) or a new FILE re-runs the configure step on the next build, so it does not go stale.
set(INDEXCACHE_GIT_COMMIT "" CACHE STRING "commit named in bench reports (default: found at configure time)")

function(indexcache_git_commit var dir)
  cmake_parse_arguments(A "" "FILE" "" ${ARGN})
  set(commit "${INDEXCACHE_GIT_COMMIT}")
  if(NOT commit AND A_FILE AND EXISTS "${A_FILE}")
    file(STRINGS "${A_FILE}" commit LIMIT_COUNT 1)
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${A_FILE}")
  endif()
  if(NOT commit)
    execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY ${dir}
                    OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    execute_process(COMMAND git status --porcelain --untracked-files=no WORKING_DIRECTORY ${dir}
                    OUTPUT_VARIABLE dirty OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(commit AND dirty)
      set(commit "${commit}-dirty")
    endif()
    execute_process(COMMAND git rev-parse --absolute-git-dir WORKING_DIRECTORY ${dir}
                    OUTPUT_VARIABLE git_dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    execute_process(COMMAND git symbolic-ref -q HEAD WORKING_DIRECTORY ${dir}
                    OUTPUT_VARIABLE ref OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    foreach(f "${git_dir}/HEAD" "${git_dir}/${ref}")
      if(git_dir AND EXISTS "${f}" AND NOT IS_DIRECTORY "${f}")
        set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${f}")
      endif()
    endforeach()
  endif()
  if(NOT commit)
    set(commit "unknown")
  endif()
  set(${var} "${commit}" PARENT_SCOPE)
endfunction()
