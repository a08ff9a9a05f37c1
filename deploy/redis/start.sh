#!/bin/sh
# Starts Redis the way tiendo needs it: append-only, and after a crash the AOF is repaired by
# redis-check-aof before Redis loads it, never by Redis itself (aof-load-truncated no).
# Redis 7.0's own repair keeps the MULTI of a transaction torn by the crash; the next
# transaction written after it completes it at a later start, and half of one of tiendo's
# batch scripts is applied again without its offset: counts no longer exact.
# redis-check-aof cuts before the MULTI.
#
# Usage: start.sh DATA_DIR COMMAND... (COMMAND runs redis-server; its arguments may follow)
set -eu
dir=$1
shift
manifest="$dir/appendonlydir/appendonly.aof.manifest"
if [ -f "$manifest" ]; then
  echo y | redis-check-aof --fix "$manifest"
fi
exec "$@" --dir "$dir" --appendonly yes --appendfsync everysec --aof-load-truncated no
