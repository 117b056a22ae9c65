"""ComfyUI entry point; kept tiny so that tools can import the repository without ComfyUI."""

try:
    import server  # noqa: F401 - only ComfyUI has it; torch and the nodes come with it
except ImportError:  # imported by a tool outside ComfyUI (pytest collection): nothing to do
    NODE_CLASS_MAPPINGS: dict[str, type] = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
else:
    from .comfy_clientid_bridge.batch.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .comfy_clientid_bridge.register import register

    register()

# The browser extension: live batch badge, Stop button, outputs kept on their workflow.
WEB_DIRECTORY = "./web/js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
