"""ComfyUI entry point; kept tiny so that tools can import the repository without ComfyUI."""

from .comfy_clientid_bridge.comfy_server import register

register()

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
