#!/usr/bin/env bash
# deploykit-local/open-webui:<older version>: the older Open WebUI release that the cross-version upgrade
# test (tests/e2e/test_upgrade_versions.py) starts a stack on before `deploykit upgrade` moves it to the
# pinned one. Built exactly as the pinned image is (image-openwebui.sh: a bookworm tree, a venv with the
# same CPU-only torch, open-webui from PyPI), only the version differs: open_webui.upgrade_from in
# deploykit/catalog/versions.toml. Recorded as OPENWEBUI_OLD_IMAGE in build/images.env.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEPLOYKIT_OPENWEBUI_VERSION="$(pinned open_webui.upgrade_from)" \
DEPLOYKIT_OPENWEBUI_IMAGE_KEY=OPENWEBUI_OLD_IMAGE \
    exec bash "$PROVISION_DIR/image-openwebui.sh" "$@"
