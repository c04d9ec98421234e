#!/bin/bash
# Container health check for ringcached, with no curl or wget in the image: bash's /dev/tcp sends
# one HTTP/1.0 GET to this node and succeeds only on a 200 answer.
#
#   ringcache-healthcheck [PATH]    PATH: /health/live (default) or /health/ready
#
# The port is RINGCACHE_HTTP_PORT (as ringcached reads it) or 7381; the node must listen on
# 127.0.0.1, which a container binding 0.0.0.0 does.
set -euo pipefail
path="${1:-/health/live}"
exec 3<>"/dev/tcp/127.0.0.1/${RINGCACHE_HTTP_PORT:-7381}"
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$path" >&3
IFS= read -r -t 2 status <&3
[[ "$status" =~ ^HTTP/1\.[01]\ 200 ]]
