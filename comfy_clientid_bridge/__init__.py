"""comfy_clientid_bridge: re-queued ComfyUI prompts reach the browser tab that started them."""

__version__ = "0.1.0"
