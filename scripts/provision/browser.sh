#!/usr/bin/env bash
# A real browser for the UI tests: Debian's chromium + chromium-driver, and NSS's certutil (libnss3-tools),
# which makes the throw-away certificate database that lets the HTTPS test trust a site CA. Skips when installed.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

if [ -x /usr/bin/chromium ] && command -v chromedriver >/dev/null 2>&1 && command -v certutil >/dev/null 2>&1; then
    log "chromium already installed ($(/usr/bin/chromium --version 2>/dev/null | head -n1))"
    exit 0
fi
apt_install chromium chromium-driver libnss3-tools
[ -x /usr/bin/chromium ] || die "chromium was installed but /usr/bin/chromium is missing."
command -v certutil >/dev/null 2>&1 || die "libnss3-tools was installed but certutil is missing."
log "chromium installed: $(/usr/bin/chromium --version 2>/dev/null | head -n1), $(chromedriver --version 2>/dev/null | head -n1) ($(took))"
