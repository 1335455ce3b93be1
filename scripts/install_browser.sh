#!/usr/bin/env bash
# Install headless Chromium, a CJK font and an emoji font for the browser tests (Debian/Ubuntu; root or sudo).
# Idempotent and quiet: does nothing when chromium and the fonts are already there.
# Never runs `playwright install`: the tests drive the distribution's chromium through Playwright.
set -euo pipefail

have_fonts() {  # (fc-list into a variable: `fc-list | grep -q` fails under pipefail when grep stops early)
    local fonts
    fonts="$(fc-list 2>/dev/null || true)"
    grep -qi "Noto Sans CJK\|Noto Serif CJK\|WenQuanYi" <<<"$fonts" && grep -qi "emoji" <<<"$fonts"
}
if command -v chromium >/dev/null 2>&1 && have_fonts; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: no apt-get here; install chromium and a CJK font yourself (browser tests will be skipped)" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
        echo "install_browser.sh: not root and no sudo; browser tests will be skipped" >&2
        exit 0
    fi
fi
echo "Installing chromium and fonts for the browser tests ..."
$sudo apt-get update -qq >/dev/null 2>&1 || true
if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        chromium fonts-noto-cjk fonts-noto-color-emoji >/dev/null 2>&1; then
    echo "install_browser.sh: apt-get install chromium fonts-noto-cjk fonts-noto-color-emoji failed;" \
         "browser tests will be skipped" >&2
fi
exit 0
