"""The names the terminal runner and this package's routes for it share, apart from the
handlers: the runner imports these without aiohttp.web (its start counts in a short run)."""

from __future__ import annotations

# Inside ComfyUI's input folder; the runner uploads into UPLOAD_ROOT/<batch key>/.
UPLOAD_ROOT = "clientid_bridge_uploads"
UPLOADS_PATH = "/clientid_bridge/uploads/{key}"
FOLDER_PATH = "/clientid_bridge/folder"
