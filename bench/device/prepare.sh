#!/usr/bin/env bash
# Run HERE (not on the device) before the device commands: copies the golden data into the ignored
# folder .golden/ of the checkout, which the device commands carry (the ../shared beside a
# checkout does not travel). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
src=${APD_EXT_GOLDEN:-../shared/golden}
[[ -d "$src" ]] || { echo "error: golden data not found at $src (set APD_EXT_GOLDEN)"; exit 1; }
rm -rf .golden && cp -r "$src" .golden
git check-ignore -q .golden || { echo "error: .golden/ is not ignored by git"; exit 1; }
echo "copied $src -> .golden ($(du -sh .golden | cut -f1)); carry it: carry=[\".golden\"]"
