"""Example of what other packs do: re-queue the next iteration by POSTing /prompt from node code.

Used by the demo and the integration tier, with and without the bridge installed.
"""

import json
import threading
import urllib.request
import uuid

import server


def _post(graph, mode):
    body = {"prompt": graph}
    if mode == "uuid4":
        body["client_id"] = uuid.uuid4().hex
    address = f"http://127.0.0.1:{server.PromptServer.instance.port}/prompt"
    request = urllib.request.Request(
        address, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=30).read()


class NaiveRequeue:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "index": ("INT", {"default": 0, "min": 0, "max": 10000}),
                "total": ("INT", {"default": 4, "min": 1, "max": 10000}),
                "mode": (["uuid4", "none", "timer"],),
                "color_node": ("STRING", {"default": "1"}),
            },
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ()
    FUNCTION = "requeue"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def requeue(self, images, index, total, mode, color_node, prompt, unique_id):
        if index + 1 >= total:
            return {}
        graph = json.loads(json.dumps(prompt))
        graph[unique_id]["inputs"]["index"] = index + 1
        graph[color_node]["inputs"]["color"] = index + 1
        if mode == "timer":
            threading.Timer(0.2, _post, args=(graph, "none")).start()
        else:
            _post(graph, mode)
        return {}


NODE_CLASS_MAPPINGS = {"ClientIdBridgeExampleNaiveRequeue": NaiveRequeue}
