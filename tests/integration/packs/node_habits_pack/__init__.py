"""A test pack with the field's habits that the /prompt bridge cannot see.

- The broadcast "fix": node code sends `executed` for its nodes with sid=None.
- The `impact-add-queue` convention: node code asks every tab to queue the next run.
- Re-queues straight onto the queue: `prompt_queue.put` with a fresh extra_data (no client).
"""

import uuid

import server


def _running_item():
    return next(iter(server.PromptServer.instance.prompt_queue.currently_running.values()))


class CIBHabitsBroadcast:
    """Broadcasts `executed` for three nodes, as a loader, saver and progress node of a
    pack with the broadcast "fix" each would; optionally fires `impact-add-queue`."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "marker": ("STRING", {"default": "m"}),
                "index": ("INT", {"default": 0, "min": 0, "max": 10000}),
                "add_queue": ("BOOLEAN", {"default": False}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ()
    FUNCTION = "broadcast"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def broadcast(self, images, marker, index, add_queue, unique_id):
        instance = server.PromptServer.instance
        for node in ("91", "92", unique_id):
            output = {"text": [f"{marker}:{index}"]}
            instance.send_sync("executed", {"node": node, "output": output}, sid=None)
        if add_queue:
            instance.send_sync("impact-add-queue", {"marker": marker})
        return {}


class CIBHabitsPutNext:
    """Puts the next iteration straight on the queue, with a fresh extra_data that carries
    the workflow and no client_id, as a real iterator pack does."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "index": ("INT", {"default": 0, "min": 0, "max": 10000}),
                "total": ("INT", {"default": 3, "min": 1, "max": 10000}),
                "color_node": ("STRING", {"default": "1"}),
            },
            "hidden": {
                "prompt": "PROMPT",
                "unique_id": "UNIQUE_ID",
                "extra_pnginfo": "EXTRA_PNGINFO",
            },
        }

    RETURN_TYPES = ()
    FUNCTION = "put_next"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def put_next(self, images, index, total, color_node, prompt, unique_id, extra_pnginfo=None):
        if index + 1 >= total:
            return {}
        graph = {
            node_id: {"class_type": node["class_type"], "inputs": dict(node["inputs"])}
            for node_id, node in prompt.items()
        }
        graph[unique_id]["inputs"]["index"] = index + 1
        graph[color_node]["inputs"]["color"] = index + 1
        for node in graph.values():
            if "index" in node["inputs"] and node["class_type"] == "CIBHabitsBroadcast":
                node["inputs"]["index"] = index + 1
        instance = server.PromptServer.instance
        number = instance.number
        instance.number += 1
        running = _running_item()
        extra_data = {"extra_pnginfo": extra_pnginfo} if extra_pnginfo else {}
        item = (number, str(uuid.uuid4()), graph, extra_data, list(running[4]))
        item += tuple({} for _ in running[5:])  # 0.8.0's sixth field: sensitive data
        instance.prompt_queue.put(item)
        return {}


NODE_CLASS_MAPPINGS = {
    "CIBHabitsBroadcast": CIBHabitsBroadcast,
    "CIBHabitsPutNext": CIBHabitsPutNext,
}
