#!/bin/bash
# A competing process on core 0: busy for $1 s, quiet for $2 s, over and over.
while true; do timeout "$1" taskset -c 0 sha256sum /dev/zero >/dev/null; sleep "$2"; done
