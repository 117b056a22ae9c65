// comfy_clientid_bridge: live batch state on the nodes, a Stop button, and outputs that stay
// on their workflow. Only this tab's events reach it (core routes them by client_id).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PREFIX = "ClientIdBridge_";
const LOADER = PREFIX + "BatchImageLoader";
const NEXT = PREFIX + "BatchNext";

// The frontend keeps a prompt's outputs on its workflow only for prompts this tab queued
// (execution store, `queuedPrompts[id].workflow`, frontend 1.27). A re-queued iteration
// reaches this tab through the bridge without one: give it the workflow of the prompt that
// ran before it here, its parent in the loop.
// Checked in the shipped bundles (2026-11-28): 1.27.10 and 1.35.9 have the pinia store
// "execution" with `queuedPrompts` and the action `storePrompt({id, nodes, workflow})`, as
// used here. 1.58.1 renamed them `queuedJobs` and `storeJob({id, nodes, workflow, ...})`:
// there this code finds neither and steps aside (it threw a TypeError into the console on each
// execution_start before it checked), and the browser test's workflow-tab switch still passes
// on 1.58.1: that frontend keeps these outputs on their workflow without this code.
function executionStore() {
  const vueApp = document.querySelector("#vue-app")?.__vue_app__;
  return vueApp?.config.globalProperties.$pinia?._s.get("execution") ?? null;
}

let lastWorkflow = null;
const started = new Set();

function adoptWorkflow(promptId) {
  const store = executionStore();
  if (!store?.queuedPrompts || !promptId) return; // 1.58 has queuedJobs and needs no help
  started.add(promptId);
  if (started.size > 1000) started.delete(started.values().next().value);
  const queued = (store.queuedPrompts[promptId] ??= { nodes: {} });
  if (!queued.workflow && lastWorkflow) queued.workflow = lastWorkflow;
  lastWorkflow = queued.workflow ?? lastWorkflow;
}

// The frontend records a prompt it queued only once the POST answers, which can be after the
// prompt already started (a fast first image): take its workflow then, for its children.
function followQueuedPrompts() {
  const store = executionStore();
  store?.$onAction(({ name, args, after }) => {
    if (name !== "storePrompt") return;
    after(() => {
      if (!started.has(args[0]?.id) || !args[0].workflow) return;
      lastWorkflow = args[0].workflow;
      // Its re-queues may have started before this answer too: they are this tab's (their
      // events came here) and had no workflow to take yet.
      for (const id of started) {
        const queued = store.queuedPrompts?.[id];
        if (queued && !queued.workflow) queued.workflow = lastWorkflow;
      }
    });
  });
}

function loadersOf(batchId) {
  const nodes = app.graph?._nodes ?? [];
  const loaders = nodes.filter((node) => node.type === LOADER);
  const same = loaders.filter((node) => node.cibBatch === batchId);
  return same.length ? same : loaders;
}

function toast(severity, summary, detail) {
  app.extensionManager?.toast?.add({ severity, summary, detail, life: 6000 });
}

async function stopBatch(node) {
  if (!node.cibBatch) {
    toast("warn", "No batch running", "Run the workflow first.");
    return;
  }
  const response = await api.fetchApi(`/clientid_bridge/batch/${node.cibBatch}/stop`, {
    method: "POST",
  });
  const body = await response.json();
  if (!response.ok) {
    toast("warn", "Batch not running", body.error ?? response.statusText);
    return;
  }
  setBadge(node, `stopped: ${body.done}/${body.total}`);
  toast("info", "Batch stopped", body.progress);
}

// The loader's state as one of its node badges (LGraphNode.badges, frontend 1.27.10 to
// 1.58.1): the canvas draws badges above the title bar, right-aligned, and Nodes 2.0 (the
// setting Comfy.VueNodes.Enabled) shows them in the node's badge row (1.58.1: under its
// widgets; 1.35.9: in its header), so the badge covers neither the title nor a slot in
// either mode. An empty text is no badge. The progress and next nodes' text is not drawn
// here: the server sends it as core's progress_text, which the frontend shows on the node.
// Nodes 2.0 reads a node's badges in a Vue computed (1.58.1 usePartitionedBadges) that
// tracks reactive state only, and node.badges is not: the function reads a counter kept in
// pinia's reactive state, and a new badge text bumps it, so the row is drawn again. Without
// pinia (not seen in 1.27.10 to 1.58.1) the canvas badge still works.
const BADGE_TICK = "clientid_bridge_badges";

function reactiveState() {
  const vueApp = document.querySelector("#vue-app")?.__vue_app__;
  return vueApp?.config.globalProperties.$pinia?.state.value ?? null;
}

function stateBadge(node) {
  void reactiveState()?.[BADGE_TICK]; // read, so that a change draws the badge row again
  const text = node.cibBadge ?? "";
  const done = text.startsWith("done");
  return new LGraphBadge({ text, fgColor: "#fff", bgColor: done ? "#2e7d32" : "#1565c0" });
}

function setBadge(node, text) {
  node.cibBadge = text;
  const state = reactiveState();
  if (state) state[BADGE_TICK] = (state[BADGE_TICK] ?? 0) + 1;
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "comfy_clientid_bridge.batch",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith(PREFIX)) return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      if (output?.batch_id) this.cibBatch = output.batch_id[0];
      if (nodeData.name === LOADER && output?.badge) setBadge(this, output.badge[0]);
      if (nodeData.name === NEXT && output?.badge) {
        for (const loader of loadersOf(output.batch_id?.[0])) setBadge(loader, output.badge[0]);
        if (output.state?.[0] === "done") toast("success", "Batch done", output.badge[0]);
      }
      this.setDirtyCanvas(true, true);
    };

    if (nodeData.name === LOADER) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        onNodeCreated?.apply(this, arguments);
        if (window.LGraphBadge && Array.isArray(this.badges)) {
          this.badges.push(() => stateBadge(this));
        }
        const button = this.addWidget("button", "Stop batch", null, () => stopBatch(this));
        button.serialize = false; // not a setting: keep saved workflows' widget values as they are
      };
    }
  },

  setup() {
    followQueuedPrompts();
    api.addEventListener("execution_start", ({ detail }) => adoptWorkflow(detail?.prompt_id));
  },
});
