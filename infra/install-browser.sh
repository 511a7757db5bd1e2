#!/usr/bin/env bash
# Debian's Chromium for the dashboard's browser test (playwright drives it; no
# browser download of its own). A machine that cannot install it runs the
# suite without that test, which then says why it skipped.
set -uo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "chromium missing and no root: the browser test will skip" >&2; exit 0; }
  SUDO="sudo"
fi
echo "installing Debian package: chromium (for the dashboard's browser test)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core \
  || echo "could not install chromium: the browser test will skip" >&2
exit 0
