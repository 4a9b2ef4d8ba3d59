#!/usr/bin/env bash
# Install Debian/Ubuntu packages that are missing. Root (or passwordless sudo) installs them;
# otherwise print exactly what to run. Never fails the build for an optional package.
set -u
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "echoforge: please install these system packages with your package manager: ${missing[*]}" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "echoforge: missing system packages: ${missing[*]}" >&2
  echo "echoforge: run: sudo apt-get install -y ${missing[*]}" >&2
  exit 0
fi
echo "echoforge: installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
  $SUDO apt-get update -qq >/dev/null 2>&1
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null || echo "echoforge: could not install ${missing[*]}" >&2
}
exit 0
