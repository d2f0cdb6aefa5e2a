#!/usr/bin/env bash
# The project's test command (README.md; .ci/run calls exactly this).
#
# 1. Installs the S3-compatible test server (moto, from PyPI) into .venv-s3 if it is missing;
#    the S3 tests start it on 127.0.0.1 themselves, so no network is used at test time.
# 2. Says whether the report's headless-Chromium check (scripts/check-report.sh) will run: the
#    report tests run it when Chromium is installed (Debian: apt-get install chromium).
# 3. Runs every test in release mode (a debug build of candle/DataFusion is too slow to test).
#
# Time on the 2-core CI machine: the tests themselves take about 3-8 minutes (150 unit tests in
# ~3 s; 87 s of 84 CLI tests here on 2026-12-07; the full three-seed quickstart pipeline in
# tests/cli/pipeline.rs is most of it); a clean release build of DataFusion + candle takes
# about 24-38 minutes before that (24 min here on 2026-12-07).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv-s3/bin/moto_server ]; then
    echo "installing moto (S3 test server) into .venv-s3 ..."
    python3 -m venv .venv-s3
    .venv-s3/bin/pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi
export W2S_MOTO_SERVER="$PWD/.venv-s3/bin/moto_server"

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "chromium found: the report tests open their pages in headless Chromium"
else
    echo "no chromium: the report tests skip the browser check (apt-get install chromium to run it)"
fi

cargo test --release --locked "$@"
