#!/usr/bin/env bash
# Chromium for the website tests: Debian's package (Playwright's own browser download is not used).
# Idempotent: does nothing when a Chromium is already on PATH or LLAMALAB_CHROMIUM points at one.
set -euo pipefail

if [ -n "${LLAMALAB_CHROMIUM:-}" ] && [ -x "$LLAMALAB_CHROMIUM" ]; then exit 0; fi
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "Chromium is missing and this user cannot install packages: install Debian's 'chromium' package," >&2
  echo "or set LLAMALAB_CHROMIUM to a Chromium binary, then run the tests again." >&2
  exit 1
fi
echo "Installing Debian's chromium package for the website tests..."
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium
