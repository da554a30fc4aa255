#!/bin/sh
# scripts/apt-tool.sh COMMAND PACKAGE WHAT — make sure COMMAND is on this machine for the tests named
# WHAT: install Debian's PACKAGE with apt-get when COMMAND is missing and we may (root, or sudo without
# a password). Never fails: without the tool those tests are skipped, and pytest prints why.
command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
if [ "$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then
  echo "make test: installing $2 with apt-get for the $3"
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; } >/dev/null 2>&1 \
    || echo "make test: apt-get could not install $2; the $3 will be skipped"
else
  echo "make test: $1 is missing and apt-get is not available to this user; the $3 will be skipped"
fi
exit 0
