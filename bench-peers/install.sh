#!/usr/bin/env bash
# Installs the peer servers used by `cargo bench --bench relay` into
# bench-peers/node_modules (ignored by git): the `ws` package for the Node peer and
# the `bun` package, whose platform binary arrives via an optional dependency
# (@oven/bun-linux-x64 and friends). Only the npm registry is used.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v npm >/dev/null; then
  echo "install.sh: npm not found; install Node.js (e.g. apt-get install nodejs npm)" >&2
  exit 1
fi
# --no-save keeps package.json as committed; --no-package-lock writes no lock file.
npm install --no-save --no-package-lock --no-audit --no-fund
echo "node: $(node --version)"
echo "ws:   $(node -p 'require("ws/package.json").version')"
if ./node_modules/.bin/bun --version >/dev/null 2>&1; then
  echo "bun:  $(./node_modules/.bin/bun --version)"
else
  echo "install.sh: bun did not install a working binary (optional platform package missing?)" >&2
  exit 1
fi
