#!/bin/sh
# ensure-package.sh CHECK PACKAGE [WHY]
# Succeeds when the shell test CHECK passes; otherwise installs the Debian PACKAGE with
# apt-get when running as root, or says exactly what to run and fails.
set -eu
check=$1
package=$2
why=${3:-}
if sh -c "$check" >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $package with apt-get${why:+ ($why)}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package"
    exit 0
fi
echo "$package is missing${why:+ ($why)}: run 'sudo apt-get install $package', then this command again." >&2
exit 1
