"""A test pack whose node hands its broadcast to a thread pool, as packs do with slow I/O.

One pool thread for the whole process: the second tab's task runs on the thread the first
tab's task ran on. Each task sends `cib-pool-event` with no sid after a pause, carrying its
marker and the pool thread's ident.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import server

POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cib-pool")


def _announce(marker, pause):
    time.sleep(pause)
    data = {"marker": marker, "thread": threading.get_ident()}
    server.PromptServer.instance.send_sync("cib-pool-event", data)


class CIBPoolBroadcast:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "marker": ("STRING", {"default": "m"}),
                "pause": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0}),
            }
        }

    RETURN_TYPES = ()
    FUNCTION = "announce"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def announce(self, images, marker, pause):
        POOL.submit(_announce, marker, pause)
        return {}


NODE_CLASS_MAPPINGS = {"CIBPoolBroadcast": CIBPoolBroadcast}
